"""The engine's layout: folders follow the pipeline, imports point down it, and callers ask models and LLM
backends through their faces, never probe them.

The layer order is written once, in the README ("Layers:" line), and read from there.
"""

from __future__ import annotations

import ast
import builtins
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "recsys_core"
BASE = "base"
# Entry points of child processes open what they are handed by path: above the layer they live in.
ENTRY_POINTS = {"training/worker.py": {"workspace"}}
# Faces: a root class and the folder of its implementations (every class derived from it or named like it,
# `...Backend`). Code outside the files that implement a face asks the face, never its members or types; the
# models' folder as a whole holds family internals (the shared loop, losses, sequence data).
FACES = {"Recommender": "models", "Backend": "blurbs"}
WHOLE_FOLDER = {"models"}
# Measures one family's training step itself (the step is the thing benchmarked), so it reads its internals.
INTERNALS_BENCHMARKS = {"bench/seq_tune.py"}


@cache
def layers() -> list[set[str]]:
    """The README's layer order, bottom to top: `Layers: base (errors, ...) < data < ... < cli`."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip().startswith("Layers:"))
    order = re.sub(r"\([^)]*\)", "", line.split(":", 1)[1]).strip(" `")
    return [{part.strip() for part in layer.split(",")} for layer in order.split("<")]


@cache
def base_modules() -> set[str]:
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.strip().startswith("Layers:"))
    return {m.strip() for m in re.search(r"base \(([^)]*)\)", line).group(1).split(",")}


def _rank(part: str) -> int:
    return next(i for i, layer in enumerate(layers()) if part in layer)


def _part(path: Path) -> str:
    rel = path.relative_to(ENGINE)
    if len(rel.parts) == 1:
        return "cli" if rel.stem in ("cli", "__main__") else ("init" if rel.stem == "__init__" else BASE)
    return rel.parts[0]


def _imported_names(node: ast.AST) -> list[str]:
    """Dotted names an import statement brings in: `from recsys_core import models` counts as recsys_core.models."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [f"{node.module}.{a.name}" for a in node.names] if node.module == "recsys_core" else [node.module or ""]
    return []


def _engine_imports(path: Path) -> set[str]:
    """Parts of the engine a module imports at run time (TYPE_CHECKING-only imports excluded)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        for name in _imported_names(node):
            parts = name.split(".")
            if parts[0] == "recsys_core" and len(parts) > 1:
                found.add(parts[1] if parts[1] not in base_modules() else BASE)
    return found


def test_the_readme_layers_name_every_part_of_the_engine_once() -> None:
    named = [part for layer in layers() for part in layer]
    assert len(named) == len(set(named))
    folders = {p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders | {BASE, "cli"} == set(named)
    top = {p.stem for p in ENGINE.glob("*.py")} - {"__init__", "__main__", "cli"}
    assert top == base_modules()


def test_the_engine_top_level_holds_at_most_eight_modules() -> None:
    modules = sorted(p.name for p in ENGINE.glob("*.py"))
    assert len(modules) <= 8, modules


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in ENGINE.rglob("*.py"):
        part = _part(path)
        if part in ("cli", "init"):
            continue
        extra = ENTRY_POINTS.get(path.relative_to(ENGINE).as_posix(), set())
        wrong += [f"{path.relative_to(ROOT)} imports {other}" for other in _engine_imports(path) - extra
                  if other != part and _rank(other) >= _rank(part)]
    assert wrong == []


def test_the_import_check_sees_every_import_form(tmp_path: Path) -> None:
    probe = ENGINE / "data" / "_layout_probe.py"
    probe.write_text("from recsys_core import models\nimport recsys_core.blurbs.writer\nfrom recsys_core.errors import X\n")
    try:
        assert _engine_imports(probe) == {"models", "blurbs", BASE}
    finally:
        probe.unlink()


def test_the_engine_never_imports_streamlit() -> None:
    assert [p for p in ENGINE.rglob("*.py") if re.search(r"^\s*(import|from) streamlit", p.read_text(), re.MULTILINE)] == []


# ---- faces ---------------------------------------------------------------------------------------


def _classes(folder: str) -> dict[str, ast.ClassDef]:
    out = {}
    for path in (ENGINE / folder).glob("*.py"):
        out.update({n.name: n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)})
    return out


def _face_classes(folder: str, root: str) -> dict[str, ast.ClassDef]:
    """The face class `root` of a folder and every class of the folder derived from it or named like it."""
    classes = _classes(folder)
    found = {name for name in classes if name.endswith(root)}
    while True:
        more = {name for name, c in classes.items() if name not in found
                and any(ast.unparse(b).split(".")[-1] in found for b in c.bases)}
        if not more:
            return {name: classes[name] for name in found}
        found |= more


def _face_files() -> set[Path]:
    """Files that implement a face: the models' folder, and each file defining a backend class."""
    files = set()
    for root, folder in FACES.items():
        names = set(_face_classes(folder, root))
        for path in (ENGINE / folder).glob("*.py"):
            defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
            if folder in WHOLE_FOLDER or defined & names:
                files.add(path)
    return files


