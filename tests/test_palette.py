"""Colours a colour-blind reader can tell apart, and verdicts that never rest on colour alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex

from oralx_lib import CLASSES, palette
from oralx_lib.book import eval_figures, figures, rpn_figures
from oralx_lib.engine import predict

ROOT = Path(__file__).resolve().parent.parent


def test_simulation_matches_known_confusions():
    # red and green become nearly the same colour for a deuteranope, not for normal vision
    assert palette.min_distance(["#ff0000", "#00aa00"], ["normal"]) > 0.5
    assert palette.min_distance(["#d62728", "#2ca02c"], ["deuteranopia"]) < 0.12
    # the simulation keeps grays gray
    assert palette.simulate("#808080", "protanopia") == pytest.approx(palette.rgb("#808080"),
                                                                       abs=0.02)


def test_class_colours_stay_apart_for_every_vision():
    colors = list(palette.CLASS_COLORS.values())
    assert list(palette.CLASS_COLORS) == list(CLASSES)
    assert palette.min_distance(colors) > 0.2
    tab10 = [to_hex(plt.get_cmap("tab10")(9 if i == 7 else i)) for i in range(9)]
    assert palette.min_distance(tab10) < 0.1  # what the book used before: Wisdom vs Missing
    # bright enough for a box on a dark radiograph
    assert min(palette.luminance(c) for c in colors) > 0.1
    # every drawing module uses these
    assert figures.CLASS_COLORS == palette.CLASS_COLORS
    assert list(predict.CLASS_COLORS) == colors


@pytest.mark.parametrize("styles", [eval_figures.ERROR_STYLES, rpn_figures.ASSIGNMENT_STYLES],
                         ids=["error kinds", "anchor labels"])
def test_verdicts_differ_by_colour_and_line_style(styles):
    colors = [s["color"] for s in styles.values()]
    linestyles = [str(s["linestyle"]) for s in styles.values()]
    assert len(set(colors)) == len(colors) and len(set(linestyles)) == len(linestyles)
    assert palette.min_distance(colors) > 0.1


def test_rules_differ_by_line_style():
    assert set(rpn_figures.RULE_LINESTYLES) == set(rpn_figures.RULE_COLORS)
    assert len(set(rpn_figures.RULE_LINESTYLES.values())) == len(rpn_figures.RULE_LINESTYLES)


def test_text_on_a_box_is_readable():
    assert palette.text_color("#EEDD88") == "black"
    assert palette.text_color("#0072B2") == "white"


def test_use_sets_the_cycle():
    import matplotlib as mpl

    saved = mpl.rcParams["axes.prop_cycle"]
    try:
        palette.use()
        assert [c.upper() for c in mpl.rcParams["axes.prop_cycle"].by_key()["color"]] == \
            [c.upper() for c in palette.CYCLE]
    finally:
        mpl.rcParams["axes.prop_cycle"] = saved


#: matplotlib's default palette and its red/green pair: not in any figure of the book
FORBIDDEN = re.compile(r"""tab10|tab20|["']tab:(red|green|blue|orange|purple|cyan)["']|"""
                       r"""#2ca02c|#d62728|["'](red|green|lime)["']""", re.IGNORECASE)


def test_no_figure_code_uses_the_default_red_green_palette():
    offenders = []
    for path in sorted((ROOT / "oralx_lib").rglob("*.py")):
        if path.name == "palette.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for k, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                for line in "".join(cell["source"]).splitlines():
                    if FORBIDDEN.search(line):
                        offenders.append(f"{path.name}, cell {k}: {line.strip()}")
    assert offenders == []


def test_chapters_use_the_palette():
    for path in sorted((ROOT / "book").glob("0*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                       if c["cell_type"] == "code")
        assert "palette.use()" in code, path.name
