"""Real X-rays and the user's files: bit depth, predict next to its inputs, duplicate ids,
resume with changed settings and after a NaN, stale temporaries, bounded predict memory, and the
named errors (exit status 2) that replace tracebacks."""

import errno
import hashlib
import importlib
import json
import os
import re
import struct
import unicodedata
import weakref
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import FAST_MODEL, make_tiny_set, tiny_config

from oralx_lib.cli import main
from oralx_lib.data import DatasetError, OralXrays9
from oralx_lib.data.real import verify_dataset
from oralx_lib.data.images import PIXEL_LIMIT_ENV, ImageReadError, decode_gray, image_header
from oralx_lib.engine import load_checkpoint, read_jsonl, save_checkpoint, train
from oralx_lib.engine import checkpoint as checkpoint_module
from oralx_lib.engine import predict as predict_module
from oralx_lib.engine.predict import predict_images, read_image

train_module = importlib.import_module("oralx_lib.engine.train")


def _picture(h=30, w=40, seed=0):
    """An 8-bit gray picture using the whole range 0..255 (a gradient plus noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    pixels = np.clip(ramp + rng.normal(0, 20, (h, w)), 0, 255).round().astype(np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255
    return pixels


def _write_json(root, split, images, anns):
    from oralx_lib import CLASSES

    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir()}


def _json_of(root, split="train"):
    return root / "annotations" / f"instances_{split}2017.json"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("tiny"), n_train=6, n_val=2)


def _checkpoint(path, root, num_classes=None):
    """A training checkpoint of an untrained FAST_MODEL detector (no training needed)."""
    from oralx_lib import NUM_CLASSES
    from oralx_lib.models import build_model

    config = tiny_config(root, path.parent / "unused")
    model = build_model("faster_rcnn", num_classes=num_classes or NUM_CLASSES,
                        backbone="mobilenet_v3", pretrained_backbone=False, **FAST_MODEL)
    save_checkpoint(path, {"config": config.to_dict(), "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def checkpoint(tiny_root, tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", tiny_root)


def _train_args(root, out, *extra):
    overrides = [f"model_overrides.{k}={json.dumps(v)}" for k, v in FAST_MODEL.items()]
    return ["train", "--model", "faster_rcnn", "--backbone", "mobilenet_v3", "--data", str(root),
            "--out", str(out), "--profile", "tiny", "--device", "cpu", "--no-progress",
            "--set", "val_split=null", "num_threads=1", "batch_size=2", *overrides, *extra]


# ------------------------------------------------------------------------------------------------
# Bit depth
# ------------------------------------------------------------------------------------------------
def test_same_picture_at_8_12_and_16_bits_gives_the_same_tensor(tmp_path):
    p8 = _picture()
    rng = np.random.default_rng(1)
    (tmp_path / "train2017").mkdir()
    files = {
        "eight.png": Image.fromarray(p8),
        # full range: v * 257 maps 255 to 65535; the low byte of a real 16-bit file varies
        "sixteen.png": Image.fromarray((p8.astype(np.uint16) * 257)),
        "sixteen_noisy.png": Image.fromarray(
            (p8.astype(np.uint16) << 8 | rng.integers(0, 256, p8.shape, dtype=np.uint16))),
        # a 12-bit detector's values stored as they are in a 16-bit file
        "twelve.png": Image.fromarray(np.round(p8 * (4095 / 255)).astype(np.uint16)),
        "sixteen.tif": Image.fromarray((p8.astype(np.uint16) * 257)),
        "colour.png": Image.fromarray(np.stack([p8] * 3, axis=-1)),
    }
    images = []
    for i, (name, im) in enumerate(files.items()):
        im.save(tmp_path / "train2017" / name)
        images.append({"id": i + 1, "file_name": name, "width": 40, "height": 30})
    _write_json(tmp_path, "train", images, [])
    assert Image.open(tmp_path / "train2017" / "sixteen.png").mode == "I;16"
    # What Pillow's convert("L") makes of the 16-bit file: nearly all white.
    clipped = np.array(Image.open(tmp_path / "train2017" / "sixteen.png").convert("L"))
    assert (clipped == 255).mean() > 0.9

    ds = OralXrays9(tmp_path, "train")
    reference = torch.from_numpy(p8).float() / 255
    for i, name in enumerate(files):
        img = ds.load_image(i)
        assert img.shape == (3, 30, 40) and img.dtype == torch.float32, name
        assert (img[0] - reference).abs().max() <= 1 / 255 + 1e-6, name
        assert torch.equal(read_image(tmp_path / "train2017" / name), img), name
    bits = {name: decode_gray(tmp_path / "train2017" / name)[1] for name in files}
    assert bits == {"eight.png": 8, "sixteen.png": 16, "sixteen_noisy.png": 16, "twelve.png": 12,
                    "sixteen.tif": 16, "colour.png": 8}


def test_a_dark_12_bit_picture_is_not_stretched_past_its_depth(tmp_path):
    # Values up to 3000 of 4095: 12 bits, so the brightest pixel is 3000 / 4095, not 1.
    values = np.full((8, 8), 1000, dtype=np.uint16)
    values[0, 0] = 3000
    Image.fromarray(values).save(tmp_path / "x.png")
    gray, bits = decode_gray(tmp_path / "x.png")
    assert bits == 12 and gray.max() == pytest.approx(3000 / 4095)


# ------------------------------------------------------------------------------------------------
# Predict: its own folder, streaming, unreadable files
# ------------------------------------------------------------------------------------------------
def test_predict_into_the_folder_of_its_inputs(tiny_root, checkpoint, tmp_path, capsys):
    folder = tmp_path / "xrays"
    folder.mkdir()
    for i in range(3):
        source = tiny_root / "train2017" / f"img{i}.png"
        (folder / f"scan{i}.png").write_bytes(source.read_bytes())
    inputs = _hashes(folder)
    args = ["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(folder),
            "--score-thr", "0", "--device", "cpu", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    assert "3 images" in capsys.readouterr().out
    after = _hashes(folder)
    assert {k: after[k] for k in inputs} == inputs  # no input touched
    expected = set(inputs) | {f"scan{i}.pred.{e}" for i in range(3) for e in ("png", "json")}
    assert set(after) == expected

    # A second run refuses to replace the earlier outputs, before loading anything.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds 6 prediction file(s)" in err and "--overwrite" in err
    assert _hashes(folder) == after
    # With --overwrite the overlays are replaced, never read as inputs: the same six outputs.
    assert main(args + ["--overwrite"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert set(_hashes(folder)) == expected
    assert {k: v for k, v in _hashes(folder).items() if k in inputs} == inputs
    # An overlay given as an input is refused by name.
    code = main(["predict", "--checkpoint", str(checkpoint), str(folder / "scan0.pred.png"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "scan0.pred.png: this is an output of predict" in capsys.readouterr().err


class _RecordingDetector(torch.nn.Module):
    """Counts decoded images and how many of the images it was given earlier are still alive."""

    def __init__(self, decoded):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.decoded = decoded
        self.alive_from_earlier_calls, self.decoded_at_call, self.batch_sizes = [], [], []
        self.refs = []

    def forward(self, images, targets=None):
        self.alive_from_earlier_calls.append(sum(r() is not None for r in self.refs))
        self.decoded_at_call.append(len(self.decoded))
        self.batch_sizes.append(len(images))
        self.refs += [weakref.ref(img) for img in images]
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]


def test_predict_decodes_one_batch_at_a_time(tmp_path, monkeypatch):
    paths = []
    for i in range(7):
        Image.fromarray(_picture(seed=i)).save(tmp_path / f"x{i}.png")
        paths.append(tmp_path / f"x{i}.png")
    decoded = []
    real = predict_module.read_gray
    monkeypatch.setattr(predict_module, "read_gray", lambda p: decoded.append(p) or real(p))
    model = _RecordingDetector(decoded)
    results = predict_images(model, paths, score_thr=0.0, out_dir=tmp_path / "out",
                             progress=False, batch_size=3)
    assert len(results) == 7 and len(list((tmp_path / "out").iterdir())) == 14
    assert model.batch_sizes == [3, 3, 1]
    # Lazily: when batch k runs, only the images of batches 1..k have been decoded ...
    assert model.decoded_at_call == [3, 6, 7]
    # ... and nothing of an earlier batch is still held in memory.
    assert model.alive_from_earlier_calls == [0, 0, 0]


def test_predict_skips_an_unreadable_file_with_a_warning(tiny_root, checkpoint, tmp_path,
                                                         capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((tiny_root / "val2017" / "img0.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    code = main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 images" in captured.out and "2 unreadable file(s) skipped" in captured.out
    assert re.search(r"warning: skipped .*broken\.png: cannot decode", captured.err)
    assert re.search(r"warning: skipped .*empty\.jpg: the file is empty \(0 bytes\)", captured.err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.pred.json",
                                                                    "good.pred.png"]
    # Nothing readable at all: a named error.
    code = main(["predict", "--checkpoint", str(checkpoint), str(folder / "broken.png"), "--out",
                 str(tmp_path / "out2"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 1 image(s) could be read" in err and "Traceback" not in err


def _png_header_only(path, width, height):
    """A PNG whose header announces width x height 8-bit gray pixels (no pixel data)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_a_very_large_image_is_named_with_how_to_allow_it(tmp_path, monkeypatch, checkpoint,
                                                          capsys):
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    big = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageReadError, match=rf"huge.png: .*safety limit.*{PIXEL_LIMIT_ENV}="):
        image_header(big)
    code = main(["predict", "--checkpoint", str(checkpoint), str(big), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "decompression bomb" in err and PIXEL_LIMIT_ENV in err
    # The dataset names it too, before training starts.
    (tmp_path / "train2017").mkdir()
    os.replace(big, tmp_path / "train2017" / "huge.png")
    _write_json(tmp_path, "train", [{"id": 1, "file_name": "huge.png", "width": 20000,
                                     "height": 20000}], [])
    with pytest.raises(DatasetError, match=rf"huge.png: .*{PIXEL_LIMIT_ENV}"):
        OralXrays9(tmp_path, "train").check_images()
    # Allowed through the environment variable: the header is read.
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "0")
    assert image_header(tmp_path / "train2017" / "huge.png") == (20000, 20000, "L")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "lots")
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "train2017"),
                 "--out", str(tmp_path / "out3"), "--no-progress"]) == 2
    assert f"{PIXEL_LIMIT_ENV}='lots'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Annotations
