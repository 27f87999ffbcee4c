"""oralx_lib.book.reference: reading the reference runs back, and the verdict rule."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from oralx_lib.book import reference


def _record(arm, seed, ap, aps, rare, reason="plateau", proposals=True):
    block = {"AP": ap, "AP50": 2 * ap, "APs": aps, "APm": ap, "rare_AP": rare,
             "frequent_AP": ap, "per_class_AP": {"Implant": rare, "Decay": ap}}
    return {
        "arm": arm, "seed": seed,
        "stopping": {"reason": reason, "steps": 800, "best_step": 640},
        "val_curve": [{"step": 160, "AP": ap / 2}, {"step": 320, "AP": ap}],
        "final": {"test": block,
                  "proposals_val": ({"images": 20, "recall": 0.5,
                                     "recall_by_size": {"<8": {"count": 3, "recall": 0.1}},
                                     "median_proposal_wh": [30.0, 20.0],
                                     "median_gt_wh": [33.0, 36.0], "collapsed": False}
                                    if proposals else None)},
        "sessions": [{"command": "python benchmarks/reference_runs.py", "commit": "a" * 40,
                      "cpu": "AMD EPYC", "cpu_count": 2, "wall_s": 3600.0}],
    }


def _write(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        (folder / f"{r['arm']}_seed{r['seed']}.json").write_text(json.dumps(r))
    return folder


def test_verdict_rule():
    assert reference.verdict([0.1]) == "not yet decided"
    assert reference.verdict([0.1, 0.1]) == "not yet decided"
    assert reference.verdict([0.10, 0.11, 0.09]) == "confirmed"
    assert reference.verdict([-0.10, -0.11, -0.09]) == "reversed"
    # a mean difference that three seeds' spread cannot separate from zero
    assert reference.verdict([0.10, -0.08, 0.01]) == "not confirmed"
    # t = 2.0 is below the one-sided 95 % point for 2 degrees of freedom (2.92)
    assert reference.verdict([1.0, 2.0, 0.0]) == "not confirmed"


def test_load_compare_and_tables(tmp_path):
    folder = _write(tmp_path / "ref", [
        _record("baseline", s, 0.10 + 0.01 * s, 0.05, 0.02) for s in range(3)] + [
        _record("di_rpn", s, 0.12 + 0.01 * s, 0.08 + 0.001 * s, 0.02) for s in range(3)] + [
        _record("cb_scr", 0, 0.09, 0.05, 0.03)])
    ref = reference.load(folder)
    assert ref.arms == ["baseline", "cb_scr", "di_rpn"]
    small = reference.compare(ref, "di_rpn_small")
    assert small.n == 3 and small.verdict == "confirmed"
    assert small.mean_diff == pytest.approx(0.031)
    assert "confirmed on this benchmark" in small.sentence()
    rare = reference.compare(ref, "cb_scr_rare")
    assert rare.n == 1 and rare.verdict == "not yet decided"
    assert "not yet a verdict" in rare.sentence()
    both = reference.compare(ref, "both")
    assert both.n == 0 and both.verdict == "not measured"
    assert "no reference run of moqam_rcnn is recorded" in both.sentence()
    table = reference.claims_table(ref)
    assert table.loc[small.claim, "verdict"] == "confirmed"
    arms = reference.arms_table(ref, ["baseline", "cb_scr"])
    assert arms.loc["cb_scr", "seeds"] == 1 and arms.loc["baseline", "stopped by"].count("/") == 2
    props = reference.proposal_table(ref, ["baseline"])
    assert props.loc["baseline", "recall <8 px"] == pytest.approx(0.1)
    assert not props.loc["baseline", "collapsed"]
    classes = reference.per_class_table(ref, ["baseline", "cb_scr"])
    assert classes.loc["Implant", "cb_scr"] == pytest.approx(0.03)
    prov = reference.provenance_table(ref, ["cb_scr"])
    assert prov.loc["cb_scr seed 0", "wall h"] == 1.0
    assert prov.loc["cb_scr seed 0", "hardware"] == "AMD EPYC x2"  # older records: no capability
    record = json.loads((folder / "cb_scr_seed0.json").read_text())
    record["sessions"][0]["cpu_capability"] = "AVX512"
    (folder / "cb_scr_seed0.json").write_text(json.dumps(record))
    prov = reference.provenance_table(reference.load(folder), ["cb_scr"])
    assert prov.loc["cb_scr seed 0", "hardware"] == "AMD EPYC x2 (AVX512)"
    assert "moqam" in reference.missing_message(["baseline", "moqam"], ref)
    assert reference.missing_message(["baseline"], ref) == ""


def test_a_verdict_on_capped_runs_says_so(tmp_path):
    folder = _write(tmp_path, [
        _record("baseline", s, 0.10, 0.05 + 0.001 * s, 0.02, reason="max_steps") for s in range(3)] + [
        _record("di_rpn", s, 0.12, 0.08, 0.02, reason="plateau" if s else "max_steps")
        for s in range(3)] + [_record("fixed_055", s, 0.1, 0.05, 0.02) for s in range(3)])
    ref = reference.load(folder)
    small = reference.compare(ref, "di_rpn_small")
    assert small.verdict == "confirmed"
    assert len(small.capped_in_pairs) == 4
    assert "at this training budget" in small.sentence()
    assert "4 of these 6 runs stopped at their step cap (800 steps)" in small.sentence()
    adaptive = reference.compare(ref, "size_adaptive")  # di_rpn seed 0 is capped
    assert "1 of these 6 runs" in adaptive.sentence()
    # plateaued runs only: no qualifier
    folder2 = _write(tmp_path / "p", [_record(a, s, 0.1, 0.05, 0.02) for a in ("baseline", "di_rpn")
                                      for s in range(3)])
    sentence = reference.compare(reference.load(folder2), "di_rpn_small").sentence()
    assert "step cap" not in sentence and "budget" not in sentence


def test_load_missing_and_broken(tmp_path):
    assert reference.load(tmp_path / "absent") is None
    assert reference.load(tmp_path) is None
    assert reference.COMMAND in reference.missing_message(["baseline"], None)
    (tmp_path / "baseline_seed0.json").write_text("{not json")
    with pytest.raises(ValueError, match="baseline_seed0.json"):
        reference.load(tmp_path)
    (tmp_path / "baseline_seed0.json").write_text(json.dumps({"arm": "baseline"}))
    with pytest.raises(ValueError, match="'seed'"):
        reference.load(tmp_path)


def test_nan_metrics_are_left_out(tmp_path):
    rec = _record("baseline", 0, 0.1, float("nan"), 0.0)
    folder = _write(tmp_path, [rec])
    ref = reference.load(folder)
    assert reference.metric_values(ref, "baseline", "APs") == {}
    assert reference.metric_values(ref, "baseline", "AP") == {0: 0.1}


def test_plot_curves_marks_every_run(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    folder = _write(tmp_path, [_record("baseline", s, 0.1, 0.05, 0.02) for s in range(2)])
    ax = reference.plot_curves(reference.load(folder), ["baseline"])
    assert len(ax.lines) == 2 * 3  # per run: the curve, its best point, where it stopped


def test_plot_curves_without_runs_names_the_command():
    import matplotlib

    matplotlib.use("Agg")
    ax = reference.plot_curves(None, ["baseline", "di_rpn"])
    assert not ax.lines and reference.COMMAND in ax.texts[0].get_text()


def test_a_moved_checkout_keeps_its_book_runs():
    """The chapters' cached runs are reused when only where they (or the data) live changed."""
    from oralx_lib.book.experiments import same_training

    saved = {"model": "faster_rcnn", "lr": 0.001, "out_dir": "/home/a/oralx/runs/book/x",
             "data_root": "/home/a/oralx/data/synthetic"}
    moved = {**saved, "out_dir": "/tmp/ci/runs/book/x", "data_root": "/tmp/ci/data/synthetic"}
    assert same_training(saved, moved)
    assert not same_training(saved, {**moved, "lr": 0.002})
    assert not same_training(saved, {**moved, "seed": 1})


