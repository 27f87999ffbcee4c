"""Notebook housekeeping: ``python -m booktools.notebooks strip book/`` removes outputs and
execution counts (notebooks are committed without outputs; the book build executes them) and
sets the ``python3`` kernel every chapter runs on. ``check`` exits 1 if a notebook has outputs.
``toc`` prints the notebooks that ``_toc.yml`` lists (what ``make test`` executes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def notebooks(paths) -> list[Path]:
    """The ``.ipynb`` files named or inside the folders named (checkpoints skipped)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [q for q in sorted(p.rglob("*.ipynb")) if ".ipynb_checkpoints" not in q.parts]
        elif p.suffix == ".ipynb":
            found.append(p)
    return found


def strip(nb: nbformat.NotebookNode) -> bool:
    """Remove outputs and execution counts in place; return whether anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.get("metadata", {}):
                del cell["metadata"][key]
                changed = True
    if nb.metadata.get("kernelspec") != KERNELSPEC:
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        changed = True
    nb.metadata.setdefault("language_info", {"name": "python"})
    for key in ("widgets", "jupytext"):
        if key in nb.metadata:
            del nb.metadata[key]
            changed = True
    return changed


def toc_notebooks(toc_path: str | Path = "_toc.yml") -> list[Path]:
    """The ``.ipynb`` chapters listed in a Jupyter Book ``_toc.yml``, in reading order."""
    import yaml

    toc_path = Path(toc_path)
    toc = yaml.safe_load(toc_path.read_text())
    entries = [toc["root"]] + [c["file"] for part in toc.get("parts", [])
                               for c in part.get("chapters", [])]
    return [toc_path.parent / f"{e}.ipynb" for e in entries
            if (toc_path.parent / f"{e}.ipynb").is_file()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m booktools.notebooks", description=__doc__)
    parser.add_argument("command", choices=["strip", "check", "toc"])
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "toc":  # the chapters the book build (and `make test`) executes
        print(" ".join(str(p) for p in toc_notebooks(args.paths[0] if args.paths else "_toc.yml")))
        return 0
    dirty = []
    for path in notebooks(args.paths):
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if args.command == "strip":
                nbformat.write(nb, path)
    verb = "stripped" if args.command == "strip" else "has outputs or metadata to strip"
    for path in dirty:
        print(f"{path}: {verb}")
    return 1 if (args.command == "check" and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
