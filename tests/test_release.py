"""The authors' weights: manifest, safe loading, the key map (round trip, refusals, reshapes),
the written checkpoint in the engine, and download --checkpoints (gdown replaced, no network).

No release file is available here: the "release" state dicts are built from the manifest with
random tensors of its shapes.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import make_tiny_set

from oralx_lib import CLASSES
from oralx_lib.data.real import download as dl
from oralx_lib.engine import CheckpointError, evaluate_model, load_checkpoint, load_model
from oralx_lib.models.moqam_transformer import box_sine_embedding
from oralx_lib.errors import ConfigError, DownloadError
from oralx_lib.release import convert as cv
from oralx_lib.release import manifest as mf
from oralx_lib.release.download import CHECKPOINTS_URL, prepare_checkpoints
from oralx_lib.release.loading import ReleaseCheckpointError, load_release_checkpoint

PER_BRANCH_KEYS = {
    f"query_head.transformer.{name}.{h}.{w}"
    for name in ("aux_pos_trans", "aux_pos_trans_norm") for h in (0, 1) for w in ("weight", "bias")
}


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
def manifest_state(seed: int = 0, manifest=None) -> OrderedDict:
    """A release state dict of random tensors with the manifest's keys and shapes."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in (manifest or mf.load_manifest()).items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.randint(0, 10_000, shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g)
    return out


@pytest.fixture(scope="module")
def model_state():
    """``build_model("moqam")``'s state dict at the released sizes (about 3 s to build)."""
    return cv.release_model_state()


@pytest.fixture(scope="module")
def release_state():
    return manifest_state()


# ------------------------------------------------------------------------------------------------
# manifest
# ------------------------------------------------------------------------------------------------
def test_committed_manifest_is_what_the_generator_builds():
    assert mf.load_manifest() == mf.release_manifest()
    assert mf.MANIFEST_PATH.read_text() == mf._text(mf.manifest_document())
    assert mf.main(["--check"]) == 0


def test_manifest_sizes_follow_the_config():
    m = mf.release_manifest()
    parts = {}
    for key in m:
        parts[key.split(".")[0]] = parts.get(key.split(".")[0], 0) + 1
    assert parts == {"backbone": 318, "neck": 15, "query_head": 309, "rpn_head": 6,
                     "roi_head": 26, "bbox_head": 18}
    q = "query_head.transformer"
    assert m[f"{q}.encoder.layers.5.attentions.0.sampling_offsets.weight"] == (8 * 5 * 4 * 2, 256)
    assert m[f"{q}.decoder.layers.0.attentions.0.attn.in_proj_weight"] == (768, 256)
    assert m[f"{q}.query_embed.weight"] == (900, 256)
    assert m[f"{q}.aux_pos_trans.1.weight"] == (256, 512)
    assert m["query_head.reg_branches.6.4.weight"] == (4, 256)
    assert m["roi_head.0.bbox_head.fc_cls.weight"] == (10, 1024)
    assert m["roi_head.0.bbox_head.fc_reg.weight"] == (36, 1024)
    assert m["roi_head.0.bbox_head.shared_fcs.0.weight"] == (1024, 256 * 7 * 7)
    assert m["rpn_head.rpn_cls.weight"] == (9, 256, 1, 1)
    assert m["bbox_head.0.scales.5.scale"] == ()
    assert "neck.convs.0.conv.bias" not in m and "bbox_head.0.cls_convs.0.conv.bias" not in m
    # another size changes the names and shapes that depend on it
    config = json.loads(json.dumps(mf.RELEASE_CONFIG))
    config["query_head"]["num_decoder_layers"] = 2
    small = mf.release_manifest(config)
    assert "query_head.reg_branches.2.0.weight" in small
    assert "query_head.reg_branches.3.0.weight" not in small