def _members(node: ast.ClassDef) -> set[str]:
    """Methods, class attributes and `self.x = ...` attributes of a class."""
    names = {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    names |= {t.id for n in node.body if isinstance(n, ast.Assign | ast.AnnAssign)
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    names |= {t.attr for n in ast.walk(node) if isinstance(n, ast.Assign | ast.AnnAssign)
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
              if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    return names


@cache
def face_rules() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(every member name of a face's classes, the family internals: trailing-underscore fitted attributes and
    private members that the face class itself does not define, the face classes' names)."""
    members, internal, names = set(), set(), set()
    for root, folder in FACES.items():
        classes = _face_classes(folder, root)
        face = _members(classes[root]) if root in classes else set()
        for name, node in classes.items():
            own = _members(node)
            members |= own
            internal |= {m for m in own - face if not m.startswith("__") and (m.endswith("_") or m.startswith("_"))}
            names.add(name)
    return frozenset(members), frozenset(internal), frozenset(names)


def probes(source: str) -> list[tuple[int, str]]:
    """Where code asks an object what it is instead of asking its face: `hasattr`/`getattr` of a face member
    by name (any receiver), `isinstance` against a face class, a family name compared, a family internal read."""
    members, internal, classes = face_rules()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
            what, arg = node.func.id, node.args[1]
            if what in ("hasattr", "getattr") and isinstance(arg, ast.Constant) and arg.value in members:
                found.append((node.lineno, f"{what}(..., {arg.value!r})"))
            types = arg.elts if isinstance(arg, ast.Tuple) else [arg]
            # asking whether something is a model at all (`Recommender`) is the face; a family or backend class is not
            if what == "isinstance" and any(ast.unparse(t).split(".")[-1] in classes - set(FACES)
                                            for t in types):
                found.append((node.lineno, f"isinstance(..., {ast.unparse(arg)})"))
        elif isinstance(node, ast.Compare) and _names_a_family(node):
            found.append((node.lineno, "a family name compared"))
        elif isinstance(node, ast.Attribute) and node.attr in internal and ast.unparse(node.value) != "self":
            found.append((node.lineno, f".{node.attr}"))
    return found


def _names_a_family(node: ast.Compare) -> bool:
    """`x.family == "sasrec"`, `run.model in ("ease", ...)`: a model's or a run's family against written names."""
    sides = [node.left, *node.comparators]
    named = [s for s in sides if isinstance(s, ast.Attribute) and s.attr in ("family", "model")]
    literal = [s for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)
               or isinstance(s, ast.Tuple | ast.List | ast.Set) and all(isinstance(e, ast.Constant) for e in s.elts)]
    return bool(named and literal)


def _callers() -> list[Path]:
    inside = _face_files()
    engine = [p for p in ENGINE.rglob("*.py") if p not in inside]
    bench = [p for p in (ROOT / "bench").glob("*.py") if p.relative_to(ROOT).as_posix() not in INTERNALS_BENCHMARKS]
    return [*engine, *(ROOT / "views").rglob("*.py"), *bench, ROOT / "app.py"]


def test_no_caller_outside_the_faces_probes_a_model_or_an_llm_backend() -> None:
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in _callers() for line, what in probes(p.read_text())]
    assert found == []


def test_the_probe_check_catches_each_kind_of_probe() -> None:
    caught = [
        "getattr(backend, 'supports_guide', False)", "hasattr(anything, 'training_history')",
        "isinstance(b, llm.TransformersBackend)", "isinstance(m, (TextTower, int))", "r.model.family == 'sasrec'",
        "run.model in ('ease', 'itemknn')",
        "x = tower.item_vectors_", "model._output_positions(3)",
    ]
    for code in caught:
        assert probes(code), code
    fine = ["getattr(torch, cfg.dtype)", "isinstance(x, int)", "model.capabilities.text", "model.n_items_",
            "backend.supports_guide", "r.model != first.family",
            "isinstance(x, Recommender)", "self._run()"]
    assert [code for code in fine if probes(code)] == []


# ---- declared, read, and in the family ----------------------------------------------------------

# Exceptions that never reach a user: they stop work that a cancel button ended, and are caught by its caller.
CONTROL_FLOW = {"ProjectionCancelled"}
# Methods a library calls on our subclasses (urllib's redirect handler).
HOOKS = {"redirect_request"}
MAX_MODULE_LINES = 600


def _parsed(paths) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for p in paths}


def _engine_and_clients() -> list[Path]:
    return [*ENGINE.rglob("*.py"), *(ROOT / "views").rglob("*.py"), ROOT / "app.py"]


def test_every_capability_flag_is_read_outside_the_models() -> None:
    base = next(n for n in ast.walk(ast.parse((ENGINE / "models" / "base.py").read_text()))
                if isinstance(n, ast.ClassDef) and n.name == "Capabilities")
    flags = {n.target.id for n in base.body if isinstance(n, ast.AnnAssign)}
    read = {n.attr for tree in _parsed(p for p in _engine_and_clients() if "models" not in p.parts).values()
            for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert flags and sorted(flags - read) == []


def test_capabilities_are_asked_of_a_configuration_not_a_family_default() -> None:
    calls = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, tree in _parsed(_engine_and_clients()).items()
             if "models" not in p.parts for n in ast.walk(tree) if isinstance(n, ast.Call)
             and ast.unparse(n.func).split(".")[-1] == "capabilities_of" and len(n.args) + len(n.keywords) < 2]
    assert calls == []


def test_every_engine_exception_belongs_to_the_error_family() -> None:
    classes = {n.name: n for tree in _parsed(ENGINE.rglob("*.py")).values() for n in ast.walk(tree)
               if isinstance(n, ast.ClassDef)}

    def family(name: str, seen: frozenset = frozenset()) -> bool | None:
        if name == "RecsysError":
            return True
        node = classes.get(name)
        if node is None or name in seen:
            return None  # not ours
        bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
        return any(family(b, seen | {name}) for b in bases)

    builtin = {n for n in dir(builtins) if n.endswith("Error")}
    outside = [name for name, node in classes.items() if name not in CONTROL_FLOW and not family(name)
               and any(ast.unparse(b).split(".")[-1] in builtin | {"Exception"} for b in node.bases)]
    assert outside == []


def test_setting_errors_name_the_setting_not_a_column() -> None:
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, tree in _parsed((ENGINE / "models").rglob("*.py")).items()
           for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "ConfigError"
           and any(k.arg == "column" for k in n.keywords)]
    assert bad == []


