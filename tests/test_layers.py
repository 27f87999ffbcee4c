"""The map of the house (CONTRIBUTING.md) holds: no forbidden import between layers, no import
circle, every module in a layer (booktools.import_map parses the sources, nothing is imported)."""

from __future__ import annotations

from booktools import import_map


def test_every_module_is_in_a_layer_and_the_rule_is_kept():
    graph = import_map.imports()
    assert "oralx_lib.models.backbones" in graph and "booktools.bookbuild" in graph
    for module in graph:
        assert import_map.layer_of(module) in import_map.ALLOWED
    assert import_map.forbidden(graph) == []


def test_no_import_circles():
    assert import_map.circles(import_map.imports()) == []


def test_the_checks_catch_what_they_should():
    # a model reading the data package, the library reading the book and the site tooling
    graph = {
        "oralx_lib.models.x": {"oralx_lib.data.dataset"},
        "oralx_lib.engine.train": {"oralx_lib.book.figures", "oralx_lib.models.x"},
        "oralx_lib.evaluation": {"booktools.bookbuild"},
        "oralx_lib.book.figures": set(),
        "oralx_lib.data.dataset": set(),
        "booktools.bookbuild": {"oralx_lib.models.x"},
    }
    assert import_map.forbidden(graph) == [
        "oralx_lib.engine.train imports oralx_lib.book.figures (engine -> book is not allowed)",
        "oralx_lib.evaluation imports booktools.bookbuild (evaluation -> booktools is not allowed)",
        "oralx_lib.models.x imports oralx_lib.data.dataset (models -> data is not allowed)",
    ]
    # the two circles the restructuring removed, as they were
    old = {
        "oralx_lib.engine.train": {"oralx_lib.engine.distributed", "oralx_lib.engine.inference"},
        "oralx_lib.engine.distributed": {"oralx_lib.engine.train"},
        "oralx_lib.engine.inference": {"oralx_lib.engine.distributed"},
        "oralx_lib.models.factory": {"oralx_lib.models.moqam"},
        "oralx_lib.models.moqam": {"oralx_lib.models.factory"},
    }
    assert import_map.circles(old) == [
        ["oralx_lib.engine.distributed", "oralx_lib.engine.inference", "oralx_lib.engine.train"],
        ["oralx_lib.models.factory", "oralx_lib.models.moqam"],
    ]


def test_relative_imports_resolve_to_modules(tmp_path):
    pkg = tmp_path / "oralx_lib"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from .factory import build\n")
    (pkg / "models" / "factory.py").write_text("from ..errors import E\nfrom . import heads\n"
                                               "def f():\n    from .. import errors\n")
    (pkg / "models" / "heads.py").write_text("import oralx_lib.errors\n")
    (tmp_path / "booktools").mkdir()
    graph = import_map.imports(tmp_path)
    assert graph["oralx_lib.models"] == {"oralx_lib.models.factory"}
    assert graph["oralx_lib.models.factory"] == {"oralx_lib.errors", "oralx_lib.models.heads"}
    assert graph["oralx_lib.models.heads"] == {"oralx_lib.errors"}