def test_claim_arms_lists_every_compared_arm_once():
    arms = reference.claim_arms()
    assert len(arms) == len(set(arms))
    assert {a for c in reference.CLAIMS.values() for a in (c["arm"], c["against"])} == set(arms)


def test_same_seed_pairs(tmp_path):
    def with_losses(record, losses):
        record["loss_curve"] = [{"step": 10 * (i + 1), "loss": x} for i, x in enumerate(losses)]
        return record

    folder = _write(tmp_path / "ref", [
        with_losses(_record("di_rpn", 0, 0.20, 0.10, 0.05), [1.5, 1.0, 0.9]),
        with_losses(_record("fixed_055", 0, 0.20, 0.10, 0.05), [1.5, 1.0, 0.9]),
        with_losses(_record("di_rpn", 1, 0.18, 0.12, 0.04), [1.4, 1.1, 0.8]),
        with_losses(_record("fixed_055", 1, 0.20, 0.15, 0.06), [1.4, 1.2, 0.7]),
        with_losses(_record("di_rpn", 2, 0.20, 0.10, 0.05), [1.3]),  # no fixed_055 seed 2
    ])
    table = reference.same_seed_pairs(reference.load(folder), "di_rpn", "fixed_055")
    assert list(table.index) == [0, 1]
    assert bool(table.loc[0, "identical loss curve"]) and pd.isna(table.loc[0, "first different step"])
    assert not table.loc[1, "identical loss curve"] and table.loc[1, "first different step"] == 20
    assert str(table["first different step"].dtype) == "Int64"  # steps print as integers
    assert table.loc[0, "APs difference"] == 0.0
    assert table.loc[1, "APs difference"] == pytest.approx(-0.03)
    assert table.loc[1, "rare_AP difference"] == pytest.approx(-0.02)


