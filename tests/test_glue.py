"""Results quoted in the chapters' prose come from the page (myst-nb glue), checked on the
notebooks themselves (no build needed): every key a markdown cell quotes is glued by a code
cell of the same notebook, keys are unique across the book and carry their chapter's prefix.
Also the helper itself (:mod:`oralx_lib.book.glue`) and the synthetic sets' folders."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from oralx_lib import paths
from oralx_lib.book.glue import glue, plain

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [ROOT / f"{c['file']}.ipynb" for part in TOC["parts"] for c in part["chapters"]
            if (ROOT / f"{c['file']}.ipynb").is_file()]

#: ``{glue}`key```, ``{glue:text}`key:.1f```, ``{glue:any}`key``` ... in markdown
USED = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]+)`")
#: ``glue("key", ...)`` or ``glue(f"key_{x}", ...)`` in code (an f-string key is a pattern)
DEFINED = re.compile(r"\bglue\(\s*(f?)\"([^\"]+)\"")


def _cells(path, kind):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == kind]


def _defined(path) -> list[str]:
    """The keys a notebook's code glues; an f-string's ``{...}`` parts become ``.+``."""
    keys = []
    for source in _cells(path, "code"):
        for is_f, key in DEFINED.findall(source):
            keys.append(re.sub(r"\{[^}]*\}", ".+", key) if is_f else re.escape(key))
    return keys


def _used(path) -> list[str]:
    keys = []
    for source in _cells(path, "markdown"):
        # "doc::key:format" -> key (keys hold no colon)
        keys += [content.split("::")[-1].split(":")[0] for content in USED.findall(source)]
    return keys


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_quoted_key_is_glued_in_the_same_notebook(path):
    patterns = [re.compile(f"^{p}$") for p in _defined(path)]
    missing = [k for k in _used(path) if not any(p.match(k) for p in patterns)]
    assert not missing, f"{path.name}: quoted but never glued: {missing}"


def page_prefix(path) -> str:
    """``chNN_`` for chapter NN, the stem's first three letters for the other pages."""
    return f"ch{path.stem[:2]}_" if path.stem[:2].isdigit() else f"{path.stem[:3]}_"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_keys_carry_the_chapter_prefix(path):
    prefix = page_prefix(path)
    wrong = [k for k in _defined(path) + _used(path)
             if not k.replace("\\", "").startswith(prefix)]
    assert not wrong, f"{path.name}: keys without the prefix {prefix!r}: {wrong}"


def test_keys_are_unique_across_the_book():
    counts = Counter(k for path in CHAPTERS for k in set(_defined(path)))
    for path in CHAPTERS:  # a key glued twice in one notebook is a duplicate too
        counts.update(k for k, n in Counter(_defined(path)).items() if n > 1)
    assert not [k for k, n in counts.items() if n > 1]


def test_the_data_chapters_quote_their_results():
    for stem in ("01_data", "02_detection_basics"):
        assert len(_used(ROOT / "book" / f"{stem}.ipynb")) >= 10


def test_glue_returns_plain_values_and_checks_keys():
    assert type(glue("ch99_value", np.float64(0.25))) is float
    assert type(glue("ch99_count", np.int64(3))) is int
    assert plain(torch.tensor(2.5)) == 2.5 and type(plain(torch.tensor(2))) is int
    assert glue("ch99_name", "Decay") == "Decay"
    assert glue("rep_claim", "text") == "text"  # a back-matter page's prefix
    for bad in ("share", "CH01_share", "ch1_share", "ch01_share:.1f", "repro_x"):
        with pytest.raises(ValueError):
            glue(bad, 1)


def test_synthetic_data_roots(monkeypatch, tmp_path):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path))
    assert paths.default_data_root() == tmp_path
    assert paths.synthetic_data_root().name == "synthetic"  # whatever $ORALX_DATA says
    rare = paths.synthetic_data_root(rare_eval=True)
    assert rare.name == "synthetic-rare-eval"
    assert rare.parent == paths.synthetic_data_root().parent
    monkeypatch.delenv("ORALX_DATA")
    assert paths.default_data_root() == paths.synthetic_data_root()


def test_the_claims_are_pasted_from_numbers():
    """The pages that state a verdict on the paper's claims paste it (never type it)."""
    for name in ("04_di_rpn", "05_cb_scr", "reproduction"):
        path = ROOT / "book" / f"{name}.ipynb"
        assert any("_claim_" in k for k in _used(path)), name
        text = "\n".join(_cells(path, "markdown"))
        for verdict in ("is confirmed", "is reversed", "is not confirmed"):
            assert verdict not in text, f"{name}: a typed verdict ({verdict!r})"


def test_no_cell_ends_with_a_bare_glue_call():
    """``glue`` returns its value: as a cell's last expression it would print it on the page."""
    import ast

    offenders = []
    for path in CHAPTERS:
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or source.rstrip().endswith(";"):
                continue
            try:
                body = ast.parse(source).body
            except SyntaxError:  # IPython magics: not ours to check
                continue
            if body and isinstance(body[-1], ast.Expr) and isinstance(body[-1].value, ast.Call) \
                    and ast.unparse(body[-1].value.func) == "glue":
                offenders.append(f"{path.name}, cell {cell['id']}")
    assert offenders == []
