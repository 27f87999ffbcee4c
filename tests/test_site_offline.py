"""The site renders its maths without a CDN: a one-page book built with the project's
``sphinx:`` and ``parse:`` settings loads MathJax from its own ``_static/mathjax/``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _jupyter_book() -> str | None:
    local = Path(sys.executable).parent / "jupyter-book"
    return str(local) if local.is_file() else shutil.which("jupyter-book")


@pytest.mark.slow
def test_maths_is_served_by_the_site(tmp_path):
    jb = _jupyter_book()
    if jb is None:
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    project = yaml.safe_load((ROOT / "_config.yml").read_text())
    config = {"title": "maths", "execute": {"execute_notebooks": "off"},
              "parse": project["parse"], "sphinx": project["sphinx"]}
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (tmp_path / "index.md").write_text(
        "# Maths\n\nInline $\\sigma(x)$ and\n\n$$\n\\frac{|b \\cap b'|}{|b \\cup b'|}\n$$\n")

    done = subprocess.run([jb, "build", str(tmp_path)], capture_output=True, text=True)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    html = (tmp_path / "_build" / "html" / "index.html").read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', html, flags=re.I)
    assert scripts, "no MathJax script on the page"
    assert all(not s.startswith(("http:", "https:", "//")) for s in scripts), scripts
    for src in scripts:
        assert (tmp_path / "_build" / "html" / src).is_file(), src
    # only MathJax's entry point gets a script tag; its components load on demand
    assert html.count("_static/mathjax/") == 1
