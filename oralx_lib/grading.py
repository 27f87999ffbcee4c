"""Grade students' chapter notebooks with the exercises' self-checks.

``python -m oralx_lib grade SUBMISSIONS... --out grades.csv`` executes every submitted notebook
in a fresh kernel and writes one CSV row per student, exercise and check: ``pass``, ``fail``
(the self-check's ``AssertionError``, with its hint), ``error`` (the answer crashed, is missing,
ran past the time limit or killed the kernel, with the message) or ``manual`` (an exercise with
no self-check: read the answer).

What is graded
--------------
The answer key is the book itself: the chapters *with* their solutions (``book/`` of a source
checkout, or ``--key``). An exercise is a sphinx-exercise ``exercise-start`` (or ``exercise``)
directive with a ``:label:``; its checks are the self-check calls in the code cells of its
solution (``selfcheck.check_coco_to_xyxy(coco_to_xyxy)``). The student edition (``make
student``) keeps the exercise statements and removes the solutions, so a submission holds the
chapter, the statements and the student's own cells. The grader finds the chapter of a
submission by its exercise labels, then inserts after the student's cells of each exercise (up to
the next exercise statement) one cell that runs that exercise's checks on the student's
functions, by the names the statement asks for. A function defined only further down is looked
up again at the end of the notebook. Whether the student called the self-check is irrelevant:
the grader calls it.

Each submission runs in a new ``python3`` kernel, in the submission's folder, with the
grader's environment (set ``ORALX_DATA`` as for the book). A cell that runs longer than
``--timeout`` seconds is interrupted, and a submission that needs more than ``--total-timeout``
seconds is stopped: the checks not run by then are errors. The students' code runs with your
permissions, so grade in a container or a throw-away account.

Why not nbgrader or otter-grader
--------------------------------
Both grade their own assignment format: nbgrader marks answer and test cells in cell metadata
(``nbgrader.grade_id``, ``### BEGIN SOLUTION``) and keeps a course database; otter-grader
builds the student and autograder versions from a master notebook with ``# BEGIN QUESTION`` /
``# BEGIN TESTS`` cells and grades in Docker by default. The book's exercises are sphinx-exercise
directives whose solutions are whole cells and whose tests are the library's self-checks; using
either tool would mean a second copy of every exercise in its format, kept in step by hand.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .files import atomic_write
from .paths import repo_root

#: Columns of the grades file, in order.
COLUMNS = ("student", "submission", "chapter", "exercise", "check", "status", "message")
STATUSES = ("pass", "fail", "error", "manual")
#: Marks the lines that the grader's cells print; only the grader's own cells are read.
SENTINEL = "@@oralx-grade@@"
#: Metadata key of the cells the grader inserts.
CELL_KEY = "oralx_grader"
#: Longest message kept in the CSV (characters).
MAX_MESSAGE = 600

_FENCE = r"^\s{0,3}(?P<fence>`{3,}|:{3,})\{(?P<name>%s)\}(?P<arg>[^\n]*)$"
_EXERCISE = re.compile(_FENCE % "exercise-start|exercise", re.MULTILINE)
_SOLUTION = re.compile(_FENCE % "solution-start|solution-end", re.MULTILINE)
_LABEL = re.compile(r"^\s*:label:\s*(\S+)\s*$", re.MULTILINE)


class GradingError(ConfigError):
    """A grading input the instructor can fix: a missing file, an unreadable notebook, an answer
    key without exercises."""


@dataclass(frozen=True)
class Check:
    """One self-check call of an exercise's solution."""

    exercise: str
    name: str  # "check_coco_to_xyxy"
    call: str  # "selfcheck.check_coco_to_xyxy(coco_to_xyxy)"

    @property
    def shown(self) -> str:
        """The call as the CSV shows it: ``check_coco_to_xyxy(coco_to_xyxy)``."""
        return self.call.removeprefix("selfcheck.")


