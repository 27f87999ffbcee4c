"""The grading command: an answer key read from chapters with solutions, and tiny submissions
that pass, fail, crash, kill their kernel, never finish, or define the function late."""

from __future__ import annotations

import csv
import textwrap

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from oralx_lib import cli, grading

CORRECT = textwrap.dedent("""\
    def coco_to_xyxy(bbox, width, height):
        x, y, w, h = bbox
        if w < 1 or h < 1:
            return None
        x1, y1 = min(max(x, 0), width), min(max(y, 0), height)
        x2, y2 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            return None
        return [x1, y1, x2, y2]
    """)
UNCLIPPED = textwrap.dedent("""\
    def coco_to_xyxy(bbox, width, height):
        x, y, w, h = bbox
        return [x, y, x + w, y + h]
    """)

STATEMENT_CONVERT = textwrap.dedent("""\
    ```{exercise-start}
    :label: t-ex-convert
    ```

    Write `coco_to_xyxy(bbox, width, height)`.

    ```{exercise-end}
    ```""")
STATEMENT_THINK = textwrap.dedent("""\
    ```{exercise-start}
    :label: t-ex-think
    ```
    Why clip?
    ```{exercise-end}
    ```""")


def key_notebook() -> nbformat.NotebookNode:
    """A chapter with two exercises: one with a self-check in its solution, one without."""
    return new_notebook(cells=[
        new_markdown_cell("# A chapter\n\n## Exercises"),
        new_markdown_cell(STATEMENT_CONVERT),
        new_markdown_cell("```{solution-start} t-ex-convert\n:class: dropdown\n```"),
        new_code_cell("from oralx_lib.book import selfcheck\n\n\n" + CORRECT
                      + "\n\nselfcheck.check_coco_to_xyxy(coco_to_xyxy)"),
        new_markdown_cell("```{solution-end}\n```"),
        new_markdown_cell(STATEMENT_THINK),
        new_markdown_cell("```{solution-start} t-ex-think\n```\nBoxes leave the image.\n"
                          "```{solution-end}\n```\n\n## Summary"),
    ])


def submission(*answer: str, late: str | None = None) -> nbformat.NotebookNode:
    """The student edition of :func:`key_notebook` with ``answer`` cells after the first
    statement and, optionally, a cell after the last one."""
    cells = [new_markdown_cell("# A chapter\n\n## Exercises"),
             new_code_cell("x = 1"),
             new_markdown_cell(STATEMENT_CONVERT),
             *[new_code_cell(a) for a in answer],
             new_markdown_cell(STATEMENT_THINK),
             new_markdown_cell("Because boxes leave the image.\n\n## Summary")]
    if late is not None:
        cells.append(new_code_cell(late))
    return new_notebook(cells=cells)


@pytest.fixture()
def book(tmp_path):
    key_dir = tmp_path / "key"
    key_dir.mkdir()
    nbformat.write(key_notebook(), key_dir / "09_toy.ipynb")
    return key_dir


def test_key_reads_exercises_and_the_checks_of_their_solutions(book):
    key = grading.load_key([book])
    assert list(key) == ["t-ex-convert", "t-ex-think"]
    assert [c.call for c in key["t-ex-convert"].checks] == [
        "selfcheck.check_coco_to_xyxy(coco_to_xyxy)"]
    assert key["t-ex-convert"].chapter == "09_toy"
    assert key["t-ex-think"].checks == []


def test_key_of_the_book_finds_its_self_checked_exercises():
    key = grading.load_key([grading.default_key_dir()])
    calls = {c.shown for e in key.values() for c in e.checks}
    assert "check_coco_to_xyxy(coco_to_xyxy)" in calls
    assert "check_dynamic_threshold(released_threshold, released=True)" in calls
    # the chapter's own worked checks (outside any exercise) are not exercises
    assert "check_iou(iou)" not in calls


def test_check_calls_keeps_arguments_and_skips_magics():
    code = "%matplotlib inline\n!ls\nfor s in [1]:\n    selfcheck.check_a(f, released=True)\n" \
           "oralx_lib.selfcheck.check_b(g)\ncheck_c(h)\nprint(1)"
    assert grading.check_calls(code) == [
        ("check_a", "selfcheck.check_a(f, released=True)"),
        ("check_b", "selfcheck.check_b(g)"),
        ("check_c", "selfcheck.check_c(h)")]


