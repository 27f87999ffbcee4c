"""What every chapter gives a reader, checked on the notebooks themselves (no build needed):
a before-you-start box, a questionnaire beside the exercises, a numbered caption and a
describing alt text on every figure, and the notation page's symbols."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
TOC_FILES = [c["file"] for part in TOC["parts"] for c in part["chapters"]]
NOTEBOOKS = [ROOT / f"{f}.ipynb" for f in TOC_FILES if (ROOT / f"{f}.ipynb").is_file()]
#: The numbered chapters (the back matter's notebooks have figures but no exercises).
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]

#: An alt text that is no description: empty, a file name, a hash.
NOT_A_DESCRIPTION = re.compile(r"^\s*$|\.(png|jpe?g|svg|gif)\s*$|^[0-9a-f]{16,}", re.I)


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell):
    return "".join(cell["source"])


def _shows_a_figure(cell):
    return cell["cell_type"] == "code" and "plt.show()" in _source(cell)


def test_the_chapters_are_in_story_order():
    stems = [p.stem for p in CHAPTERS]
    assert stems == sorted(stems) and len(stems) == 8
    assert stems.index("07_moqam") < stems.index("08_gpu_training")  # the model, then training


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_has_a_name_a_caption_and_an_alt_text(path):
    figures = [c for c in _cells(path) if _shows_a_figure(c)]
    assert figures
    for cell in figures:
        where = f"{path.name}, cell {cell['id']}"
        assert _source(cell).count("plt.show()") == 1, f"{where}: one figure per cell"
        # myst-nb puts every displayed output of the cell in the figure: the image must be the
        # only one (a table as the cell's value, or a progress widget, belongs in another cell)
        last = ast.parse(_source(cell)).body[-1]
        assert not (isinstance(last, ast.Expr) and not (
            isinstance(last.value, ast.Call)
            and ast.unparse(last.value.func) in ("plt.show", "print"))), \
            f"{where}: the cell's last line displays a value; move it to a cell of its own"
        assert "display(" not in _source(cell), where
        meta = cell["metadata"].get("mystnb", {})
        name = meta.get("figure", {}).get("name", "")
        caption = meta.get("figure", {}).get("caption", "")
        alt = meta.get("image", {}).get("alt", "")
        assert name.startswith("fig-"), where
        assert len(caption) >= 40 and caption.rstrip()[-1] in ".?", where
        assert len(alt) >= 40 and not NOT_A_DESCRIPTION.search(alt), where
        assert alt != caption, f"{where}: the alt text describes, the caption interprets"


def test_figure_names_are_unique_across_the_book():
    names = [c["metadata"]["mystnb"]["figure"]["name"] for p in NOTEBOOKS for c in _cells(p)
             if _shows_a_figure(c)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_before_you_start_box(path):
    first = _source(_cells(path)[0])
    box = first.split("```{admonition} Before you start", 1)
    assert len(box) == 2, f"{path.name}: no before-you-start box in the first cell"
    box = box[1].split("\n```", 1)[0]
    for needed in ("**Builds on:**", "**Reading:**", "**Running:**", "{doc}`notation`",
                   "{doc}`glossary`", "2-core CPU", "Colab GPU", "an estimate"):
        assert needed in box, f"{path.name}: {needed!r} missing from the box"
    assert re.search(r"about \d+ minutes", box)
    for doc in re.findall(r"\{doc\}`([^`]+)`", box):
        assert f"book/{doc}" in TOC_FILES, f"{path.name}: {doc} is not a page of the book"


def test_moqam_builds_on_the_attention_primer():
    first = _source(_cells(ROOT / "book" / "07_moqam.ipynb")[0])
    assert "{doc}`attention_primer`" in first


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_questionnaire_before_the_exercises(path):
    text = "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "markdown")
    assert text.count("## Questionnaire") == 1 and text.count("## Exercises") == 1
    part = text.split("## Questionnaire", 1)[1].split("## Exercises", 1)[0]
    questions = re.findall(r"^\d+\. .+\?", part, flags=re.M)
    assert len(questions) >= 6, path.name


#: Symbols the notation page retired (each had a second meaning somewhere in the book).
RETIRED = {
    r"\\sigma_l": "the stride is d_l",
    r"\$\\sigma\$": "sigma is the sigmoid only; the stride is d",
    r"\\sigma \\times": "the stride is d",
    r"j\\,?\\sigma": "the stride is d",
    r"\\hat\\sigma": "the Hungarian assignment is q-hat(g)",
    r"\$r = (0\.15|h ?/ ?w)": "the slope is eta, the aspect ratio rho",
    r"\$r \\approx": "the resize factor is f",
    r"\$A = 9\$": "anchors per cell are n_a",
    r"\bm_n\b": "the best IoU of an anchor is IoU^max_n",
    r"\bG\(s, ?a, ?d\)": "the guaranteed IoU is Gamma(s, a, d)",
    r"\\mathrm\{AP\}_t\b": "the IoU threshold is theta",
    r"r_q\b": "the reference box is b-bar_q",
    r"(?<!\\mathcal )\bP\(i\)": "the positives are calligraphic P(i)",
}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_use_the_notation_page_symbols(path):
    text = "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "markdown")
    found = [f"{pattern} ({why})" for pattern, why in RETIRED.items() if re.search(pattern, text)]
    assert found == [], path.name


def test_the_notation_page_gives_each_symbol_one_meaning():
    text = (ROOT / "book" / "notation.md").read_text()
    body = text.split("## Reading the papers", 1)[0]
    symbols = re.findall(r"^\| (\$[^|]+\$[^|]*?) \|", body, flags=re.M)
    singles = [s for s in symbols if s.count("$") == 2]
    assert len(singles) == len(set(singles)), "a symbol is listed twice"
    for needed in (r"$d$", r"$\rho = h / w$", r"$f$", r"$\eta$", r"$\sigma(\cdot)$",
                   r"$\hat q(g)$", r"$\bar b_q$", r"$\theta$"):
        assert needed in body, needed