# ------------------------------------------------------------------------------------------------
# safe loading
# ------------------------------------------------------------------------------------------------
class _RunsShell:
    """Pickles as a call of os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    payload = {"meta": {"epoch": 12, "hook": _RunsShell(marker)},
               "state_dict": {"w": torch.ones(2)}}
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(ReleaseCheckpointError) as err:
        load_release_checkpoint(path)
    assert not marker.exists()
    text = str(err.value)
    assert "evil.pth" in text and "system" in text and "refused" in text
    assert "weights_only=False" not in text  # never suggest the unsafe way
    assert isinstance(err.value, CheckpointError)  # the CLI reports it (exit 2, no traceback)


def test_a_plain_mmdetection_checkpoint_with_meta_loads(tmp_path):
    state = OrderedDict([("backbone.conv1.weight", torch.randn(2, 3, 1, 1)),
                         ("backbone.bn1.num_batches_tracked", torch.tensor(7))])
    meta = {"mmdet_version": "2.25.3", "CLASSES": tuple(CLASSES), "epoch": 12, "iter": 100,
            "config": "model = dict(type='CoDETR')", "time": "Mon Jan  1 00:00:00 2024",
            "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth",
                          "best_score": np.float64(0.713)},
            "seed": np.int64(42), "dtype": np.dtype("float32"), "lr_steps": [11],
            "history": OrderedDict(a=1), "arr": np.arange(3)}
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999)}]}
    path = tmp_path / "MOQAM.pth"
    torch.save({"meta": meta, "state_dict": state, "optimizer": optimizer}, path)
    ck = load_release_checkpoint(path)
    assert list(ck.state_dict) == list(state)
    assert torch.equal(ck.state_dict["backbone.conv1.weight"], state["backbone.conv1.weight"])
    assert ck.has_optimizer and ck.meta["epoch"] == 12 and ck.meta["CLASSES"] == tuple(CLASSES)
    assert ck.meta["hook_msgs"]["best_score"] == pytest.approx(0.713)
    assert type(ck.meta["seed"]) is int
    summary = ck.summary()
    assert summary["num_tensors"] == 2 and summary["meta"]["mmdet_version"] == "2.25.3"
    assert len(summary["sha256"]) == 64


def test_numpy_1_names_in_the_pickle_load_too(tmp_path):
    """MMDetection 2.x checkpoints were written with numpy 1.x (numpy.core.multiarray.*)."""
    path = tmp_path / "old.pth"
    torch.save({"meta": {"best": np.float64(0.5)}, "state_dict": {"w": torch.ones(1)}}, path,
               _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    renamed = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    if renamed == raw:
        pytest.skip("this numpy already writes numpy.core names")
    path.write_bytes(renamed)
    assert load_release_checkpoint(path).meta["best"] == 0.5


def test_prefix_missing_and_damaged_files(tmp_path):
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": {"module.a.weight": torch.ones(1)}}, path)
    assert list(load_release_checkpoint(path).state_dict) == ["a.weight"]
    with pytest.raises(ReleaseCheckpointError, match="no such file"):
        load_release_checkpoint(tmp_path / "nope.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ReleaseCheckpointError, match="truncated or corrupt"):
        load_release_checkpoint(broken)
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3}, other)
    with pytest.raises(ReleaseCheckpointError, match="no 'state_dict'"):
        load_release_checkpoint(other)


# ------------------------------------------------------------------------------------------------
# the key map
# ------------------------------------------------------------------------------------------------
def test_every_manifest_key_maps_with_equal_shapes_and_round_trips(release_state, model_state):
    state, report, dropped = cv.convert_state_dict(release_state, model_state, strict=False)
    assert len(release_state) == 692
    assert not report.shape_mismatch
    assert report.ok and not report.no_home and not report.unfilled
    assert len(report.mapped) == 692 - 53  # every release key but the BatchNorm counters
    assert PER_BRANCH_KEYS <= set(report.mapped)  # one projection per branch, each filled
    assert set(state) == set(model_state)
    assert len(report.dropped) == 53  # the frozen backbone's BatchNorm counters
    assert sorted(report.zero_filled) == sorted([f"neck.lateral.{i}.0.bias" for i in range(4)]
                                                + ["neck.extra.0.0.bias",
                                                   "branches.atss.cls_tower.0.bias",
                                                   "branches.atss.reg_tower.0.bias"])
    for key, tensor in state.items():
        assert tensor.shape == model_state[key].shape, key
        assert tensor.dtype == model_state[key].dtype, key
    back = cv.to_release(state, dropped=dropped)
    assert sorted(back) == sorted(release_state)
    for key, tensor in release_state.items():
        assert torch.equal(back[key], tensor), key


def test_round_trip_with_another_class_order(release_state, model_state):
    order = list(reversed(CLASSES))
    state, report, dropped = cv.convert_state_dict(release_state, model_state,
                                                   class_order=order, strict=False)
    assert report.class_order == order and not report.class_order_assumed
    # our label c + 1 (CLASSES[c]) takes the release's row of that class name
    rel = release_state["query_head.label_embedding.weight"]
    for c, name in enumerate(CLASSES):
        assert torch.equal(state["label_embed.weight"][c], rel[order.index(name)])
    back = cv.to_release(state, class_order=order, dropped=dropped)
    for key in report.mapped:
        assert torch.equal(back[key], release_state[key]), key


def test_class_order_from_the_annotation_file(tmp_path):
    cats = [{"id": 7 + i, "name": n} for i, n in enumerate(reversed(CLASSES))]
    cats.insert(3, {"id": 99, "name": "not a class"})
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    assert cv.class_order_from_annotations(path) == list(reversed(CLASSES))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"categories": cats[:4]}))
    with pytest.raises(cv.ConversionError, match="not the nine"):
        cv.class_order_from_annotations(bad)
    with pytest.raises(cv.ConversionError, match="exactly once"):
        cv.class_permutation(["Decay"] * 9)


def test_refuses_a_missing_key_and_a_wrong_shape(release_state, model_state):
    missing = OrderedDict(release_state)
    del missing["query_head.transformer.decoder.layers.3.attentions.1.value_proj.weight"]
    with pytest.raises(cv.ConversionError) as err:
        cv.convert_state_dict(missing, model_state)
    text = str(err.value)
    assert "refused to write a partial model" in text
    assert "decoder.layers.3.cross_attn.value_proj.weight [256, 256]: its release key" in text
    wrong = OrderedDict(release_state)
    wrong["roi_head.0.bbox_head.fc_cls.weight"] = torch.randn(81, 1024)
    wrong["unknown.extra.weight"] = torch.randn(3)
    with pytest.raises(cv.ConversionError) as err:
        cv.convert_state_dict(wrong, model_state)
    text = str(err.value)
    assert ("roi_head.0.bbox_head.fc_cls.weight [81, 1024] -> "
            "branches.roi.roi_heads.box_predictor.cls_score.weight [10, 1024]") in text
    assert "unknown.extra.weight [3]: no rule in KEY_MAP" in text
    assert err.value.report.shape_mismatch and not err.value.report.ok


def test_reshapes_compute_what_the_release_computes(release_state, model_state):
    """The reshaped tensors give the release's outputs on the same input."""
    state, _, _ = cv.convert_state_dict(release_state, model_state, strict=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1024, generator=g)
    r = "roi_head.0.bbox_head."
    rel_logits = x @ release_state[r + "fc_cls.weight"].T + release_state[r + "fc_cls.bias"]
    ours = "branches.roi.roi_heads.box_predictor."
    our_logits = x @ state[ours + "cls_score.weight"].T + state[ours + "cls_score.bias"]
    assert torch.allclose(our_logits[:, 0], rel_logits[:, 9])      # background
    assert torch.allclose(our_logits[:, 1:], rel_logits[:, :9])    # label c+1 = class c
    rel_box = x @ release_state[r + "fc_reg.weight"].T + release_state[r + "fc_reg.bias"]
    our_box = x @ state[ours + "bbox_pred.weight"].T + state[ours + "bbox_pred.bias"]
    assert torch.allclose(our_box[:, 4:], rel_box) and not our_box[:, :4].any()
    scales = torch.stack([release_state[f"bbox_head.0.scales.{i}.scale"] for i in range(6)])
    assert torch.equal(state["branches.atss.scales"], scales)
    # the box sine embedding: the release embeds (x, y, w, h), ours (y, x, w, h)
    boxes = torch.rand(7, 4, generator=g) * 0.8 + 0.1
    dim_t = 10000 ** (2 * (torch.arange(128) // 2) / 128)
    pos = boxes[..., None] * 2 * math.pi / dim_t                     # (7, 4, 128)
    release_embedding = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()],
                                    dim=-1).flatten(1)               # x, y, w, h
    q = "query_head.transformer.aux_pos_trans.0."
    expected = release_embedding @ release_state[q + "weight"].T
    our_weight = cv._forward("xy_swap", release_state[q + "weight"], list(range(9)))
    got = box_sine_embedding(boxes, 128) @ our_weight.T
    assert torch.allclose(got, expected, atol=1e-4)


