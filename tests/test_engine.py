"""Training engine: config, checkpoints (atomic, weights_only), NaN stop, exact resume,
evaluation and prediction on a tiny synthetic COCO set."""

import importlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oralx_lib import CLASSES
from oralx_lib.engine import (
    CheckpointError,
    TrainConfig,
    TrainingError,
    capture_rng_state,
    evaluate_model,
    load_checkpoint,
    load_model,
    make_config,
    plot_history,
    predict_images,
    read_jsonl,
    restore_rng_state,
    save_checkpoint,
    train,
)
from oralx_lib.engine import checkpoint as checkpoint_module
from oralx_lib.engine.inference import build_from_config
from oralx_lib.engine.train import EpochSampler, make_optimizer, make_scheduler
from oralx_lib.evaluation import evaluate_coco
from oralx_lib.errors import ConfigError

# The package exports the function ``train``, which hides the submodule of the same name.
train_module = importlib.import_module("oralx_lib.engine.train")


# ------------------------------------------------------------------------------------------------
# A tiny COCO set (also used by test_cli.py and test_ddp.py)
# ------------------------------------------------------------------------------------------------
def make_tiny_set(root, n_train=6, n_val=4, size=(128, 96), seed=0):
    """Gray 128x96 images with bright rectangles of three classes; category ids are not 1..9
    and listed in reverse order, so anything that maps by position fails."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    categories = [{"id": 100 + 3 * i, "name": n} for i, n in enumerate(reversed(CLASSES))]
    name_to_id = {c["name"]: c["id"] for c in categories}
    for split, count in (("train", n_train), ("val", n_val)):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            w, h = size
            pixels = (rng.random((h, w)) * 40).astype(np.uint8)
            for _ in range(rng.integers(1, 4)):
                bw, bh = (int(v) for v in rng.integers(12, 40, size=2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                name = CLASSES[int(rng.integers(3))]
                pixels[y:y + bh, x:x + bw] = 120 + 60 * CLASSES.index(name)
                anns.append({"id": len(anns) + 1, "image_id": i + 1,
                             "category_id": name_to_id[name], "bbox": [x, y, bw, bh],
                             "area": bw * bh, "iscrowd": 0})
            Image.fromarray(pixels).save(root / f"{split}2017" / f"img{i}.png")
            images.append({"id": i + 1, "file_name": f"img{i}.png", "width": w, "height": h})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


#: A small, fast two-stage model for CPU tests (about 0.3 s per step at 128x96).
FAST_MODEL = {"min_size": 96, "max_size": 128, "rpn_pre_nms_top_n_train": 200,
              "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
              "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 64,
              "representation_size": 128}


def tiny_config(root, out, **changes):
    settings = dict(model="faster_rcnn", backbone="mobilenet_v3", data_root=str(root),
                    out_dir=str(out), device="cpu", model_overrides=FAST_MODEL, epochs=2,
                    max_iters_per_epoch=3, batch_size=2, val_split=None, num_threads=1)
    settings.update(changes)
    return make_config("tiny", **settings)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
def test_profiles_and_overrides():
    full = make_config("full")
    assert (full.lr, full.weight_decay, full.backbone_lr_mult, full.clip_grad_norm) == (
        2e-4, 1e-4, 0.1, 0.1)
    assert (full.epochs, full.lr_milestones, full.lr_gamma, full.batch_size, full.seed) == (
        12, [11], 0.1, 1, 42)
    assert full.model_overrides["min_size"] == list(range(480, 801, 32))
    assert full.model_overrides["max_size"] == 1333 and full.pretrained_backbone
    assert full.backbone == "resnet50" and full.warmup_iters == 0
    tiny = make_config("fast", epochs=3, model_overrides={"min_size": 320, "max_size": None})
    assert tiny.profile == "tiny" and tiny.epochs == 3
    assert tiny.model_overrides["min_size"] == 320 and "max_size" not in tiny.model_overrides
    assert tiny.backbone in ("resnet18", "mobilenet_v3") and not tiny.pretrained_backbone


def test_config_round_trips_through_json(tmp_path):
    cfg = make_config("full", model="di_rpn", model_overrides={"min_size": (480, 512)})
    assert cfg.model_overrides["min_size"] == [480, 512]  # tuples become JSON lists
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"unknown config field.*'epoch'.*valid fields:.*epochs"):
        make_config("tiny", epoch=3)
    with pytest.raises(ConfigError, match="profile 'huge'"):
        make_config("huge")
    with pytest.raises(ConfigError, match="'batch_size'"):
        make_config("tiny", batch_size=0)
    with pytest.raises(ConfigError, match="'lr'.*wrong type"):
        make_config("tiny", lr="fast")
    with pytest.raises(ConfigError, match="'amp'"):
        make_config("tiny", amp="fp8")
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({"modle": "faster_rcnn"})


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.arange(4.0)})

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(4)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_refuses_non_plain_state_and_reports_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['bad'\].*Path"):
        save_checkpoint(tmp_path / "x.pt", {"bad": Path("/tmp")})
    assert not (tmp_path / "x.pt").exists()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt.*truncated or corrupt"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="missing.pt: no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")

    import datetime

    # Any class outside the weights_only allowlist would have its code run by a plain unpickle.
    torch.save({"x": datetime.date(2025, 6, 1)}, tmp_path / "stranger.pt")
    with pytest.raises(CheckpointError, match="stranger.pt: refused"):
        load_checkpoint(tmp_path / "stranger.pt")


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_optimizer_groups_and_schedule():
    from oralx_lib.models import build_model

    model = build_model("faster_rcnn", backbone="mobilenet_v3", **FAST_MODEL)
    cfg = make_config("full", lr=1e-3, backbone_lr_mult=0.1, lr_milestones=[2],
                      warmup_iters=2, warmup_factor=0.5)
    opt = make_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["head", "backbone"]
    n_body = sum(p.numel() for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith("backbone.body."))
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == n_body > 0
    sched = make_scheduler(opt, cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(8):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    head = [lr[0] for lr in lrs]
    # warm-up 0.5 -> 0.75 -> 1 (x 1e-3), then x 0.1 from iteration 6 = 2 epochs x 3 steps.
    np.testing.assert_allclose(head, [5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4])
    np.testing.assert_allclose([lr[1] for lr in lrs], np.array(head) * 0.1)


def test_epoch_sampler_skips_the_batches_done():
    data = list(range(10))
    full = EpochSampler(data, seed=5, epoch=1, rank=0, world_size=1, batch_size=2,
                        start_iter=0, num_iters=5)
    rest = EpochSampler(data, seed=5, epoch=1, rank=0, world_size=1, batch_size=2,
                        start_iter=2, num_iters=5)
    assert sorted(i for i, _ in full) == data
    assert list(rest) == list(full)[4:]
    other = EpochSampler(data, seed=5, epoch=2, rank=0, world_size=1, batch_size=2,
                         start_iter=0, num_iters=5)
    assert [i for i, _ in other] != [i for i, _ in full]
    halves = [EpochSampler(data, seed=5, epoch=1, rank=r, world_size=2, batch_size=1,
                           start_iter=0, num_iters=5) for r in (0, 1)]
    assert sorted(i for h in halves for i, _ in h) == data


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def _train_losses(out):
    return {r["step"]: (r["loss"], r["losses"]) for r in read_jsonl(Path(out) / "metrics.jsonl")
            if r["kind"] == "train"}


def _assert_same_losses(a, b, steps):
    for step in steps:
        assert a[step][0] == pytest.approx(b[step][0], abs=1e-6, rel=0), step
        for term, value in a[step][1].items():
            assert b[step][1][term] == pytest.approx(value, abs=1e-6, rel=0), (step, term)


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tiny_root, tmp_path, monkeypatch):
    # Uninterrupted: 2 epochs x 3 steps, last.pt also every 2 steps.
    ref_out = tmp_path / "ref"
    train(tiny_config(tiny_root, ref_out, checkpoint_every=2), progress=False)
    ref = _train_losses(ref_out)
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]

    # (a) 1 epoch, then resume with epochs=2.
    out_a = tmp_path / "a"
    train(tiny_config(tiny_root, out_a, epochs=1, checkpoint_every=2), progress=False)
    assert load_checkpoint(out_a / "last.pt")["epoch"] == 1
    train(tiny_config(tiny_root, out_a, epochs=2, checkpoint_every=2), progress=False,
          resume=True)
    _assert_same_losses(ref, _train_losses(out_a), range(1, 7))

    # (b) a crash in step 6 (mid-epoch 2): last.pt holds step 4; resume redoes 5 and 6. With a
    # loader worker process: per-item augmentation seeds make the losses independent of it.
    out_b = tmp_path / "b"

    def crash_after_step_5(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_root, out_b, checkpoint_every=2, workers=1), progress=False,
              on_step=crash_after_step_5)
    state = load_checkpoint(out_b / "last.pt")
    assert (state["epoch"], state["iteration"], state["step"]) == (1, 1, 4)
    summary = train(tiny_config(tiny_root, out_b, checkpoint_every=2, workers=1),
                    progress=False, resume=True)
    resumed = _train_losses(out_b)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # the log has no duplicates
    _assert_same_losses(ref, resumed, range(1, 7))
    assert summary["steps"] == 6 and summary["epochs_completed"] == 2
    ref_history = json.loads((ref_out / "summary.json").read_text())["history"]
    assert summary["history"][-1]["train_loss"] == pytest.approx(
        ref_history[-1]["train_loss"], abs=1e-6)


def test_nan_loss_stops_with_training_error(tiny_root, tmp_path, monkeypatch):
    original = train_module.build_from_config

    class PoisonAtCall3(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, images, targets=None):
            out = self.inner(images, targets)
            if self.training:
                self.calls += 1
                if self.calls == 3:
                    out["loss_box_reg"] = out["loss_box_reg"] * float("nan")
            return out

    monkeypatch.setattr(train_module, "build_from_config",
                        lambda cfg: PoisonAtCall3(original(cfg)))
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"step 3 .*'loss_box_reg' is nan.*last.pt keeps"):
        train(tiny_config(tiny_root, out, checkpoint_every=1, epochs=1), progress=False)
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert read_jsonl(out / "metrics.jsonl")[-1]["kind"] == "error"


@pytest.mark.slow
def test_train_with_evaluation_writes_every_artifact(tiny_root, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(tiny_root, out, epochs=1, max_iters_per_epoch=2,
                                val_split="val", eval_max_dets=20), progress=False)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "config.json",
                 "summary.json"):
        assert (out / name).is_file(), name
    assert summary["best_checkpoint"] == str(out / "best.pt") and summary["best_epoch"] == 1
    epoch = summary["history"][0]
    assert set(epoch["val_per_class_AP"]) == set(CLASSES)
    assert epoch["val_per_class_AP"]["Implant"] is None  # no ground truth in the tiny set

    # last.pt: a dict with an epoch key that weights_only loading accepts.
    raw = torch.load(out / "last.pt", weights_only=True)
    assert raw["epoch"] == 1 and raw["iteration"] == 0 and raw["step"] == 2
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "history"} <= set(raw)

    # A new run into the same folder without --resume is refused.
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tiny_root, out, epochs=1), progress=False)
    # Resuming a finished run with epochs unchanged does nothing more.
    again = train(tiny_config(tiny_root, out, epochs=1, max_iters_per_epoch=2,
                              val_split="val", eval_max_dets=20), progress=False, resume=True)
    assert again["steps"] == 2

    # The model rebuilt from best.pt scores exactly what training logged, through COCOeval.
    model = load_model(out / "best.pt")
    from oralx_lib.data import OralXrays9

    val = OralXrays9(tiny_root, "val")
    metrics, dets = evaluate_model(model, val, progress=False, max_dets=20)
    assert metrics["AP"] == pytest.approx(epoch["val_AP"], abs=1e-9)
    assert evaluate_coco(val.coco, dets, max_dets=20)["AP"] == pytest.approx(metrics["AP"])
    assert all(d["category_id"] in val.label_to_category_id.values() for d in dets)
    assert len({d["image_id"] for d in dets}) <= 4 and all(
        len([d for d in dets if d["image_id"] == i]) <= 20 for i in range(1, 5))

    fig = plot_history(out / "metrics.jsonl")
    assert len(fig.axes) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_release_protocol_next_to_cocos(tiny_root):
    """evaluate_model(release=True): COCO's numbers on the best 20 boxes per image and the
    release's (300 per image, maxDets 100/300/1000) on the same run's boxes."""
    from oralx_lib.data import OralXrays9
    from oralx_lib.evaluation import release_metrics, top_per_image

    torch.manual_seed(0)
    model = build_from_config(tiny_config(tiny_root, tiny_root / "unused"))
    val = OralXrays9(tiny_root, "val")
    metrics, dets = evaluate_model(model, val, progress=False, max_dets=20, release=True)
    per_image = [len([d for d in dets if d["image_id"] == i]) for i in range(1, 5)]
    assert max(per_image) > 20  # the model kept more than COCO's share for the release
    assert metrics["max_dets"] == 20 and metrics["num_detections"] == sum(min(n, 20)
                                                                            for n in per_image)
    assert metrics["AP"] == pytest.approx(evaluate_coco(val.coco, top_per_image(dets, 20),
                                                        max_dets=20)["AP"], abs=1e-12)
    assert metrics["release"] == release_metrics(val.coco, dets, img_ids=[1, 2, 3, 4])
    assert metrics["release"]["max_dets"]["AP75"] == 1000


def test_predict_images_writes_overlays_and_json(tiny_root, tmp_path):
    from oralx_lib.models import build_model

    model = build_model("faster_rcnn", backbone="mobilenet_v3", **FAST_MODEL).eval()
    paths = [tiny_root / "val2017" / "img0.png", tiny_root / "val2017" / "img1.png"]
    results = predict_images(model, paths, score_thr=0.0, out_dir=tmp_path / "pred",
                             progress=False)
    assert len(results) == 2
    for path, result in zip(paths, results):
        assert result["image"] == str(path)
        overlay = Image.open(tmp_path / "pred" / f"{path.stem}.pred.png")
        assert overlay.size == (128, 96) and overlay.mode == "RGB"
        saved = json.loads((tmp_path / "pred" / f"{path.stem}.pred.json").read_text())
        assert saved["width"] == 128 and saved["height"] == 96
        scores = [d["score"] for d in saved["detections"]]
        assert scores == sorted(scores, reverse=True)
        assert all(d["label"] == CLASSES[d["label_id"] - 1] for d in saved["detections"])
    high = predict_images(model, paths[:1], score_thr=1.01, progress=False)
    assert high[0]["detections"] == []
    with pytest.raises(ConfigError, match="nope.png"):
        predict_images(model, [tmp_path / "nope.png"], progress=False)
    assert model.training is False



def test_missing_val_split_says_how_to_go_on(tmp_path):
    root = make_tiny_set(tmp_path / "data", n_train=2, n_val=1)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(ConfigError, match=r"instances_val2017.json.*val_split=null"):
        train(tiny_config(root, tmp_path / "run", val_split="val"), progress=False)


def test_plot_history_from_epoch_records():
    import matplotlib.pyplot as plt

    history = [{"epoch": 1, "step": 3, "train_loss": 2.0, "lr": 1e-3, "val_AP": 0.1,
                "val_AP50": 0.3},
               {"epoch": 2, "step": 6, "train_loss": 1.5, "lr": 1e-4, "val_AP": 0.2,
                "val_AP50": 0.4}]
    fig = plot_history({"history": history})
    loss_ax, lr_ax, ap_ax = fig.axes
    assert list(loss_ax.lines[0].get_ydata()) == [2.0, 1.5]
    assert list(lr_ax.lines[0].get_ydata()) == [1e-3, 1e-4]
    assert [list(line.get_ydata()) for line in ap_ax.lines] == [[0.1, 0.2], [0.3, 0.4]]
    plt.close(fig)