@dataclass
class Exercise:
    label: str
    chapter: str  # the key notebook's stem, e.g. "01_data"
    checks: list[Check] = field(default_factory=list)


@dataclass
class Grade:
    student: str
    submission: str
    chapter: str
    exercise: str
    check: str
    status: str
    message: str = ""

    def row(self) -> dict:
        return {k: getattr(self, k) for k in COLUMNS}


# ------------------------------------------------------------------------------ the answer key

def _read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise GradingError(f"{path}: no such notebook.") from None
    except Exception as exc:  # nbformat raises several types for a broken file
        raise GradingError(f"{path}: not a readable Jupyter notebook ({type(exc).__name__}: "
                           f"{exc}); ask for the .ipynb file as saved by Jupyter.") from None


def _exercise_label(match: re.Match, text: str) -> str | None:
    """The ``:label:`` of the exercise directive opened by ``match`` in ``text``."""
    rest = text[match.end():]
    closing = re.search(r"^\s{0,3}" + re.escape(match["fence"]) + r"\s*$", rest, re.MULTILINE)
    body = rest[:closing.start()] if closing else rest
    found = _LABEL.search(body)
    return found.group(1) if found else None


def exercise_labels(text: str) -> list[str]:
    """Labels of the exercise directives in one markdown cell, in order."""
    return [label for m in _EXERCISE.finditer(text)
            if (label := _exercise_label(m, text)) is not None]


def _python_source(code: str) -> str:
    """``code`` with IPython's ``%magic`` and ``!shell`` lines blanked, so that ``ast`` reads
    it (line numbers kept)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in code.splitlines())


def _is_check(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute) and func.attr.startswith("check_"):
        base = func.value
        if isinstance(base, ast.Name) and base.id == "selfcheck":
            return func.attr
        if isinstance(base, ast.Attribute) and base.attr == "selfcheck":
            return func.attr
    if isinstance(func, ast.Name) and func.id.startswith("check_"):
        return func.id
    return None


def check_calls(code: str) -> list[tuple[str, str]]:
    """``(check name, call text)`` of every self-check call in a code cell, in order; the call
    is rewritten to ``selfcheck.NAME(...)`` with its arguments as written."""
    source = _python_source(code)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := _is_check(node.func)):
            args = [ast.get_source_segment(source, a) for a in node.args]
            args += [f"{k.arg}={ast.get_source_segment(source, k.value)}" if k.arg
                     else f"**{ast.get_source_segment(source, k.value)}" for k in node.keywords]
            found.append((node.lineno, node.col_offset, name,
                          f"selfcheck.{name}({', '.join(args)})"))
    return [(name, call) for _, _, name, call in sorted(found)]


def key_from_notebook(nb, chapter: str) -> list[Exercise]:
    """The exercises of one chapter with solutions, in order, with their checks."""
    exercises: dict[str, Exercise] = {}
    inside: str | None = None  # the label of the open solution
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for label in exercise_labels(cell.source):
                exercises.setdefault(label, Exercise(label, chapter))
            for m in _SOLUTION.finditer(cell.source):
                inside = m["arg"].strip() or None if m["name"] == "solution-start" else None
        elif cell.cell_type == "code" and inside in exercises:
            for name, call in check_calls(cell.source):
                check = Check(inside, name, call)
                if check not in exercises[inside].checks:
                    exercises[inside].checks.append(check)
    return list(exercises.values())


def load_key(paths: Iterable[str | Path]) -> dict[str, Exercise]:
    """The answer key of the chapters named (notebooks, or folders of them): exercise label ->
    :class:`Exercise`, in reading order.

    Raises:
        GradingError: a path that does not exist, or no exercise in any of them.
    """
    notebooks: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            notebooks += [q for q in sorted(p.glob("*.ipynb"))]
        elif p.is_file():
            notebooks.append(p)
        else:
            raise GradingError(f"{p}: no such notebook or folder for --key; pass the book's "
                               "chapters with their solutions (the book/ folder of the "
                               "source checkout).")
    key: dict[str, Exercise] = {}
    for path in notebooks:
        for exercise in key_from_notebook(_read_notebook(path), path.stem):
            if exercise.label in key:
                raise GradingError(f"{path}: exercise label {exercise.label!r} is also in "
                                   f"chapter {key[exercise.label].chapter}; labels must be "
                                   "unique across the book.")
            key[exercise.label] = exercise
    if not key:
        raise GradingError(f"no exercise (```{{exercise-start}}``` with a :label:) in "
                           f"{', '.join(map(str, notebooks)) or 'the --key paths'}; pass the "
                           "chapters with their solutions as --key.")
    return key


def default_key_dir() -> Path:
    root = repo_root()
    if root is None or not (root / "book").is_dir():
        raise GradingError("no answer key: this installation has no book/ folder; pass --key "
                           "with the book's chapters (with solutions) from a source checkout.")
    return root / "book"


# ------------------------------------------------------------------------------ submissions

def find_submissions(paths: Iterable[str | Path],
                     chapters: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``(student, notebook)`` for every submission named.

    A folder contributes every notebook below it, the student being the first path component
    under the folder (``subs/alice/03_rpn.ipynb`` and ``subs/alice.ipynb`` are both Alice's).
    A notebook named directly belongs to the student of its file name, or of its folder when
    the file has a chapter's name (``alice/03_rpn_baseline.ipynb``).
    """
    chapters = set(chapters)
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            for nb in sorted(p.rglob("*.ipynb")):
                if ".ipynb_checkpoints" in nb.parts:
                    continue
                first = nb.relative_to(p).parts[0]
                found.append((Path(first).stem if first.endswith(".ipynb") else first, nb))
        elif p.is_file():
            student = p.parent.resolve().name if p.stem in chapters else p.stem
            found.append((student, p))
        else:
            raise GradingError(f"{p}: no such submission (a notebook or a folder of them).")
    if not found:
        raise GradingError("no .ipynb file in " + ", ".join(map(str, paths)) + ".")
    return found


