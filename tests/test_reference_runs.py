"""The reference-run runner (benchmarks/reference_runs.py): its stopping rule by hand, and an
end-to-end smoke run with a tiny budget that is resumed, skipped when done, and continued."""

from __future__ import annotations

import json

import pytest

from oralx_lib.errors import ConfigError


@pytest.fixture(scope="module")
def runner(load_benchmark):
    return load_benchmark("reference_runs")


def test_plateau_rule_by_hand(runner):
    rule = runner.plateau_reached
    # patience 2, eps 0.01: the last two must not beat the best before them by more than 0.01
    assert not rule([0.1, 0.2], 2, 0.01)  # nothing before the window yet
    assert not rule([0.1, 0.2, 0.3], 2, 0.01)  # 0.3 > 0.1 + 0.01
    assert rule([0.1, 0.3, 0.305, 0.29], 2, 0.01)  # 0.305 <= 0.3 + 0.01
    assert not rule([0.1, 0.3, 0.305, 0.32], 2, 0.01)  # 0.32 > 0.31
    assert rule([0.5, 0.1, 0.2], 2, 0.0)  # a drop after the best
    with pytest.raises(ConfigError):
        rule([0.1], 0, 0.0)
    curve = [{"AP": a} for a in (0.1, 0.3, 0.3)]
    assert runner.stop_reason(curve, 100, 1000, 1, 0.0) == "plateau"
    assert runner.stop_reason(curve[:2], 100, 1000, 1, 0.0) is None
    assert runner.stop_reason(curve[:2], 1000, 1000, 1, 0.0) == "max_steps"


def test_arms_are_the_issue_s_and_build(runner):
    from oralx_lib.models import build_model

    assert {"baseline", "di_rpn", "di_rpn_unclamped", "fixed_055", "cb_scr", "moqam_rcnn",
            "moqam"} <= set(runner.ARMS)
    assert sum(a["model"] == "cb_scr" for a in runner.ARMS.values()) >= 3  # released + sweep
    for arm in runner.ARMS.values():
        if arm["model"] != "moqam":  # every option is one build_model accepts
            build_model(arm["model"], backbone="resnet18", representation_size=16,
                        **arm["options"])


@pytest.mark.slow  # trains 4 + 2 steps of a tiny model and evaluates it (about a minute)
def test_smoke_run_resumes_skips_and_continues(runner, tmp_path):
    from oralx_lib.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", train=4, val=2, test=2, seed=0, width=256,
                            height=145, progress=False)
    out, runs = tmp_path / "results", tmp_path / "runs"
    base = ["--arms", "baseline", "--seeds", "0", "--profile", "tiny", "--data", str(data),
            "--epoch-steps", "2", "--eval-every", "1", "--patience", "5", "--warmup", "0",
            "--plateau-val-images", "2", "--proposal-images", "2", "--checkpoint-every", "1",
            "--log-every", "1", "--threads", "1", "--out", str(out), "--runs", str(runs),
            "--no-progress"]
    assert runner.main(base + ["--max-steps", "4"]) == 0
    record = json.loads((out / "baseline_seed0.json").read_text())
    assert record["stopping"]["reason"] == "max_steps" and record["stopping"]["steps"] == 4
    assert [c["step"] for c in record["val_curve"]] == [2, 4]
    assert [r["step"] for r in record["loss_curve"]] == [1, 2, 3, 4]
    assert {"loss_objectness", "loss_classifier"} <= set(record["loss_curve"][0]["losses"])
    final = record["final"]
    for split in ("val", "test"):
        assert {"AP", "AP50", "APs", "APm", "per_class_AP", "rare_AP"} <= set(final[split])
        assert final[split]["num_images"] == 2
    props = final["proposals_val"]
    assert props["images"] == 2 and len(props["median_proposal_wh"]) == 2
    assert sum(b["count"] for b in props["recall_by_size"].values()) > 0
    assert record["sessions"][0]["commit"] and record["sessions"][0]["cpu"]
    assert record["wall_s_total"] > 0 and len(record["rare_classes"]) == 3
    def strict(name):
        raise AssertionError(f"summary.json holds {name}: not JSON")

    summary = json.loads((out / "summary.json").read_text(), parse_constant=strict)
    assert summary["summary"]["baseline"]["seeds"] == [0]
    assert summary["summary"]["baseline"]["test"]["AP"]["std"] is None  # one seed: no spread

    # the same command again: the rule already holds, nothing is trained
    last = runs / "baseline_seed0" / "last.pt"
    stamp = last.stat().st_mtime_ns
    assert runner.main(base + ["--max-steps", "4"]) == 0
    assert last.stat().st_mtime_ns == stamp
    again = json.loads((out / "baseline_seed0.json").read_text())
    assert len(again["sessions"]) == 2 and again["sessions"][1]["started_at_step"] == 4

    # a higher cap continues from the checkpoint (steps 5-6 only)
    assert runner.main(base + ["--max-steps", "6"]) == 0
    more = json.loads((out / "baseline_seed0.json").read_text())
    assert [c["step"] for c in more["val_curve"]] == [2, 4, 6]
    assert more["sessions"][-1]["started_at_step"] == 4 and more["stopping"]["steps"] == 6
    # the first four steps were not trained again: their logged losses are unchanged
    assert more["loss_curve"][:4] == record["loss_curve"]

    # --final-tile evaluates the recorded checkpoint again with sliding windows, trains nothing,
    # and keeps the whole-image numbers it already had
    stamp = last.stat().st_mtime_ns
    assert runner.main(base + ["--max-steps", "6", "--final-tile", "64"]) == 0
    assert last.stat().st_mtime_ns == stamp
    tiled = json.loads((out / "baseline_seed0.json").read_text())
    for split in ("val", "test"):
        assert tiled["final"][split] == more["final"][split]
        block = tiled["final"][f"{split}_tiled"]
        assert block["tile"] == {"tile": 64, "overlap": 32} and block["num_images"] == 2
        assert {"AP", "APs", "rare_AP", "per_class_AP"} <= set(block)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["baseline"]["test_tiled"]["AP"]["values"] == [
        tiled["final"]["test_tiled"]["AP"]]
    # another overlap is measured again; the same settings are read from the cache
    assert runner.main(base + ["--max-steps", "6", "--final-tile", "64",
                               "--final-tile-overlap", "16"]) == 0
    other = json.loads((out / "baseline_seed0.json").read_text())
    assert other["final"]["test_tiled"]["tile"] == {"tile": 64, "overlap": 16}
    for bad in (["--final-tile", "-1"], ["--final-tile-overlap", "8"],
                ["--final-tile", "64", "--final-tile-overlap", "64"]):
        with pytest.raises(ConfigError, match="final-tile"):
            runner.parse_args(base + bad)

    # --summary-only trains nothing and rebuilds summary.json from the recorded files
    (out / "summary.json").unlink()
    stamp = last.stat().st_mtime_ns
    assert runner.main(base + ["--max-steps", "8", "--summary-only"]) == 0
    assert last.stat().st_mtime_ns == stamp
    rebuilt = json.loads((out / "summary.json").read_text())
    assert rebuilt["summary"]["baseline"]["stopped_at_steps"] == [6]

    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="lr"):
        runner.main(base + ["--max-steps", "6", "--lr", "1e-3"])