# ------------------------------------------------------------------------------------------------
def test_duplicate_annotation_ids_are_named_by_the_loader_and_verify(tmp_path, capsys):
    root = make_tiny_set(tmp_path / "d", n_train=3, n_val=1)
    data = json.loads(_json_of(root).read_text())
    assert len(data["annotations"]) >= 2
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    _json_of(root).write_text(json.dumps(data))
    dup = data["annotations"][0]["id"]
    with pytest.raises(DatasetError, match=rf"duplicate annotation ids: {dup} \(2 times\)"):
        OralXrays9(root, "train")
    report = verify_dataset(root, expected=None, check_images=False, progress=False)
    assert not report.ok
    assert any("annotation ids appear more than once" in p and f"{dup} (2 times)" in p
               for p in report.problems)
    assert main(["verify", str(root), "--no-images", "--no-paper-counts", "--quiet"]) == 1
    assert "annotation ids appear more than once" in capsys.readouterr().out


def test_file_names_that_differ_only_in_unicode_normalisation(tmp_path, capsys):
    nfc = unicodedata.normalize("NFC", "céphalo_é.png")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    (tmp_path / "train2017").mkdir()
    Image.fromarray(_picture()).save(tmp_path / "train2017" / nfd)
    if (tmp_path / "train2017" / nfc).exists():
        pytest.skip("this file system normalises names itself")
    _write_json(tmp_path, "train", [{"id": 1, "file_name": nfc, "width": 40, "height": 30}], [])
    with pytest.raises(DatasetError, match="only in Unicode normalisation"):
        OralXrays9(tmp_path, "train")
    report = verify_dataset(tmp_path, expected=None, check_images=False, progress=False)
    assert any("only in Unicode normalisation" in p for p in report.problems)
    assert not any("missing from" in p for p in report.problems)
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--no-progress", "--set", "val_split=null"])
    err = capsys.readouterr().err
    assert code == 2 and "only in Unicode normalisation" in err and "Traceback" not in err