def _grader_source(checks: Sequence[tuple[Check, bool]], *, final: bool, timeout: float) -> str:
    """The code of one inserted cell: run the checks and print one sentinel line per check.

    ``checks`` pairs each check with ``always``. At an exercise's end, a check whose function
    is not defined yet is remembered as missing; the final cell runs only those again, and
    the checks marked ``always`` (exercises whose statement is not in the notebook)."""
    items = [[c.exercise, c.name, c.call, always] for c, always in checks]
    return f'''\
def _oralx_grade(checks, final, timeout):
    import json
    from oralx_lib.book import selfcheck as _selfcheck
    missing = globals().setdefault("_oralx_grade_missing", set())
    for exercise, name, call, always in checks:
        if final and not always and (exercise, call) not in missing:
            continue
        namespace = dict(globals(), selfcheck=_selfcheck)
        try:
            exec(compile(call, "<grader>", "exec"), namespace)
            status, message = "pass", ""
            missing.discard((exercise, call))
        except AssertionError as exc:
            status, message = "fail", str(exc) or "AssertionError without a message"
            missing.discard((exercise, call))
        except NameError as exc:
            status, message = ("error" if final else "missing"), f"NameError: {{exc}}"
            missing.add((exercise, call))
        except KeyboardInterrupt:
            status, message = "error", f"interrupted: ran longer than {{timeout:g}} s"
        except BaseException as exc:
            status, message = "error", f"{{type(exc).__name__}}: {{exc}}"
        print({SENTINEL!r} + json.dumps({{"exercise": exercise, "call": call,
              "status": status, "message": message}}), flush=True)


_oralx_grade({items!r}, {final!r}, {timeout!r})
del _oralx_grade
'''