def test_process_liveness_is_asked_of_psutil_not_proc_or_signals() -> None:
    """`/proc` parsed by hand is Linux-only and misreads zombies; `os.kill(pid, 0)` says -1 is alive."""
    by_hand = re.compile(r"[\"']/proc/|os\.kill\([^,]+,\s*0\)")
    assert [p.relative_to(ROOT).as_posix() for p in ENGINE.rglob("*.py") if by_hand.search(p.read_text())] == []


def test_engine_modules_stay_small_enough_to_hold_one_concern() -> None:
    big = {p.relative_to(ROOT).as_posix(): n for p in ENGINE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}


def _references(trees) -> set[str]:
    names = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                names.add(n.id)
            elif isinstance(n, ast.Attribute):
                names.add(n.attr)
            elif isinstance(n, ast.alias):
                names.add(n.name.split(".")[-1])
    return names


def test_no_dead_functions_in_the_engine_or_the_pages() -> None:
    """Every top-level function and class, and every method, is used by some code or test."""
    trees = _parsed([*_engine_and_clients(), *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").glob("*.py")])
    used = _references(trees.values())
    dead = []
    for path in _engine_and_clients():
        for node in trees[path].body:
            members = node.body if isinstance(node, ast.ClassDef) else []
            for d in [node, *members]:
                registered = any(ast.unparse(x) == "atexit.register" for x in getattr(d, "decorator_list", []))
                if isinstance(d, ast.FunctionDef | ast.ClassDef) and not d.name.startswith("__") \
                        and not registered and d.name not in used | HOOKS:
                    dead.append(f"{path.relative_to(ROOT)}:{d.lineno} {d.name}")
    assert dead == []
