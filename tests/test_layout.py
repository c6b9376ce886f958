"""The engine's layout: folders follow the pipeline, imports point down it, and callers ask models, never probe them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "recsys_core"

# What each part of the engine may import, besides itself: errors, progress, cache and background work
# are below everything; then the pipeline data -> evaluation -> models -> training / workspace ->
# recommend, insight -> blurbs. Evaluation ranks any scorer, so it sits below the models whose training
# loop validates with it. The CLI, at the top, may import anything.
BASE = {"errors", "progress", "cache", "background", "threads"}
ALLOWED = {
    "base": BASE,
    "data": BASE,
    "evaluation": BASE | {"data"},
    "models": BASE | {"data", "evaluation"},
    "training": BASE | {"data", "evaluation", "models"},
    "workspace": BASE | {"data", "models"},
    "recommend": BASE | {"data", "evaluation", "models"},
    "insight": BASE | {"data", "evaluation", "models"},
    "blurbs": BASE | {"data", "evaluation", "models", "recommend", "insight"},
}


# Entry points of child processes open what they are handed by path: above the layer they live in.
ENTRY_POINTS = {"training/worker.py": {"workspace"}}


def _part(path: Path) -> str:
    rel = path.relative_to(ENGINE)
    if len(rel.parts) == 1:
        return "cli" if rel.stem in ("cli", "__main__") else ("init" if rel.stem == "__init__" else "base")
    return rel.parts[0]


def _engine_imports(path: Path) -> set[str]:
    """Parts of the engine a module imports at run time (TYPE_CHECKING-only imports excluded)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "recsys_core" and len(parts) > 1:
                found.add(parts[1] if parts[1] not in BASE else "base")
    return found


def test_the_engine_top_level_holds_at_most_eight_modules() -> None:
    modules = sorted(p.name for p in ENGINE.glob("*.py"))
    assert len(modules) <= 8, modules


def test_imports_point_down_the_pipeline() -> None:
    wrong = []
    for path in ENGINE.rglob("*.py"):
        part = _part(path)
        if part in ("cli", "init"):
            continue
        allowed = {"base"} | ALLOWED[part] | {part} | ENTRY_POINTS.get(path.relative_to(ENGINE).as_posix(), set())
        wrong += [f"{path.relative_to(ROOT)} imports {bad}" for bad in _engine_imports(path) - allowed]
    assert wrong == []


def test_the_engine_never_imports_streamlit() -> None:
    assert [p for p in ENGINE.rglob("*.py") if re.search(r"^\s*(import|from) streamlit", p.read_text(), re.MULTILINE)] == []


PROBES = [
    re.compile(r"\b(hasattr|getattr)\((self\.)?_?(model|tower|other|recommender|m)\b"),  # attribute probing
    re.compile(r"\.family\s*(==|!=|in\b|not in\b)"),  # family-name tests
    re.compile(r"\b(r|run|pick|record)\.model\s*(==|!=)\s*['\"]"),  # ... also on recorded runs
    re.compile(r"\._output_positions\b|\.item_vectors_\b|\.item_texts_\b|\.fit_report_\b|\.history_\b"),
]


def test_no_caller_outside_the_models_probes_a_model() -> None:
    callers = [*ENGINE.rglob("*.py"), *(ROOT / "views").rglob("*.py"), *(ROOT / "bench").glob("*.py"), ROOT / "app.py"]
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in callers if "models" not in p.relative_to(ROOT).parts
             for n, line in enumerate(p.read_text().splitlines(), 1) if any(r.search(line) for r in PROBES)]
    assert found == []