def instrument(nb, exercises: list[Exercise], *, timeout: float):
    """A copy of ``nb`` with one grader cell after each exercise's cells and one at the end.

    Returns ``(notebook, regions)`` where ``regions[label]`` lists the indices (in the new
    notebook) of the student's code cells between the exercise's statement and the next one.
    """
    import copy

    import nbformat

    out = copy.deepcopy(nb)
    labels = {e.label: e for e in exercises}
    starts: list[tuple[int, str]] = []
    for i, cell in enumerate(out.cells):
        if cell.cell_type == "markdown":
            for label in exercise_labels(cell.source):
                if label in labels:
                    starts.append((i, label))
    # where each exercise's cells end: the next statement of any exercise, or the end
    bounds = [i for i, _ in starts] + [len(out.cells)]
    inserts: dict[int, list[str]] = {}
    present = set()
    for (start, label), end in zip(starts, bounds[1:]):
        present.add(label)
        inserts.setdefault(end, []).append(label)
    cells = []
    regions: dict[str, list[int]] = {label: [] for _, label in starts}
    current: str | None = None
    label_at = dict(starts)
    for i, cell in enumerate(out.cells + [None]):
        for label in inserts.get(i, []):
            if labels[label].checks:
                new = nbformat.v4.new_code_cell(
                    _grader_source([(c, False) for c in labels[label].checks], final=False,
                                   timeout=timeout))
                new.metadata[CELL_KEY] = {"exercise": label}
                cells.append(new)
        if cell is None:
            break
        if i in label_at:
            current = label_at[i]
        if current is not None and cell.cell_type == "code":
            regions[current].append(len(cells))
        cells.append(cell)
    final_checks = [(c, e.label not in present) for e in exercises for c in e.checks]
    if final_checks:
        new = nbformat.v4.new_code_cell(_grader_source(final_checks, final=True,
                                                       timeout=timeout))
        new.metadata[CELL_KEY] = {"final": True}
        cells.append(new)
    for cell in cells:  # ids: the new cells need their own; nbformat 4.5 wants them unique
        if "id" not in cell:
            cell["id"] = nbformat.v4.new_code_cell().id
    out.cells = cells
    return out, regions


# ------------------------------------------------------------------------------ execution

def _short(text: str) -> str:
    text = " | ".join(line.rstrip() for line in str(text).strip().splitlines() if line.strip())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


class _OutOfTime(Exception):
    """The submission used up its total time."""


def _make_client(nb, *, workdir: Path, timeout: float, total_timeout: float | None,
                 kernel_name: str):
    from nbclient import NotebookClient

    deadline = None if total_timeout is None else time.monotonic() + total_timeout

    class GradingClient(NotebookClient):
        current: int | None = None

        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            self.current = cell_index
            if (deadline is not None and time.monotonic() > deadline
                    and cell.cell_type == "code"):
                raise _OutOfTime(cell_index)
            return await super().async_execute_cell(cell, cell_index, *args, **kwargs)

    def cell_timeout(cell) -> int:
        limit = timeout
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
        return max(1, math.ceil(limit))  # a cell cut by the total budget ends past it

    def on_error(cell, cell_index, execute_reply, **_):
        content = execute_reply.get("content", {})
        client.cell_errors[cell_index] = (content.get("ename", "Error"),
                                          content.get("evalue", ""))

    client = GradingClient(
        nb, timeout=int(timeout), timeout_func=cell_timeout, kernel_name=kernel_name,
        allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "TimeoutError",
                          "evalue": "the cell ran past its time limit (--timeout, or what was "
                                    "left of --total-timeout) and was interrupted"},
        resources={"metadata": {"path": str(workdir)}},
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
        on_cell_error=on_error,
    )
    client.cell_errors = {}
    return client


