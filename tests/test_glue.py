"""Numbers in running text come from the executed page (myst-nb glue): every key a page pastes
is glued by a code cell of the same page, and no two pages glue the same key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOTEBOOKS = [ROOT / f"{c['file']}.ipynb" for part in TOC["parts"] for c in part["chapters"]
             if (ROOT / f"{c['file']}.ipynb").is_file()]

#: ``{glue}`key``, ``{glue:text}`key:.2f``, ``{glue:}`key`` in markdown.
PASTED = re.compile(r"\{glue(?::\w*)?\}`([^`:]+)(?::[^`]*)?`")
#: ``glue("key", ...)`` or ``glue(f"key_{x}", ...)`` in code.
GLUED = re.compile(r"\bglue\(\s*(f?)([\"'])(.+?)\2")


def _cells(path, kind):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == kind]


def glued_patterns(path) -> list[re.Pattern]:
    """The keys the page's code glues, an f-string's fields read as wildcards."""
    out = []
    for source in _cells(path, "code"):
        for fmt, _, key in GLUED.findall(source):
            if fmt:
                parts = re.split(r"\{[^}]*\}", key)
                out.append(re.compile("^" + "[A-Za-z0-9_.-]+".join(map(re.escape, parts)) + "$"))
            else:
                out.append(re.compile("^" + re.escape(key) + "$"))
    return out


def pasted_keys(path) -> list[str]:
    return [k for source in _cells(path, "markdown") for k in PASTED.findall(source)]


def test_the_patterns_read_what_pages_write():
    assert PASTED.findall("AP {glue:text}`ch05_ap:.3f` and {glue}`ch05_n` {glue:}`ch05_x`") == [
        "ch05_ap", "ch05_n", "ch05_x"]
    assert GLUED.findall('glue("ch04_a", 1, display=False); glue(f"ch04_claim_{k}", s)') == [
        ("", '"', "ch04_a"), ("f", '"', "ch04_claim_{k}")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_pasted_key_is_glued_on_the_same_page(path):
    patterns = glued_patterns(path)
    missing = [k for k in pasted_keys(path) if not any(p.match(k) for p in patterns)]
    assert missing == [], f"{path.name}: pasted but never glued here: {missing}"


def test_no_two_pages_glue_the_same_key():
    owner: dict[str, str] = {}
    for path in NOTEBOOKS:
        for pattern in {p.pattern for p in glued_patterns(path)}:
            assert owner.setdefault(pattern, path.name) == path.name, \
                f"{pattern} is glued by {owner[pattern]} and {path.name}"


def test_the_claims_are_pasted_from_numbers():
    """The pages that state a verdict on the paper's claims paste it (never type it)."""
    for name in ("04_di_rpn", "05_cb_scr", "reproduction"):
        text = "\n".join(_cells(ROOT / "book" / f"{name}.ipynb", "markdown"))
        assert "_claim_" in " ".join(PASTED.findall(text)), name
        for verdict in ("is confirmed", "is reversed", "is not confirmed"):
            assert verdict not in text, f"{name}: a typed verdict ({verdict!r})"
