"""Turn what a user typed (`demo`, a saved name, a file or MovieLens folder) into a `Dataset`."""

from __future__ import annotations

from pathlib import Path

from recsys_core.errors import DataError


def resolve_dataset(spec: str, workspace, items: str | None = None):
    """`demo`, a saved dataset name, or a file/folder path."""
    from recsys_core.data import load_dataset
    from recsys_core.data.demo import DEMO_NAME, load_demo

    if spec in {"demo", DEMO_NAME}:
        return load_demo()
    if workspace is not None and spec in {r.name for r in workspace.list_datasets()}:
        return workspace.load_dataset(spec)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"no saved dataset or file named {spec!r}",
                        hint="pass 'demo', a name from the workspace, or a path to an interactions file")
    name = None
    if path.is_dir():
        name = path.resolve().name  # "ml-100k", not "u" after u.data
        path, items = _movielens_folder(path, items)
    ds, _ = load_dataset(str(path), items=items, name=name)
    return ds


def _movielens_folder(folder: Path, items: str | None) -> tuple[Path, str | None]:
    """A MovieLens folder: ratings.dat (or its 100k-line prefix) / u.data, with movies.dat / u.item."""
    for ratings, meta in (("ratings.dat", "movies.dat"), ("u.data", "u.item"),
                          ("ratings_first100000.dat", "movies.dat")):
        if (folder / ratings).is_file():
            meta_path = folder / meta
            return folder / ratings, items or (str(meta_path) if meta_path.is_file() else None)
    raise DataError("folder has no ratings.dat or u.data", file=str(folder),
                    hint="pass the interactions file itself")