def _results_of(nb) -> dict[tuple[str, str], dict]:
    """Results printed by the grader's cells: ``(exercise, call) -> record``; the final cell's
    record replaces a missing one."""
    results: dict[tuple[str, str], dict] = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get(CELL_KEY)
        if meta is None or cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                       if o.get("output_type") == "stream" and o.get("name") == "stdout")
        for line in text.splitlines():
            if not line.startswith(SENTINEL):
                continue
            try:
                record = json.loads(line[len(SENTINEL):])
            except json.JSONDecodeError:
                continue
            k = (record.get("exercise"), record.get("call"))
            if meta.get("final") or k not in results or results[k]["status"] == "missing":
                results[k] = record
    return results


def grade_notebook(path: Path, student: str, key: dict[str, Exercise], *,
                   timeout: float = 300, total_timeout: float | None = None,
                   kernel_name: str = "python3", label: str | None = None) -> list[Grade]:
    """Execute one submission and grade it: one :class:`Grade` per check of its chapter's
    exercises (``manual`` for an exercise without checks). Never raises for what the
    student's code does; a submission that is not a notebook or has none of the book's
    exercises gives one ``error`` row."""
    shown = label or str(path)
    try:
        nb = _read_notebook(path)
    except GradingError as exc:
        return [Grade(student, shown, "", "", "", "error", _short(exc))]
    found = [lab for c in nb.cells if c.cell_type == "markdown"
             for lab in exercise_labels(c.source) if lab in key]
    if not found:
        return [Grade(student, shown, "", "", "", "error",
                      "none of the book's exercises is in this notebook: hand out the student "
                      "edition's notebooks (make student) and ask for them back with the "
                      "exercise statements kept")]
    chapters = [key[lab].chapter for lab in found]
    chapter = max(dict.fromkeys(chapters), key=chapters.count)
    exercises = [e for e in key.values() if e.chapter == chapter]
    program, regions = instrument(nb, exercises, timeout=timeout)
    client = _make_client(program, workdir=path.resolve().parent, timeout=timeout,
                          total_timeout=total_timeout, kernel_name=kernel_name)
    stopped = ""
    try:
        client.execute()
    except _OutOfTime:
        stopped = (f"not run: the submission used its {total_timeout:g} s "
                   "(--total-timeout) before this check")
    except Exception as exc:  # DeadKernelError, a kernel that does not start, ...
        where = ""
        if client.current is not None and client.current < len(program.cells):
            first = (program.cells[client.current].source.strip().splitlines() or [""])[0]
            where = f" in the cell that starts {first[:60]!r}"
        stopped = _short(f"not run: the kernel stopped{where} ({type(exc).__name__}: {exc}); "
                         "a crash or running out of memory in the student's code")
    results = _results_of(client.nb)
    grades = []
    for exercise in exercises:
        if not exercise.checks:
            grades.append(Grade(student, shown, chapter, exercise.label, "", "manual",
                                "no self-check: read the answer"))
            continue
        context = next((client.cell_errors[i] for i in regions.get(exercise.label, [])
                        if i in client.cell_errors), None)
        for check in exercise.checks:
            record = results.get((exercise.label, check.call))
            if record is None:
                status, message = "error", stopped or "no result from the grader's cell"
                cell_error = _grader_cell_error(client, exercise.label)
                if cell_error and not stopped:
                    message = f"{cell_error[0]}: {cell_error[1]}"
            else:
                status, message = record["status"], record["message"]
                if status == "missing":
                    status = "error"
                if status == "error" and stopped and record["message"].startswith("NameError"):
                    message = stopped
            if exercise.label not in regions:
                message = ("the exercise's statement is not in the notebook; "
                           + message).rstrip("; ")
            elif status != "pass" and context is not None:
                message += f" (the exercise's cells raised {context[0]}: {context[1]})"
            grades.append(Grade(student, shown, chapter, exercise.label, check.shown, status,
                                _short(message)))
    return grades