def test_train_checks_every_image_header_before_the_first_step(tmp_path, monkeypatch, capsys):
    root = make_tiny_set(tmp_path / "d", n_train=4, n_val=1)
    (root / "train2017" / "img3.png").write_bytes(b"")
    (root / "train2017" / "img2.png").write_bytes(b"not an image at all")
    built = []  # the model is built after the check: nothing long has started
    original_build = train_module.build_from_config
    monkeypatch.setattr(train_module, "build_from_config",
                        lambda cfg: built.append(1) or original_build(cfg))
    code = main(_train_args(root, tmp_path / "run", "--set", "max_iters_per_epoch=1",
                            "--epochs", "1"))
    err = capsys.readouterr().err
    assert code == 2 and built == []
    assert "2 image(s) of" in err and "img3.png: the file is empty (0 bytes)" in err
    assert "img2.png: cannot decode it as an image" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# Resume, NaN, checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # two short training runs: ~5 s
def test_nan_advice_followed_literally_resumes_with_the_new_rate(tiny_root, tmp_path,
                                                                 monkeypatch, capsys):
    """The loss turns NaN whenever the last optimizer step moved a classifier weight by more
    than 5e-4, i.e. at lr 1e-3 (AdamW moves each weight by about lr per step) but not at 1e-4.
    The advice printed must lead to a finished run that really steps with the new rate."""
    original_build = train_module.build_from_config

    def poison_after_large_steps(cfg):
        model = original_build(cfg)
        watched = model.roi_heads.box_predictor.cls_score.weight
        previous = []

        def hook(module, inputs, output):
            if module.training:
                now = watched.detach().clone()
                if previous and (now - previous[-1]).abs().max() > 5e-4:
                    output["loss_classifier"] = output["loss_classifier"] * float("nan")
                previous[:] = [now]
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_from_config", poison_after_large_steps)
    out = tmp_path / "run"
    args = _train_args(tiny_root, out, "--epochs", "1", "--set", "batch_size=1",
                       "max_iters_per_epoch=4", "checkpoint_every=1", "lr=1e-3")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "step 2 " in err and "'loss_classifier' is nan" in err and "(step 1)" in err
    advice = re.search(r"`(--resume --set lr=[^`]+)`", err)
    assert advice, err
    assert advice.group(1) == "--resume --set lr=0.0001"

    # Steps 2..4 at the new rate: had the stored 1e-3 been kept, step 3 would be NaN again.
    assert main(args + advice.group(1).split()) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "lr 0.001 -> 0.0001" in captured.out and "head 0.0001" in captured.out
    records = read_jsonl(out / "metrics.jsonl")
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs == {1: 1e-3, 2: pytest.approx(1e-4), 3: pytest.approx(1e-4),
                   4: pytest.approx(1e-4)}
    assert not any(r["kind"] == "error" for r in records)
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4 and state["config"]["lr"] == 1e-4
    groups = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]}
    assert groups["head"] == pytest.approx(1e-4) and groups["backbone"] == pytest.approx(1e-5)
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-4


