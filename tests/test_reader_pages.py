"""The pages for readers and instructors stay in step with the chapters: the instructor's
guide lists every exercise once, with the right kind, and the notation and glossary pages are in
the table of contents."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from oralx_lib import grading

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def _exercise_rows() -> dict[str, list[str]]:
    text = (BOOK / "instructors.md").read_text()
    section = text.split("## The exercises", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        m = re.match(r"^\| `([a-z0-9-]+)` \|(.*)\|\s*$", line)
        if m:
            assert m[1] not in rows, f"{m[1]} listed twice"
            rows[m[1]] = [c.strip() for c in m[2].split("|")]
    return rows


def test_instructors_guide_lists_every_exercise_with_its_kind_and_chapter():
    key = grading.load_key([BOOK])
    rows = _exercise_rows()
    assert set(rows) == set(key), (sorted(set(key) - set(rows)), sorted(set(rows) - set(key)))
    for label, (chapter, kind, minutes) in rows.items():
        assert chapter == f"{{doc}}`{key[label].chapter}`", label
        assert ("checked" in kind) == bool(key[label].checks), label
        assert re.fullmatch(r"\d+ min", minutes), label


def test_reader_pages_are_in_the_table_of_contents():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for page in ("book/notation", "book/glossary", "book/instructors"):
        assert page in files
        assert (ROOT / f"{page}.md").is_file()
    # the notation comes before every chapter
    chapters = [f for f in files if re.match(r"book/\d\d_", f)]
    assert files.index("book/notation") < files.index(chapters[0])


def test_glossary_terms_are_sorted_and_defined_once():
    text = (BOOK / "glossary.md").read_text()
    body = text.split("```{glossary}", 1)[1].rsplit("```", 1)[0]
    terms = [line for line in body.splitlines() if line and not line.startswith(" ")]
    assert len(terms) > 40
    assert terms == sorted(terms, key=str.lower)
    assert len(set(t.lower() for t in terms)) == len(terms)


def test_attention_primer_code_runs():
    text = (BOOK / "attention_primer.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "attention_primer.md", "exec"), {})


def test_attention_primer_comes_right_before_the_complete_model():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    moqam = next(f for f in files if f.endswith("_moqam"))
    assert files[files.index(moqam) - 1] == "book/attention_primer"