def test_instrument_puts_one_grader_cell_after_each_exercise_and_one_at_the_end(book):
    key = grading.load_key([book])
    nb = submission("pass", "pass")
    program, regions = grading.instrument(nb, list(key.values()), timeout=5)
    kinds = [c.metadata.get(grading.CELL_KEY) for c in program.cells]
    assert kinds.count({"exercise": "t-ex-convert"}) == 1
    assert kinds[-1] == {"final": True}
    first = kinds.index({"exercise": "t-ex-convert"})
    # right after the student's two cells, before the next statement
    assert program.cells[first + 1].source == STATEMENT_THINK
    assert regions["t-ex-convert"] == [first - 2, first - 1]
    assert len({c.id for c in program.cells}) == len(program.cells)


def test_key_without_exercises_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("# nothing")]), path)
    with pytest.raises(grading.GradingError, match="empty.ipynb"):
        grading.load_key([path])


def test_missing_submission_exits_2_with_the_path(book, tmp_path, capsys):
    code = cli.main(["grade", str(tmp_path / "nope.ipynb"), "--key", str(book),
                     "--out", str(tmp_path / "g.csv")])
    assert code == 2
    assert "nope.ipynb" in capsys.readouterr().err


@pytest.mark.slow
def test_grade_pass_fail_crash_dead_endless_late(book, tmp_path, capsys):
    subs = tmp_path / "subs"
    subs.mkdir()
    cases = {
        "alice": submission(CORRECT),
        "bob": submission(UNCLIPPED),
        "carol": submission("def coco_to_xyxy(bbox, width, height):\n    return 1 / 0",
                            "raise RuntimeError('my own cell broke')"),
        "dave": submission("import os\nos._exit(3)"),
        "erin": submission("def coco_to_xyxy(bbox, width, height):\n    while True:\n"
                           "        pass"),
        "frank": submission("# answer at the end", late=CORRECT),
    }
    for name, nb in cases.items():
        nbformat.write(nb, subs / f"{name}.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("my notes")]), subs / "gina.ipynb")
    out = tmp_path / "grades.csv"

    code = cli.main(["grade", str(subs), "--key", str(book), "--out", str(out),
                     "--timeout", "4", "--no-progress"])

    assert code == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == grading.COLUMNS
    auto = {r["student"]: r for r in rows if r["exercise"] == "t-ex-convert"}
    manual = [r for r in rows if r["exercise"] == "t-ex-think"]
    assert {r["status"] for r in manual} == {"manual"} and len(manual) == 6
    assert auto["alice"]["status"] == "pass" and auto["alice"]["message"] == ""
    assert auto["alice"]["check"] == "check_coco_to_xyxy(coco_to_xyxy)"
    assert auto["alice"]["chapter"] == "09_toy"
    assert auto["bob"]["status"] == "fail"
    assert "coco_to_xyxy(" in auto["bob"]["message"]  # the self-check's own hint
    assert auto["carol"]["status"] == "error"
    assert "ZeroDivisionError" in auto["carol"]["message"]
    assert "RuntimeError: my own cell broke" in auto["carol"]["message"]
    assert auto["dave"]["status"] == "error"
    assert "kernel stopped" in auto["dave"]["message"]
    assert auto["erin"]["status"] == "error"
    assert "4 s" in auto["erin"]["message"]
    assert auto["frank"]["status"] == "pass"
    gina = [r for r in rows if r["student"] == "gina"]
    assert len(gina) == 1 and gina[0]["status"] == "error"
    assert "student edition" in gina[0]["message"]
    printed = capsys.readouterr().out
    assert "alice: 1/1 checks passed, 1 exercises to read" in printed


@pytest.mark.slow
def test_total_timeout_stops_a_submission_and_says_so(book, tmp_path):
    path = tmp_path / "slow.ipynb"
    nbformat.write(submission("import time\ntime.sleep(30)", CORRECT), path)
    grades = grading.grade([path], tmp_path / "g.csv", key_paths=[book], timeout=60,
                           total_timeout=3, progress=False)
    convert = [g for g in grades if g.exercise == "t-ex-convert"]
    assert [g.status for g in convert] == ["error"]
    assert "--total-timeout" in convert[0].message
    assert convert[0].student == "slow"
