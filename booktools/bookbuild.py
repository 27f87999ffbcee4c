"""Build the book: execute the chapters (cached, watched), then render them with Jupyter Book.

``python -m booktools.bookbuild`` is what ``make book`` runs; ``--student`` builds the student
edition from the same executed notebooks (``make student``).

Why not let Jupyter Book execute the notebooks itself
------------------------------------------------------
``jupyter-book build .`` with ``execute_notebooks: cache`` works (``_config.yml`` keeps that
setting for anyone who runs it by hand), but on a loaded machine a kernel/client pair can stop
talking: the kernel sits idle, the client waits for a reply that never comes, and the build
hangs until the cell timeout (25 minutes). :mod:`booktools.kernelclient` explains the cause (a
missed wake-up in the client's wait) and removes it. As a second line of defence this builder
runs each chapter with nbclient in a child process and watches the CPU time of that process
tree: a chapter whose processes use (almost) no CPU for ``--stall`` seconds is stopped and run
again (``--retries``). A chapter that raises is reported with its cell and the build fails;
nothing is hidden.

Steps
-----
1. For each notebook ``_toc.yml`` lists: if ``STAGE/<path>`` holds an executed copy whose key
   matches, reuse it; else execute it (working folder: the notebook's own folder, as Jupyter
   Book does; several side by side, ``--jobs``, after the training runs they share, see
   :func:`execute_chapters`) and store it with its key. The key hashes the notebook's cells,
   every ``oralx_lib`` source file, the dataset's annotation files and the profile variables, so
   a rebuild with no change executes nothing (seconds), and a change to the library
   re-executes every chapter.
2. Copy the other book sources (``book/``'s markdown, bibliography, pictures) into ``STAGE`` and
   write ``STAGE/_config.yml``: the root's configuration with ``execute_notebooks: "off"``.
3. ``jupyter-book build STAGE --path-output ROOT`` writes the site to ``ROOT/_build/html``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

import oralx_lib
from oralx_lib.data import dataset_fingerprint
from oralx_lib.errors import ConfigError, OralXError
from oralx_lib.files import atomic_write
from oralx_lib.paths import default_data_root, repo_root

from . import notebooks as _notebooks

#: The folder that holds ``booktools`` (and ``oralx_lib`` in a source checkout): child processes
#: (a chapter's execution, Sphinx loading the student extension) import ``booktools`` from it.
TOOLS_ROOT = Path(__file__).resolve().parent.parent

#: Environment variables that change what a chapter computes (part of the cache key).
KEY_ENV = ("ORALX_PROFILE", "ORALX_DATA", "ORALX_RUNS")
STAGE = Path("_build") / "stage"
KEY_FIELD = "oralx_build_key"


class BookBuildError(OralXError, RuntimeError):
    """A chapter failed to execute, or the Jupyter Book build failed."""


# --------------------------------------------------------------------------- keys

def _hash_files(h, files, base: Path) -> None:
    for f in sorted(files):
        h.update(Path(f).relative_to(base).as_posix().encode())
        h.update(Path(f).read_bytes())


def environment_key(root: Path) -> str:
    """What every chapter depends on besides its own cells: the library's sources, the
    dataset (:func:`oralx_lib.data.dataset_fingerprint`, the project's one rule for "the same
    data") and the profile variables."""
    h = hashlib.sha256()
    lib = Path(oralx_lib.__file__).resolve().parent
    _hash_files(h, lib.rglob("*.py"), lib)
    h.update(dataset_fingerprint(default_data_root()).encode())
    for name in KEY_ENV:
        h.update(f"{name}={os.environ.get(name, '')}".encode())
    return h.hexdigest()


def notebook_key(path: Path, env_key: str) -> str:
    """The cache key of one chapter: its cells' sources and types, their rendering metadata
    (``mystnb``: figure captions and alt texts, which the executed copy carries to the site),
    plus ``env_key``."""
    nb = nbformat.read(path, as_version=4)
    h = hashlib.sha256(env_key.encode())
    for cell in nb.cells:
        h.update(cell.cell_type.encode())
        h.update(cell.source.encode())
        h.update(json.dumps(cell.get("metadata", {}).get("mystnb"), sort_keys=True).encode())
    return h.hexdigest()


def cached_key(path: Path) -> str | None:
    """The key stored in an executed copy (``None`` if absent or unreadable)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - a damaged copy is simply re-executed
        return None
    return nb.metadata.get(KEY_FIELD)


# ---------------------------------------------------------------------- execution

def execute_notebook(src: Path, dst: Path, *, key: str, cell_timeout: int) -> None:
    """Execute ``src`` with nbclient (in this process) and write it to ``dst`` atomically.

    Raises nbclient's ``CellExecutionError`` when a cell raises; ``dst`` is then not written.
    """
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    from .kernelclient import install

    install()  # waits on the kernel's sockets in slices: a missed wake-up costs a second

    nb = nbformat.read(src, as_version=4)
    code = sum(c.cell_type == "code" for c in nb.cells)
    bar = tqdm(total=code, desc=src.stem, unit="cell", file=sys.stderr)

    client = NotebookClient(
        nb, timeout=cell_timeout, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(src.parent)}},
        # ipykernel's capture of the file descriptors is a thread that reads fd 1/2; the site
        # keeps only what Python prints, and one thread fewer leaves less to go wrong.
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
        on_cell_executed=lambda **kw: bar.update(kw["cell"].cell_type == "code"),
    )
    client.execute()
    bar.close()
    nb.metadata[KEY_FIELD] = key
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dst, "w") as handle:
        nbformat.write(nb, handle)


def _tree_cpu(proc) -> float:
    import psutil

    total = 0.0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def _kill_tree(proc) -> None:
    import psutil

    try:
        procs = proc.children(recursive=True) + [proc]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_watched(src: Path, dst: Path, *, key: str, cell_timeout: int, stall: float,
                retries: int, threads: int | None = None) -> float:
    """Execute ``src`` into ``dst`` in a child process, restarting it when its process tree
    stalls (less than 1% of a core for ``stall`` seconds); return the seconds it took.
    ``threads`` sets the kernel's CPU threads (``OMP_NUM_THREADS``, unless already set).

    Raises:
        BookBuildError: the chapter raised (its traceback is above), or it stalled on every try.
    """
    import psutil

    cmd = [sys.executable, "-m", "booktools.bookbuild", "--execute-one", str(src), str(dst),
           "--key", key, "--cell-timeout", str(cell_timeout)]
    for attempt in range(retries + 1):
        start = time.monotonic()
        env = tools_env()
        if threads is not None:
            env.setdefault("OMP_NUM_THREADS", str(threads))
        child = subprocess.Popen(cmd, env=env)
        proc = psutil.Process(child.pid)
        last_cpu, last_time = _tree_cpu(proc), time.monotonic()
        stalled = False
        while child.poll() is None:
            time.sleep(5)
            cpu, now = _tree_cpu(proc), time.monotonic()
            if cpu - last_cpu > 0.01 * (now - last_time) or cpu < last_cpu:
                last_cpu, last_time = cpu, now
            elif now - last_time > stall:
                stalled = True
                _kill_tree(proc)
                break
        child.wait()
        took = time.monotonic() - start
        if not stalled and child.returncode == 0:
            return took
        if not stalled:
            raise BookBuildError(f"{src}: a cell failed (exit {child.returncode}); the cell and "
                                 "its traceback are printed above. Fix the chapter and rebuild.")
        print(f"{src}: no progress for {stall:.0f} s (kernel and client idle); "
              f"restarting it (try {attempt + 2} of {retries + 1})", file=sys.stderr, flush=True)
    raise BookBuildError(f"{src}: stalled on all {retries + 1} tries; run it by hand with "
                         f"`jupyter nbconvert --execute {src}` to see where it stops.")


# ---------------------------------------------------------------------------- tools

def tools_env() -> dict[str, str]:
    """This process's environment with :data:`TOOLS_ROOT` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    parts = [str(TOOLS_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def jupyter_book_command() -> str:
    """The ``jupyter-book`` executable beside this Python, else the one on ``PATH``."""
    local = Path(sys.executable).parent / "jupyter-book"
    found = str(local) if local.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise ConfigError("the jupyter-book command was not found; install the book tools: "
                          "pip install -e '.[book]' (or run make book, which does it).")
    return found


# ---------------------------------------------------------------------------- stage

def stage_sources(root: Path, stage: Path, *, student: bool = False) -> Path:
    """Copy the book's sources other than the executed notebooks into ``stage`` and write its
    ``_config.yml`` (execution off; the student edition's settings with ``student``)."""
    config_path = root / "_config.yml"
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: missing; run from the repository root or pass --root.")
    config = yaml.safe_load(config_path.read_text(encoding="utf8")) or {}
    if student:
        from .student import student_config

        config = student_config(config)
    execute = config.setdefault("execute", {}) or {}
    config["execute"] = execute
    execute["execute_notebooks"] = "off"
    stage.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False)
    _write_if_changed(stage / "_config.yml", text.encode())
    _write_if_changed(stage / "_toc.yml", (root / "_toc.yml").read_bytes())
    for src in (root / "book").rglob("*"):
        if src.is_file() and src.suffix != ".ipynb" and ".ipynb_checkpoints" not in src.parts:
            _write_if_changed(stage / src.relative_to(root), src.read_bytes())
    return stage


