"""Printed paths say the same on every machine: relative to the checkout, under $ORALX_DATA or
$ORALX_RUNS, or under ~ (never the build machine's absolute folders)."""

from __future__ import annotations

from pathlib import Path

from oralx_lib import paths
from oralx_lib.data import OralXrays9


def test_shown_paths(monkeypatch, tmp_path):
    root = paths.repo_root()
    monkeypatch.delenv("ORALX_DATA", raising=False)
    monkeypatch.delenv("ORALX_RUNS", raising=False)
    assert paths.shown(root / "data" / "synthetic") == "data/synthetic"
    assert paths.shown(root) == "."
    assert paths.shown(Path.home() / "x" / "y.pt") == "~/x/y.pt"
    assert paths.shown("relative/z") == "relative/z"
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "real"))
    monkeypatch.setenv("ORALX_RUNS", str(tmp_path / "runs"))
    assert paths.shown(tmp_path / "real") == "$ORALX_DATA"
    assert paths.shown(tmp_path / "real" / "annotations" / "a.json") == \
        "$ORALX_DATA/annotations/a.json"
    assert paths.shown(tmp_path / "runs" / "book" / "best.pt") == "$ORALX_RUNS/book/best.pt"


def test_shown_in_a_text(monkeypatch, tmp_path):
    root = paths.repo_root()
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "real"))
    monkeypatch.delenv("ORALX_RUNS", raising=False)
    text = (f"done -> {root}/runs/book/x/best.pt; data {tmp_path}/real/val2017 "
            f"(cwd {root})")
    assert paths.shown_in(text) == "done -> runs/book/x/best.pt; data $ORALX_DATA/val2017 (cwd .)"
    assert str(tmp_path) not in paths.shown_in(str(tmp_path / "real"))


def test_dataset_repr_shows_no_absolute_root(tiny_set, monkeypatch):
    root = Path(tiny_set.root)
    monkeypatch.setenv("ORALX_DATA", str(root))
    text = repr(OralXrays9(root, "train"))
    assert "root='$ORALX_DATA'" in text and str(root) not in text