def test_paired_table_reads_each_arm_on_its_own_seeds(tmp_path):
    folder = _write(tmp_path / "ref", [
        _record("baseline", s, 0.10 + 0.01 * s, 0.05, 0.02 + 0.01 * s) for s in range(3)] + [
        _record("cb_scr", s, 0.09 + 0.01 * s, 0.05, 0.04 + 0.01 * s) for s in range(3)] + [
        _record("cb_scr_w0.1", 1, 0.5, 0.05, 0.3),
        _record("cb_scr_t0.5", 7, 0.5, 0.05, 0.3)])  # no seed shared with the others
    ref = reference.load(folder)
    table = reference.paired_table(ref, ["cb_scr", "cb_scr_w0.1", "cb_scr_t0.5"])
    assert list(table.index) == ["cb_scr", "cb_scr_w0.1"]
    assert table.loc["cb_scr", "seeds"] == "0/1/2"
    assert table.loc["cb_scr", "AP"] == pytest.approx(0.10)
    assert table.loc["cb_scr", "AP baseline"] == pytest.approx(0.11)
    # the numbers are numbers (a rounded table shows them rounded), the seeds text
    assert table.round(1).loc["cb_scr", "AP baseline"] == pytest.approx(0.1)
    # the one-seed arm is read against seed 1 of the others, not their mean over 3 seeds
    row = table.loc["cb_scr_w0.1"]
    assert row["seeds"] == "1"
    assert row["AP"] == pytest.approx(0.5) and row["rare_AP"] == pytest.approx(0.3)
    assert row["AP cb_scr"] == pytest.approx(0.10) and row["rare_AP cb_scr"] == pytest.approx(0.05)
    assert row["AP baseline"] == pytest.approx(0.11) and row["rare_AP baseline"] == pytest.approx(0.03)
    assert reference.paired_table(ref, ["cb_scr_t0.5"]) is None
    assert reference.paired_table(None, ["cb_scr"]) is None