def _write_if_changed(path: Path, data: bytes) -> None:
    # unchanged files keep their modification time, so Sphinx rebuilds only what changed
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


#: Each chapter's seconds the last time it executed (orders the next build, longest first).
SECONDS_FILE = Path("_build") / "chapter_seconds.json"


def _previous_seconds(root: Path) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads((root / SECONDS_FILE).read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


#: The models ``run_experiment`` trains (its first argument).
RUN_MODELS = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "moqam")


def chapter_runs(src: Path) -> list[tuple[str, list[str]]]:
    """``(model, keyword names)`` of every ``run_experiment`` call in a chapter's code cells.

    A model given by a variable (``run_experiment(model)`` over a dict of models) is read from
    the model names among the cell's string literals.
    """
    import ast

    asked = []
    for cell in nbformat.read(src, as_version=4).cells:
        if cell.cell_type != "code" or "run_experiment(" not in cell.source:
            continue
        code = "\n".join(line for line in cell.source.splitlines()
                         if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(code)
        literals = [n.value for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and n.value in RUN_MODELS]
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            name = getattr(func, "id", None) or getattr(func, "attr", None)
            if not isinstance(node, ast.Call) or name != "run_experiment":
                continue
            keywords = [k.arg for k in node.keywords]
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant):
                asked.append((first.value, keywords))
            else:
                asked.extend((model, keywords) for model in literals)
    return asked