def test_the_map_is_one_table_of_known_kinds():
    assert all(rule.kind in cv.KINDS for rule in cv.KEY_MAP)
    assert all((rule.release is None) == (rule.kind == "zero") for rule in cv.KEY_MAP)
    assert all((rule.ours is None) == (rule.kind == "drop") for rule in cv.KEY_MAP)
    assert all(rule.why for rule in cv.KEY_MAP if rule.kind in ("zero", "drop"))


# ------------------------------------------------------------------------------------------------
# the written checkpoint in the engine
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("tiny"), n_train=2, n_val=2)


def _evaluate_small(path, root):
    from torch.utils.data import Subset

    from oralx_lib.data import OralXrays9
    from oralx_lib.data.transforms import eval_transforms

    model = load_model(path)
    model.transform.min_size, model.transform.max_size = (96,), 128  # CPU: small input
    dataset = Subset(OralXrays9(root, "val", transforms=eval_transforms()), [0, 1])
    metrics, detections = evaluate_model(model, dataset, batch_size=2, progress=False,
                                         max_dets=100)
    return model, metrics, detections


@pytest.mark.slow
def test_written_checkpoint_loads_and_evaluates(tmp_path, model_state, tiny_root):
    """The release document (full-size MOQAM, released config) in the engine: load_model,
    evaluate on two synthetic images at a small input size, predict."""
    from oralx_lib.engine import predict_images

    path = cv.write_release_checkpoint(tmp_path / "moqam_release.pt", model_state,
                                       release={"file": "MOQAM.pth", "dropped": {}})
    stored = load_checkpoint(path)
    assert stored["config"]["model"] == "moqam" and stored["config"]["profile"] == "full"
    assert stored["config"]["model_overrides"]["max_size"] == 1333
    model, metrics, detections = _evaluate_small(path, tiny_root)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, model_state[key]), key
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["num_images"] == 2
    assert all(d["category_id"] in {c["id"] for c in json.loads(
        (tiny_root / "annotations" / "instances_val2017.json").read_text())["categories"]}
        for d in detections)
    results = predict_images(model, [tiny_root / "val2017" / "img0.png"], score_thr=0.0,
                             out_dir=tmp_path / "pred", progress=False)
    assert len(results) == 1 and (tmp_path / "pred" / "img0.pred.json").is_file()


