"""The command line end to end on a tiny set: train -> evaluate -> predict; errors exit 2."""

import json
import subprocess
import sys

import pytest
import torch
from test_engine import FAST_MODEL, make_tiny_set

from oralx_lib import CLASSES
from oralx_lib.cli import FORWARDED, main, parse_set
from oralx_lib.errors import ConfigError


def test_parse_set_reads_json_values_and_model_overrides():
    assert parse_set(["lr=1e-4", "val_split=null", "lr_milestones=[8,11]", "model=di_rpn",
                      "pretrained_backbone=false", "model_overrides.min_size=320"]) == {
        "lr": 1e-4, "val_split": None, "lr_milestones": [8, 11], "model": "di_rpn",
        "pretrained_backbone": False, "model_overrides": {"min_size": 320}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["lr"])
    with pytest.raises(ConfigError, match="model_overrides.KEY"):
        parse_set(["optimizer.lr=1"])


def test_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", *FORWARDED):
        assert command in text
    for command in ("train", "evaluate", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        sub_help = capsys.readouterr().out
        assert "examples:" in sub_help and "python -m oralx_lib" in sub_help


def test_data_tools_receive_the_remaining_arguments(monkeypatch):
    import oralx_lib.data.real as download

    seen = []
    monkeypatch.setattr(download, "verify_main", lambda argv: seen.append(argv) or 3)
    assert main(["verify", "data/x", "--no-images"]) == 3
    assert seen == [["data/x", "--no-images"]]


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config field") and "Traceback" not in err
    code = main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--out",
                 str(tmp_path / "m.json")])
    assert code == 2 and "missing.pt: no checkpoint" in capsys.readouterr().err
    code = main(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nowhere"),
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "oralx_lib", "predict", "--checkpoint",
                           str(tmp_path / "none.pt"), "x.png", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    root = make_tiny_set(tmp_path / "data")
    out = tmp_path / "run"
    overrides = [f"model_overrides.{k}={json.dumps(v)}" for k, v in FAST_MODEL.items()]
    code = main(["train", "--model", "faster_rcnn", "--backbone", "mobilenet_v3", "--data",
                 str(root), "--out", str(out), "--epochs", "1", "--profile", "tiny",
                 "--device", "cpu", "--no-progress", "--set", "max_iters_per_epoch=2",
                 "num_threads=1", "eval_max_dets=20", *overrides])
    assert code == 0, capsys.readouterr().err
    assert "best val AP" in capsys.readouterr().out
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    stored = torch.load(out / "last.pt", weights_only=True)["config"]
    assert stored["max_iters_per_epoch"] == 2 and stored["model_overrides"]["min_size"] == 96

    code = main(["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "val", "--out",
                 str(tmp_path / "val.json"), "--max-dets", "20", "--device", "cpu",
                 "--no-progress", "--detections", str(tmp_path / "dets.json"),
                 "--release-protocol"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "COCO, maxDets 20" in printed and "release: 300 per image" in printed
    report = json.loads((tmp_path / "val.json").read_text())
    assert report["metrics"]["release"]["max_dets"] == {
        "AP": 100, "AP50": 1000, "AP75": 1000, "APs": 1000, "APm": 1000, "APl": 1000,
        "AR100": 100, "AR300": 300, "AR1000": 1000, "ARs": 1000, "ARm": 1000, "ARl": 1000}
    assert report["split"] == "val" and report["data"] == str(root)  # taken from the checkpoint
    logged = json.loads((out / "summary.json").read_text())["history"][0]["val_AP"]
    assert report["metrics"]["AP"] == pytest.approx(logged, abs=1e-9)
    assert set(report["metrics"]["per_class_AP"]) == set(CLASSES)
    assert isinstance(json.loads((tmp_path / "dets.json").read_text()), list)

    # sliding-window inference: the same checkpoint on 64 x 64 windows of its 96-pixel input
    code = main(["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "val", "--out",
                 str(tmp_path / "val_tiled.json"), "--max-dets", "20", "--device", "cpu",
                 "--no-progress", "--tile", "64", "--tile-overlap", "24"])
    assert code == 0
    tiled = json.loads((tmp_path / "val_tiled.json").read_text())
    assert tiled["tile"] == {"tile": 64, "overlap": 24} and report["tile"] is None
    assert tiled["metrics"]["num_images"] == report["metrics"]["num_images"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--out",
                 str(tmp_path / "x.json"), "--tile-overlap", "24"]) == 2
    assert "--tile-overlap 24 without --tile" in capsys.readouterr().err

    code = main(["predict", "--checkpoint", str(out / "best.pt"), str(root / "val2017"),
                 "--out", str(tmp_path / "pred"), "--score-thr", "0.0", "--device", "cpu",
                 "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(
        [f"img{i}.pred.{ext}" for i in range(4) for ext in ("png", "json")])
