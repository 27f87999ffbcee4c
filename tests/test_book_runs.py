"""The chapters' shared runs: which ones the chapters ask for, training them side by side
(:func:`oralx_lib.book.experiments.prepare_runs`) and the lock that makes one process wait for
another that trains the same run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from booktools import bookbuild
from oralx_lib.book import experiments

ROOT = Path(__file__).resolve().parent.parent


def test_the_chapters_ask_for_exactly_the_prepared_runs():
    asked = [run for nb in sorted((ROOT / "book").glob("*.ipynb"))
             for run in bookbuild.chapter_runs(nb)]
    assert asked, "no chapter calls run_experiment: the parser above no longer sees them"
    # at their defaults (seed 0, no overrides): what prepare_runs trains is what they reuse
    assert all(not keywords or keywords == ["progress"] for _, keywords in asked), asked
    assert {model for model, _ in asked} == set(experiments.BOOK_RUNS)
    assert set(bookbuild.RUN_MODELS) >= set(experiments.BOOK_RUNS)


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


def _side_by_side(code: str, env: dict, n: int = 2) -> list[str]:
    """Run ``code`` in ``n`` Python processes at once; return their last output lines."""
    import os

    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 env={**os.environ, **env}) for _ in range(n)]
    lines = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        lines.append(out.strip().splitlines()[-1])
    return lines


@pytest.mark.slow
def test_two_processes_evaluate_a_run_once_and_read_the_same_numbers(tmp_path):
    from oralx_lib.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", train=2, val=2, test=0, seed=0, width=256,
                            height=145, progress=False)
    code = textwrap.dedent(f"""
        import json
        from oralx_lib.book.experiments import run_experiment
        run = run_experiment("faster_rcnn", profile="tiny", data={str(data)!r}, epochs=1,
                             max_iters_per_epoch=1, val_subset=1, warmup_iters=0,
                             progress=False)
        print(json.dumps(run.evaluate("val")["AP"]))
    """)
    first, second = _side_by_side(code, {"ORALX_RUNS": str(tmp_path / "runs")})
    assert first == second
    run = tmp_path / "runs" / "book" / "faster_rcnn-tiny-s0"
    assert json.loads((run / "eval_val_100.json").read_text())["AP"] == json.loads(first)
    assert isinstance(json.loads((run / "detections_val_100.json").read_text()), list)
    assert len(_losses(run)) == 1  # trained once, not twice


@pytest.mark.slow
def test_two_processes_write_a_synthetic_set_once(tmp_path):
    root = tmp_path / "set"
    code = textwrap.dedent(f"""
        from oralx_lib.data import OralXrays9, ensure_synthetic
        ensure_synthetic({str(root)!r}, train=3, val=2, test=1, width=256, height=145,
                         progress=False)
        print(len(OralXrays9({str(root)!r}, "train")), len(OralXrays9({str(root)!r}, "test")))
    """)
    assert _side_by_side(code, {}) == ["3 1", "3 1"]
    assert sorted(p.name for p in root.rglob("*.tmp")) == []