@pytest.mark.slow
def test_convert_a_release_file_then_evaluate(tmp_path, release_state, model_state, tiny_root):
    src = tmp_path / "MOQAM.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": tuple(CLASSES)},
                "state_dict": release_state}, src)
    path, report = cv.convert_release(src, tmp_path / "moqam_release.pt")
    assert report.ok and len(report.mapped) == len(release_state) - 53
    stored = load_checkpoint(path)
    back = cv.to_release(stored["model"], dropped=stored["release"]["dropped"])
    assert set(back) == set(release_state)
    assert all(torch.equal(back[k], v) for k, v in release_state.items())
    _evaluate_small(path, tiny_root)


def test_convert_release_cli_refuses_and_writes_nothing(tmp_path, release_state, capsys):
    from oralx_lib.cli import main

    src = tmp_path / "MOQAM.pth"
    broken = OrderedDict(release_state)
    del broken["rpn_head.rpn_cls.weight"]
    torch.save({"state_dict": broken}, src)
    out = tmp_path / "moqam_release.pt"
    code = main(["convert-release", str(src), "--out", str(out), "--report",
                 str(tmp_path / "report.json")])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "refused to write a partial model" in err
    assert "branches.rpn.head.cls_logits.weight [9, 256, 1, 1]" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is False and report["num_release_keys"] == len(broken)


@pytest.mark.slow
def test_train_init_from_starts_from_the_weights(tmp_path, tiny_root):
    """Fine-tuning: a tiny MOQAM run starts from another checkpoint's weights (the frozen stem
    keeps them exactly); a checkpoint of another model is refused."""
    from oralx_lib.engine import make_config, save_checkpoint, train
    from oralx_lib.engine.inference import build_from_config

    config = make_config("tiny", model="moqam", data_root=str(tiny_root), device="cpu",
                         out_dir=str(tmp_path / "run"), epochs=1, max_iters_per_epoch=1,
                         batch_size=1, val_split=None, num_threads=1,
                         model_overrides={"min_size": 96, "max_size": 128, "num_queries": 20,
                                          "dn_number": 4, "num_aux_queries": 10,
                                          # the release's freezing rule, from scratch
                                          "trainable_backbone_layers": 3,
                                          "freeze_batchnorm": True})
    source = build_from_config(config)
    with torch.no_grad():  # weights a fresh build cannot have
        source.backbone.conv1.weight.mul_(0.5)
        source.decoder.norm.weight.add_(0.5)
    init = save_checkpoint(tmp_path / "init.pt", {"model": source.state_dict(),
                                                  "config": config.to_dict()})
    train(config.replace(init_from=str(init)), progress=False)
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert torch.equal(trained["backbone.conv1.weight"], source.state_dict()["backbone.conv1.weight"])
    step = (trained["decoder.norm.weight"] - source.state_dict()["decoder.norm.weight"]).abs().max()
    assert 0 < step < 0.01  # one AdamW step away from the initial weights
    other = config.replace(model="faster_rcnn", backbone="resnet18", model_overrides={},
                           out_dir=str(tmp_path / "run2"), init_from=str(init))
    with pytest.raises(ConfigError, match="model='moqam'"):
        train(other, progress=False)