def _grader_cell_error(client, label: str) -> tuple[str, str] | None:
    for i, cell in enumerate(client.nb.cells):
        meta = cell.get("metadata", {}).get(CELL_KEY) or {}
        if meta.get("exercise") == label and i in client.cell_errors:
            return client.cell_errors[i]
    return None


def _grade_one(args) -> list[Grade]:
    student, path, key, kwargs = args
    return grade_notebook(path, student, key, **kwargs)


def grade(submissions: Sequence[str | Path], out: str | Path, *,
          key_paths: Sequence[str | Path] | None = None, timeout: float = 300,
          total_timeout: float | None = None, jobs: int = 1, kernel_name: str = "python3",
          progress: bool = True) -> list[Grade]:
    """Grade every submission (see the module docstring) and write ``out`` (CSV, written
    atomically); return the grades.

    Raises:
        GradingError: a missing submission, key or output folder.
    """
    from tqdm.auto import tqdm

    if timeout <= 0 or (total_timeout is not None and total_timeout <= 0):
        raise GradingError("--timeout and --total-timeout take a number of seconds above 0.")
    key = load_key(key_paths or [default_key_dir()])
    chapters = {e.chapter for e in key.values()}
    found = find_submissions(submissions, chapters)
    out = Path(out)
    if not out.parent.exists():
        raise GradingError(f"{out.parent}: no such folder for --out; create it first.")
    kwargs = {"timeout": timeout, "total_timeout": total_timeout, "kernel_name": kernel_name}
    tasks = [(student, path, key, {**kwargs, "label": _relative(path)})
             for student, path in found]
    grades: list[Grade] = []
    bar = tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress)
    if jobs > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for result in pool.map(_grade_one, tasks):
                grades += result
                bar.update()
    else:
        for task in tasks:
            grades += _grade_one(task)
            bar.update()
    bar.close()
    write_grades(grades, out)
    return grades


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def write_grades(grades: Iterable[Grade], out: Path) -> None:
    """Write the CSV atomically (a temporary file renamed into place)."""
    with atomic_write(out, "w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for g in grades:
            writer.writerow(g.row())


def summary(grades: Sequence[Grade]) -> str:
    """One line per student: checks passed out of those graded automatically."""
    per: dict[str, list[Grade]] = {}
    for g in grades:
        per.setdefault(g.student, []).append(g)
    lines = []
    for student, rows in per.items():
        auto = [g for g in rows if g.status != "manual"]
        passed = sum(g.status == "pass" for g in auto)
        manual = len(rows) - len(auto)
        lines.append(f"{student}: {passed}/{len(auto)} checks passed"
                     + (f", {manual} exercises to read" if manual else ""))
    return "\n".join(lines)


EXAMPLES = """examples:
  # one folder per student, each with the chapters they hand in
  python -m oralx_lib grade submissions/ --out grades.csv
  # one chapter, files named after the students; cells may run 10 minutes
  python -m oralx_lib grade hw3/*.ipynb --out hw3.csv --timeout 600 --jobs 2
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oralx_lib grade", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Execute students' chapter notebooks in fresh kernels and grade their "
                    "exercises with the self-checks; one CSV row per student, exercise and "
                    "check (pass, fail, error, manual).",
        epilog=EXAMPLES)
    parser.add_argument("submissions", nargs="+",
                        help="notebooks, or folders of them (one sub-folder per student)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--key", nargs="+",
                        help="the chapters with solutions (default: book/ of this checkout)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds per cell before it is interrupted (default: 300)")
    parser.add_argument("--total-timeout", type=float, default=None,
                        help="seconds per submission before it is stopped (default: none)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="submissions graded at the same time (default: 1)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        grades = grade(args.submissions, args.out, key_paths=args.key, timeout=args.timeout,
                       total_timeout=args.total_timeout, jobs=max(1, args.jobs),
                       kernel_name=args.kernel, progress=not args.no_progress)
    except GradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(grades))
    print(f"{len(grades)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