def test_compare_arms_pairs_any_two_arms(tmp_path):
    folder = _write(tmp_path / "ref", [
        _record("baseline", s, 0.10, 0.05, 0.02 + 0.01 * s) for s in range(3)] + [
        _record("cb_scr_w0.1", s, 0.12, 0.05, 0.05 + 0.01 * s + 0.001 * (s == 1),
                reason="max_steps") for s in range(3)] + [
        _record("cb_scr_w0.5", 0, 0.12, 0.05, 0.05)])
    ref = reference.load(folder)
    rare = reference.compare_arms(ref, "cb_scr_w0.1", "baseline", "rare_AP")
    assert rare.seeds == [0, 1, 2] and rare.mean_diff == pytest.approx(0.030333, abs=1e-5)
    assert rare.verdict == "confirmed"
    assert "cb_scr_w0.1 improves rare_AP over baseline is confirmed" in rare.sentence()
    assert "3 of these 6 runs stopped at their step cap" in rare.sentence()
    one = reference.compare_arms(ref, "cb_scr_w0.5", "baseline", "AP", claim="w0.5 helps")
    assert one.n == 1 and one.verdict == "not yet decided"
    assert "not yet a verdict on the claim that w0.5 helps" in one.sentence()
    # the paper's claims are the same comparison under a name
    claim = reference.compare(ref, "cb_scr_rare")
    assert claim.key == "cb_scr_rare" and claim.n == 0 and claim.verdict == "not measured"
    assert reference.compare_arms(None, "cb_scr", "baseline", "AP").verdict == "not measured"


def test_tiled_reading_follows_the_numbers(tmp_path):
    def with_tiled(record, ap):
        record["final"]["test_tiled"] = {**record["final"]["test"], "AP": ap,
                                         "num_images": 153, "tile": {"tile": 384, "overlap": 192}}
        return record

    assert "--final-tile 384" in reference.tiled_reading(None)
    base = [_record("moqam_rcnn", s, 0.17, 0.1, 0.05) for s in range(3)]
    ahead = _write(tmp_path / "a", base + [with_tiled(_record("moqam", 2, 0.03, 0.01, 0.05), 0.20),
                                           _record("moqam", 0, 0.02, 0.01, 0.05)])
    text = reference.tiled_reading(reference.load(ahead))
    assert "seed 2" in text and "0.200 against 0.030" in text and "0.170 on whole images" in text
    assert "from -0.140 on whole images to +0.030" in text and "not from the design" in text
    assert "not scored with windows" in text and "a direction, not a verdict" in text
    behind = _write(tmp_path / "b", base + [with_tiled(_record("moqam", s, 0.03, 0.01, 0.05), 0.10)
                                            for s in range(3)])
    text = reference.tiled_reading(reference.load(behind))
    assert "3 seeds" in text and "reduce the deficit but do not remove it" in text
    assert "not a verdict" not in text and "not from the design" not in text
    none = _write(tmp_path / "c", base + [with_tiled(_record("moqam", 5, 0.03, 0.01, 0.05), 0.1)])
    assert "share no seed" in reference.tiled_reading(reference.load(none))
    # a control scored with windows too is compared with windows
    both = _write(tmp_path / "d", [with_tiled(_record("moqam_rcnn", 0, 0.17, 0.1, 0.05), 0.25),
                                   with_tiled(_record("moqam", 0, 0.03, 0.01, 0.05), 0.20)])
    text = reference.tiled_reading(reference.load(both))
    assert "0.250 with the same windows" in text and "with windows on both sides" in text
    assert "reduce the deficit but do not remove it" in text