# ------------------------------------------------------------------------------------------------
# download --checkpoints
# ------------------------------------------------------------------------------------------------
def _tiny_release_file(path: Path) -> Path:
    torch.save({"meta": {"epoch": 12, "mmdet_version": "2.25.3"},
                "state_dict": OrderedDict(w=torch.ones(3))}, path)
    return path


def test_offline_download_says_so_and_how_to_go_on(tmp_path, monkeypatch):
    gdown = pytest.importorskip("gdown")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'drive.google.com' (network is unreachable)")

    monkeypatch.setattr(gdown, "download_folder", offline)
    monkeypatch.setattr(gdown, "download", offline)
    with pytest.raises(DownloadError) as err:
        prepare_checkpoints(tmp_path / "ck", progress=False)
    text = str(err.value)
    assert "offline" in text and "--from-archive" in text and "--checkpoints" in text
    assert CHECKPOINTS_URL in text
    from oralx_lib.cli import main

    assert main(["download", "--checkpoints", "--out", str(tmp_path / "ck"), "--quiet"]) == 2


def test_from_archive_folder_zip_and_resume(tmp_path, capsys):
    import zipfile

    drive = tmp_path / "MyDrive" / "MOQAM-checkpoints"
    drive.mkdir(parents=True)
    _tiny_release_file(drive / "MOQAM_OralXrays9.pth")
    (drive / "notes.txt").write_text("trained 12 epochs")
    inner = _tiny_release_file(tmp_path / "baseline.pth")
    with zipfile.ZipFile(drive / "more.zip", "w") as zf:
        zf.write(inner, "nested/baseline.pth")
    out = tmp_path / "checkpoints"
    placed = prepare_checkpoints(out, from_archive=drive, progress=False)
    assert [p.name for p in placed] == ["MOQAM_OralXrays9.pth", "baseline.pth"]
    assert (drive / "MOQAM_OralXrays9.pth").is_file()  # the user's copy stays
    assert load_release_checkpoint(out / "baseline.pth").meta["epoch"] == 12
    state = json.loads((out / ".oralx_checkpoints.json").read_text())
    assert set(state["files"]) == {"MOQAM_OralXrays9.pth", "baseline.pth"}
    # a second run finds everything done
    assert prepare_checkpoints(out, from_archive=drive, progress=False) == placed
    # one file, through the command line
    from oralx_lib.cli import main

    code = main(["download", "--checkpoints", "--out", str(tmp_path / "one"), "--quiet",
                 "--from-archive", str(drive / "MOQAM_OralXrays9.pth")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "convert-release" in printed and "MOQAM_OralXrays9.pth" in printed
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing")
    with pytest.raises(DownloadError, match="no checkpoint"):
        prepare_checkpoints(tmp_path / "none", from_archive=empty, progress=False)


def test_download_uses_the_drive_folder_and_refuses_a_bad_file(tmp_path, monkeypatch):
    calls = []

    def fake_download_folder(url, dest, *, quiet=False):
        calls.append(url)
        Path(dest).mkdir(parents=True, exist_ok=True)
        good = _tiny_release_file(Path(dest) / "MOQAM.pth")
        return [good]

    monkeypatch.setattr(dl, "download_folder", fake_download_folder)
    placed = prepare_checkpoints(tmp_path / "ck", progress=False)
    assert calls == [CHECKPOINTS_URL] and placed == [tmp_path / "ck" / "MOQAM.pth"]

    def evil_folder(url, dest, *, quiet=False):
        Path(dest).mkdir(parents=True, exist_ok=True)
        bad = Path(dest) / "evil.pth"
        torch.save({"state_dict": {"w": _RunsShell(tmp_path / "PWNED")}}, bad)
        return [bad]

    monkeypatch.setattr(dl, "download_folder", evil_folder)
    with pytest.raises(ReleaseCheckpointError, match="refused"):
        prepare_checkpoints(tmp_path / "ck2", progress=False)
    assert not (tmp_path / "PWNED").exists()
