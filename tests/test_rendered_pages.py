"""The built site (``make book`` -> ``_build/html``), read as a browser gets it: every image has
an alt text that describes it, every figure of a chapter a numbered caption, maths comes from
the site itself, and no page shows the build machine's folders. Skipped when the site has not
been built; run ``make book`` first (or point ``ORALX_SITE_HTML`` at a built site)."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The site to check: ``_build/html`` of this checkout, or ``$ORALX_SITE_HTML``.
HTML = Path(os.environ.get("ORALX_SITE_HTML") or ROOT / "_build" / "html")
PAGES = sorted(HTML.rglob("*.html")) if HTML.is_dir() else []
CHAPTER_PAGES = [p for p in PAGES if re.match(r"\d\d_", p.name)]
NOT_A_DESCRIPTION = re.compile(r"^\s*$|\.(png|jpe?g|svg|gif)\s*$|^[0-9a-f]{16,}|^_images/",
                               re.I)

pytestmark = pytest.mark.skipif(not CHAPTER_PAGES, reason="no built site in _build/html "
                                                          "(run make book)")


class _Page(HTMLParser):
    """Images (with the figure they sit in), figure captions and script sources of a page."""

    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.scripts: list[str] = []
        self._figures: list[dict] = []
        self.figures: list[dict] = []
        self._in_caption = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._figures.append({"caption": "", "images": 0})
        elif tag == "figcaption" and self._figures:
            self._in_caption += 1
        elif tag == "img":
            self.images.append({"src": attrs.get("src", ""), "alt": attrs.get("alt"),
                                "in_figure": bool(self._figures)})
            if self._figures:
                self._figures[-1]["images"] += 1
        elif tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "figcaption" and self._in_caption:
            self._in_caption -= 1
        elif tag == "figure" and self._figures:
            self.figures.append(self._figures.pop())

    def handle_data(self, data):
        if self._in_caption and self._figures:
            self._figures[-1]["caption"] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf8"))
    return page


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(HTML)))
def test_every_image_has_a_describing_alt_text(path):
    for img in _parse(path).images:
        assert img["alt"] is not None and not NOT_A_DESCRIPTION.search(img["alt"]), \
            f"{path.name}: <img src={img['src']!r} alt={img['alt']!r}>"


@pytest.mark.parametrize("path", CHAPTER_PAGES, ids=lambda p: p.name)
def test_every_output_figure_is_numbered_and_captioned(path):
    page = _parse(path)
    outputs = [i for i in page.images if "_images/" in i["src"]]
    assert outputs, f"{path.name}: no figure at all"
    assert all(i["in_figure"] for i in outputs), f"{path.name}: an image outside a figure"
    for figure in page.figures:
        # one image per figure: a table or a widget wrapped in a figure is a captioning mistake
        assert figure["images"] == 1, (path.name, figure["caption"][:80])
        assert re.match(r"\s*Fig\. \d+", figure["caption"]), (path.name, figure["caption"])


@pytest.mark.parametrize("path", CHAPTER_PAGES, ids=lambda p: p.name)
def test_maths_is_served_by_the_site(path):
    mathjax = [s for s in _parse(path).scripts if "mathjax" in s.lower()]
    assert mathjax and not any(s.startswith(("http:", "https:", "//")) for s in mathjax)
    for src in mathjax:
        assert (path.parent / src.split("?")[0]).resolve().is_file(), src


@pytest.mark.parametrize("path", CHAPTER_PAGES, ids=lambda p: p.name)
def test_no_page_shows_the_build_machines_folders(path):
    text = path.read_text(encoding="utf8")
    folders = {str(ROOT), str(ROOT.resolve())}
    if os.environ.get("ORALX_DATA"):
        folders.add(str(Path(os.environ["ORALX_DATA"]).resolve()))
    shown = [f for f in folders if f in text]
    assert shown == [], f"{path.name} prints {shown}: print paths.shown(...) instead"