def default_jobs() -> int:
    """Tasks run side by side: one per CPU core, at most 4, in the CPU profile; one in the GPU
    profile (its chapters share the one device). See
    :func:`oralx_lib.book.experiments.default_jobs`."""
    from oralx_lib.book.experiments import default_jobs as jobs

    return jobs()


def _train_run(model: str) -> float:
    """Train (or reuse) one of the chapters' shared runs in a child process; return seconds."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "oralx_lib.book.experiments", "--models",
                             model, "--jobs", "1", "--quiet"], env=tools_env(), check=False)
    if result.returncode != 0:
        raise BookBuildError(f"the shared run {model!r} failed to train (exit "
                             f"{result.returncode}); its traceback is printed above.")
    return time.monotonic() - start


def execute_chapters(root: Path, stage: Path, *, cell_timeout: int, stall: float,
                     retries: int, keep_going: bool = True, jobs: int = 1,
                     prepare: bool = True) -> dict[str, str]:
    """Execute (or reuse) every notebook ``_toc.yml`` lists into ``stage``; return
    ``{notebook: "cached" | "N s" | "failed"}`` and raise :class:`BookBuildError` if any failed.

    ``jobs`` tasks run side by side, each kernel on ``cores // jobs`` threads. With ``prepare``
    the tasks are the chapters plus the shared runs they ask for (:func:`chapter_runs`, trained
    by :mod:`oralx_lib.book.experiments`, longest first): a chapter starts once its runs are
    finished, so that no chapter waits inside a cell for another's training, and a free slot
    takes a ready chapter (longest first, by the last build's times) while runs still train.
    """
    import threading

    env_key = environment_key(root)
    report: dict[str, str] = {}
    todo = []
    for src in _notebooks.toc_notebooks(root / "_toc.yml"):
        rel = src.relative_to(root)
        dst = stage / rel
        key = notebook_key(src, env_key)
        if cached_key(dst) == key:
            report[str(rel)] = "cached"
        else:
            report[str(rel)] = "failed"  # until it has run
            todo.append((src, rel, dst, key))
    if not todo:
        return report
    from oralx_lib.book.experiments import BOOK_RUNS

    # a run not listed in BOOK_RUNS is left to its chapter (tests/test_book_runs.py: none is)
    needs = {str(rel): ({m for m, _ in chapter_runs(src)} & set(BOOK_RUNS) if prepare else set())
             for src, rel, _, _ in todo}
    wanted = set().union(*needs.values())
    runs = [m for m in BOOK_RUNS if m in wanted]
    previous = _previous_seconds(root)
    # longest first: by the last build's times, else by the number of cells
    todo.sort(key=lambda item: -previous.get(str(item[1]),
                                             len(nbformat.read(item[0], as_version=4).cells)))
    threads = None if jobs <= 1 else max(1, (os.cpu_count() or 1) // jobs)
    failures: list[str] = []
    trained: set[str] = set()
    broken: set[str] = set()
    cond = threading.Condition()
    running = 0

    def run_task(task) -> None:
        kind, item = task
        try:
            if kind == "run":
                print(f"training the shared run {item} (reused if finished)", flush=True)
                took = _train_run(item)
                print(f"shared run {item}: {took:.0f} s", flush=True)
                with cond:
                    trained.add(item)
                return
            src, rel, dst, key = item
            print(f"executing {rel}", flush=True)
            took = run_watched(src, dst, key=key, cell_timeout=cell_timeout, stall=stall,
                               retries=retries, threads=threads)
            with cond:
                report[str(rel)] = f"{took:.0f} s"
                previous[str(rel)] = took
            print(f"{rel}: executed in {took:.0f} s", flush=True)
        except BookBuildError as exc:
            with cond:
                failures.append(str(exc))
                if kind == "run":
                    broken.add(item)
            if kind == "chapter" and item[2].exists():
                item[2].unlink()  # never render a stale copy of a failing chapter

    def pick():
        """The next task that may start now, or None."""
        if failures and not keep_going:
            return None
        if runs:
            return "run", runs.pop(0)
        for i, item in enumerate(todo):
            blocked = needs[str(item[1])] & broken
            if blocked:
                todo.pop(i)
                failures.append(f"{item[1]}: not executed; the shared run(s) {sorted(blocked)} "
                                "failed (above).")
                return pick()
            if needs[str(item[1])] <= trained:
                return "chapter", todo.pop(i)
        return None

    def worker(task) -> None:
        nonlocal running
        try:
            run_task(task)
        finally:
            with cond:
                running -= 1
                cond.notify_all()

    try:
        with cond:
            while True:
                while running < jobs:
                    task = pick()
                    if task is None:
                        break
                    running += 1
                    threading.Thread(target=worker, args=(task,), daemon=True).start()
                if running == 0:
                    break
                cond.wait()
    finally:
        (root / SECONDS_FILE).parent.mkdir(parents=True, exist_ok=True)
        (root / SECONDS_FILE).write_text(json.dumps(previous, indent=1))
    if failures:
        raise BookBuildError("\n".join(failures))
    return report


def render(stage: Path, out_parent: Path, *, warnings_as_errors: bool = False) -> Path:
    """``jupyter-book build STAGE --path-output OUT_PARENT``; return the html folder."""
    cmd = [jupyter_book_command(), "build", str(stage), "--path-output", str(out_parent),
           "--builder", "html", "--keep-going"]
    if warnings_as_errors:
        cmd.append("-W")
    result = subprocess.run(cmd, check=False, env=tools_env())
    html = out_parent / "_build" / "html"
    if result.returncode != 0 or not (html / "index.html").is_file():
        raise BookBuildError(f"jupyter-book build failed (exit {result.returncode}); its "
                             "messages are above.")
    return html


def build(root: Path | None = None, *, student: bool = False, cell_timeout: int = 1500,
          stall: float = 180.0, retries: int = 2, warnings_as_errors: bool = False,
          jobs: int | None = None, execute_only: bool = False) -> Path:
    """Execute the chapters (cached, ``jobs`` side by side) and render the site; return the
    html folder (with ``execute_only``: execute, render nothing, return the stage folder).

    The main site goes to ``ROOT/_build/html``. With ``student``, the student edition goes to
    ``ROOT/_build/student/html`` (solutions removed, see :mod:`booktools.student`) and the
    solution-free notebooks to ``ROOT/_build/student/notebooks``.
    """
    root = (root or repo_root() or Path.cwd()).resolve()
    stage = root / STAGE
    t0 = time.monotonic()
    report = execute_chapters(root, stage, cell_timeout=cell_timeout, stall=stall,
                              retries=retries, jobs=jobs or default_jobs())
    (root / "_build").mkdir(exist_ok=True)
    (root / "_build" / "execution.json").write_text(json.dumps(report, indent=1))
    if execute_only:
        print("chapters: " + ", ".join(f"{k} ({v})" for k, v in report.items()))
        print(f"executed copies: {stage} ({time.monotonic() - t0:.0f} s)")
        return stage
    if student:
        from .student import write_student_notebooks

        out = root / "_build" / "student"
        student_stage = root / "_build" / "stage-student"
        stage_sources(root, student_stage, student=True)
        for nb in stage.rglob("*.ipynb"):
            _write_if_changed(student_stage / nb.relative_to(stage), nb.read_bytes())
        html = render(student_stage, out, warnings_as_errors=warnings_as_errors)
        final = out / "html"
        if html != final:
            if final.exists():
                shutil.rmtree(final)
            shutil.move(str(html), final)
        written = write_student_notebooks(root / "book", out / "notebooks")
        print(f"{len(written)} solution-free notebooks in {out / 'notebooks'}")
        html = final
    else:
        stage_sources(root, stage)
        html = render(stage, root, warnings_as_errors=warnings_as_errors)
    print("chapters: " + ", ".join(f"{k} ({v})" for k, v in report.items()))
    print(f"site: {html / 'index.html'} ({time.monotonic() - t0:.0f} s)")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m booktools.bookbuild",
        description="Execute the book's chapters (cached, restarted when a kernel stalls) and "
                    "build the site to _build/html (--student: _build/student).")
    parser.add_argument("--root", type=Path, default=None,
                        help="repository root, the folder of _config.yml (default: this checkout)")
    parser.add_argument("--student", action="store_true",
                        help="build the student edition (solutions hidden) to _build/student")
    parser.add_argument("--cell-timeout", type=int, default=1500,
                        help="seconds one cell may run (default 1500)")
    parser.add_argument("--stall", type=float, default=180.0,
                        help="restart a chapter whose processes use no CPU for this many seconds")
    parser.add_argument("--retries", type=int, default=2, help="restarts after a stall")
    parser.add_argument("--jobs", type=int, default=None,
                        help="chapters (and shared runs) executed side by side (default: one per "
                             "CPU core, at most 4)")
    parser.add_argument("--execute-only", action="store_true",
                        help="execute the chapters into _build/stage (what make test checks); "
                             "render nothing")
    parser.add_argument("-W", dest="warnings_as_errors", action="store_true",
                        help="turn Sphinx warnings into errors")
    parser.add_argument("--execute-one", nargs=2, metavar=("SRC", "DST"), type=Path,
                        help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.execute_one:
        src, dst = args.execute_one
        from nbclient.exceptions import CellExecutionError

        try:
            execute_notebook(src, dst, key=args.key, cell_timeout=args.cell_timeout)
        except CellExecutionError as exc:
            print(f"{src}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        build(args.root, student=args.student, cell_timeout=args.cell_timeout,
              stall=args.stall, retries=args.retries,
              warnings_as_errors=args.warnings_as_errors, jobs=args.jobs,
              execute_only=args.execute_only)
    except OralXError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