@pytest.mark.slow  # two short training runs: ~5 s
def test_a_changed_lr_on_resume_follows_the_schedule(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    base = dict(max_iters_per_epoch=2, lr_milestones=[1], lr_gamma=0.1)
    train(tiny_config(tiny_root, out, epochs=1, lr=1e-3, **base), progress=False)
    capsys.readouterr()
    train(tiny_config(tiny_root, out, epochs=2, lr=2e-3, **base), progress=False, resume=True)
    assert "lr 0.001 -> 0.002" in capsys.readouterr().out
    lrs = {r["step"]: r["lr"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"}
    # Epoch 2 is past the milestone: the new rate times gamma, not the stored 1e-4.
    assert lrs[1] == lrs[2] == 1e-3 and lrs[3] == lrs[4] == pytest.approx(2e-4)


def test_lr_nan_is_refused_like_lr_zero(tmp_path, capsys):
    for value in ("nan", "NaN", "inf", "0"):
        assert main(["train", "--out", str(tmp_path / "r"), "--set", f"lr={value}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: config field 'lr'") and "> 0" in err, value
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "weight_decay=nan"]) == 2
    assert "finite" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_stale_temporaries_removed_and_checkpoints_get_ordinary_permissions(tiny_root,
                                                                            tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.pt.k2j3h4.tmp", out / ".best.pt.x9.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1024)
    unrelated = out / ".notes.tmp"
    unrelated.write_text("mine")
    old = os.umask(0o027)
    try:
        train(tiny_config(tiny_root, out, epochs=1, max_iters_per_epoch=1), progress=False)
    finally:
        os.umask(old)
    assert not any(p.exists() for p in stale) and unrelated.exists()
    mode = (out / "last.pt").stat().st_mode & 0o777
    assert mode == 0o640 == (out / "config.json").stat().st_mode & 0o777


def test_disk_full_while_writing_a_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    real_save = checkpoint_module.torch.save
    calls = []

    def save_then_fill_the_disk(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            handle.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_fill_the_disk)
    out = tmp_path / "run"
    code = main(_train_args(tiny_root, out, "--epochs", "1", "--set", "max_iters_per_epoch=2",
                            "checkpoint_every=1"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "last.pt: no space left on the device" in err
    assert "The previous last.pt is kept" in err and "--resume" in err
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["step"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_for_another_number_of_classes_is_named(tiny_root, tmp_path, capsys):
    other = _checkpoint(tmp_path / "three.pt", tiny_root, num_classes=3)
    code = main(["predict", "--checkpoint", str(other), str(tiny_root / "val2017"), "--out",
                 str(tmp_path / "p"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "three.pt: the weights do not fit" in err
    assert "has 4 outputs where this model has 10" in err and "different number of classes" in err
    code = main(["evaluate", "--checkpoint", str(other), "--data", str(tiny_root), "--out",
                 str(tmp_path / "m.json"), "--device", "cpu", "--no-progress"])
    assert code == 2 and "different number of classes" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Named errors before any work
# ------------------------------------------------------------------------------------------------
def test_output_paths_and_numbers_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    missing_ckpt = str(tmp_path / "none.pt")  # each check must come before the checkpoint's

    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and "none.pt" not in err
        return err

    assert "this is a file, not a folder" in error(["train", "--out", str(a_file)])
    assert "which is a file" in error(["train", "--out", str(a_file / "run")])
    for flag in (str(a_file), str(a_file / "sub")):
        error(["predict", "--checkpoint", missing_ckpt, str(folder), "--out", flag])
    assert "this is a folder; give a file name" in error(
        ["evaluate", "--checkpoint", missing_ckpt, "--out", str(folder)])
    assert "--detections" in error(["evaluate", "--checkpoint", missing_ckpt, "--out",
                                    str(tmp_path / "m.json"), "--detections", str(folder)])
    assert "--max-dets 0" in error(["evaluate", "--checkpoint", missing_ckpt, "--out",
                                    str(tmp_path / "m.json"), "--max-dets", "0"])
    assert "--max-dets -5" in error(["evaluate", "--checkpoint", missing_ckpt, "--out",
                                     str(tmp_path / "m.json"), "--max-dets", "-5"])
    assert "--batch-size 0" in error(["evaluate", "--checkpoint", missing_ckpt, "--out",
                                      str(tmp_path / "m.json"), "--batch-size", "0"])
    assert "--batch-size 0" in error(["predict", "--checkpoint", missing_ckpt, str(folder),
                                      "--out", str(tmp_path / "p"), "--batch-size", "0"])
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "p").exists()

    # Not writable (as root every folder is writable, so the permission answer is simulated).
    from oralx_lib.engine import outputs

    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    assert "not writable" in error(["train", "--out", str(tmp_path / "ro" / "run")])
    assert "not writable" in error(["evaluate", "--checkpoint", missing_ckpt, "--out",
                                    str(tmp_path / "ro.json")])
