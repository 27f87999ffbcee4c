"""The chapters' shared runs: which ones the chapters ask for, training them side by side
(:func:`oralx_lib.book.experiments.prepare_runs`) and the lock that makes one process wait for
another that trains the same run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from oralx_lib.book import experiments

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "moqam"}


def _asked_runs(path: Path) -> list[tuple[str, list[str]]]:
    """``(model, keyword names)`` of every ``run_experiment`` call in a notebook's code; a
    model given by a variable is read from the model names among the cell's string literals."""
    asked = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or "run_experiment(" not in cell.source:
            continue
        code = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
        tree = ast.parse(code)
        literals = [n.value for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and n.value in MODELS]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_experiment"
                    or isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "run_experiment"):
                keywords = [k.arg for k in node.keywords]
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant):
                    asked.append((first.value, keywords))
                else:
                    asked.extend((m, keywords) for m in literals)
    return asked


def test_the_chapters_ask_for_exactly_the_prepared_runs():
    asked = [run for nb in sorted((ROOT / "book").glob("*.ipynb")) for run in _asked_runs(nb)]
    assert asked, "no chapter calls run_experiment: the parser above no longer sees them"
    # at their defaults (seed 0, no overrides): what prepare_runs trains is what they reuse
    assert all(not keywords or keywords == ["progress"] for _, keywords in asked), asked
    assert {model for model, _ in asked} == set(experiments.BOOK_RUNS)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("kind") == "train"]


@pytest.mark.slow
def test_runs_side_by_side_equal_a_run_alone_and_are_reused(tmp_path, monkeypatch):
    from oralx_lib.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", train=2, val=1, test=0, seed=0, width=256,
                            height=145, progress=False)
    short = dict(profile="tiny", data=str(data), epochs=1, max_iters_per_epoch=2, val_subset=1,
                 warmup_iters=0)
    monkeypatch.setenv("ORALX_RUNS", str(tmp_path / "alone"))
    alone = experiments.run_experiment("faster_rcnn", progress=False, **short)
    assert alone.config.num_threads == 1  # the book's CPU schedule fixes it

    monkeypatch.setenv("ORALX_RUNS", str(tmp_path / "side"))
    done = experiments.prepare_runs(("faster_rcnn", "di_rpn"), jobs=2, progress=False, **short)
    assert set(done) == {"faster_rcnn-tiny-s0", "di_rpn-tiny-s0"}
    side = tmp_path / "side" / "book"
    assert _losses(side / "faster_rcnn-tiny-s0") == _losses(alone.out_dir)
    assert len(_losses(side / "di_rpn-tiny-s0")) == len(_losses(alone.out_dir)) > 0

    stamp = (side / "di_rpn-tiny-s0" / "last.pt").stat().st_mtime_ns
    again = experiments.prepare_runs(("faster_rcnn", "di_rpn"), jobs=1, progress=False, **short)
    assert (side / "di_rpn-tiny-s0" / "last.pt").stat().st_mtime_ns == stamp  # reused
    assert max(again.values()) < min(done.values())


def test_a_second_process_waits_for_the_run_lock(tmp_path):
    out = tmp_path / "runs" / "book" / "x"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from oralx_lib.book.experiments import run_lock
        print("ready", flush=True)
        with run_lock(Path({str(out)!r})):
            print("got", time.time(), flush=True)
    """)
    with experiments.run_lock(out, progress=False):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 text=True, cwd=ROOT)
        assert child.stdout.readline().strip() == "ready"  # imported, about to ask for the lock
        time.sleep(2)
        assert child.poll() is None  # still waiting
        released = time.time()
    stdout = child.communicate(timeout=60)[0]
    assert child.returncode == 0
    assert "waiting for another process that trains" in stdout
    assert float(stdout.split("got")[1].split()[0]) >= released
