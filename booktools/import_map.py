"""The map of the house: which part of the project imports which, drawn from the sources.

``python -m booktools.import_map`` parses every module of ``oralx_lib/`` and ``booktools/``
with :mod:`ast` (no import is executed), groups the modules into layers (:data:`LAYERS`) and
prints a Mermaid diagram of the imports between layers, the one ``CONTRIBUTING.md`` shows.
``--check`` exits with status 1 when an import breaks the rule (:data:`ALLOWED`) or modules
import each other in a circle; ``tests/test_layers.py`` runs the same checks.

Every import counts, the ones inside functions included: a lazy import still ties two parts
together.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("oralx_lib", "booktools")

#: Layer of a module: the first matching prefix wins (most specific first).
LAYERS: tuple[tuple[str, str], ...] = (
    ("oralx_lib.book", "book"),
    ("oralx_lib.data", "data"),
    ("oralx_lib.models", "models"),
    ("oralx_lib.engine", "engine"),
    ("oralx_lib.evaluation", "evaluation"),
    ("oralx_lib.release", "release"),
    ("oralx_lib.cli", "cli"),
    ("oralx_lib.__main__", "cli"),
    ("oralx_lib.errors", "base"),
    ("oralx_lib.profiles", "base"),
    ("oralx_lib.paths", "base"),
    ("oralx_lib.files", "base"),
    ("oralx_lib", "base"),
    ("booktools", "booktools"),
)

#: What each layer may import (besides itself). ``base`` is the classes, errors, profiles,
#: paths and atomic files every part uses; the models know nothing of data files or training;
#: ``release`` (the authors' checkpoints: download, safe loading, conversion) sits on top of
#: the engine; the book uses the library and nothing in the library uses the book; the site
#: tooling uses the library and the library never uses it.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "data": {"base"},
    "models": {"base"},
    "evaluation": {"base"},
    "engine": {"base", "data", "models", "evaluation"},
    "release": {"base", "data", "models", "evaluation", "engine"},
    "cli": {"base", "data", "models", "evaluation", "engine", "release"},
    "book": {"base", "data", "models", "evaluation", "engine", "release"},
    "booktools": {"base", "data", "models", "evaluation", "engine", "release", "cli", "book"},
}

#: Order of the layers in the diagram (bottom-up).
ORDER = ("base", "data", "models", "evaluation", "engine", "release", "cli", "book",
         "booktools")


def layer_of(module: str) -> str:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise ValueError(f"{module}: not in any layer of booktools.import_map.LAYERS")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of :data:`PACKAGES`."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: {project modules it imports}}`` (edges to modules of :data:`PACKAGES` only)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in mods else base)
        edges = set()
        for target in targets:
            # the module itself, or the closest enclosing project module (``import a.b.c``)
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def forbidden(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break :data:`ALLOWED`, as ``"a imports b (layer x -> layer y)"``."""
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = layer_of(src), layer_of(dst)
            if a != b and b not in ALLOWED[a]:
                bad.append(f"{src} imports {dst} ({a} -> {b} is not allowed)")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], int]:
    """``{(layer, imported layer): number of module-to-module imports}``."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for src, targets in graph.items():
        for dst in targets:
            a, b = layer_of(src), layer_of(dst)
            if a != b:
                counts[(a, b)] += 1
    return dict(counts)


def mermaid(graph: dict[str, set[str]]) -> str:
    """A Mermaid flowchart of the imports between layers (arrow: "imports"; label: how many
    module-to-module imports), with each layer's module count."""
    per_layer: dict[str, int] = defaultdict(int)
    for name in graph:
        per_layer[layer_of(name)] += 1
    lines = ["flowchart BT"]
    for layer in ORDER:
        lines.append(f"    {layer}[\"{layer} ({per_layer.get(layer, 0)} modules)\"]")
    for (a, b), n in sorted(layer_edges(graph).items(),
                            key=lambda e: (ORDER.index(e[0][0]), ORDER.index(e[0][1]))):
        lines.append(f"    {a} -->|{n}| {b}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m booktools.import_map", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a forbidden import or an import circle")
    args = parser.parse_args(argv)
    graph = imports()
    print(mermaid(graph))
    if args.check:
        problems = forbidden(graph) + [" <-> ".join(c) for c in circles(graph)]
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
