"""The ``release_scale`` profile: objects at the release's pixel size, training on crops of the
resized image, evaluation on whole images; the box sizes at the network input; the assigner
variants the reference runs compare (through ``build_model`` options)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import tv_tensors

from oralx_lib.data import transforms as T
from oralx_lib.engine import make_config
from oralx_lib.errors import ConfigError
from oralx_lib.models import build_model
from oralx_lib.profiles import (
    ENGINE_PROFILES,
    MOQAM_PROFILES,
    RELEASE_SCALE_FACTOR,
    BOOK_SCHEDULES,
    eval_scale,
    input_scale,
)


def test_the_factor_is_the_release_test_scale_of_the_synthetic_image():
    # a real 1991 x 1127 panorama at the release's 800 / 1333 test scale: 1333 x 754
    real = input_scale(1991, 1127, 800, 1333)
    assert real == pytest.approx(1333 / 1991) and int(1127 * real) == 754
    # the synthetic panorama draws the same mouth at 1024 x 580: its factor is 1333 / 1024
    assert RELEASE_SCALE_FACTOR == pytest.approx(1333 / 1024) == pytest.approx(1.3018, abs=1e-4)
    # the fast profile (508 x 288) makes objects 2.62 times smaller than the release
    fast = input_scale(1024, 580, *eval_scale("fast"))
    assert fast == pytest.approx(288 / 580)
    assert RELEASE_SCALE_FACTOR / fast == pytest.approx(2.62, abs=0.01)
    assert eval_scale("release_scale") == (800, 1333) == eval_scale("release_scale", "moqam")
    assert eval_scale("full") == (800, 1333) and eval_scale("fast", "moqam") == (256, 448)


def test_profile_is_tiny_with_crops_and_the_release_scale():
    cfg = make_config("release_scale", model="di_rpn")
    tiny = make_config("tiny", model="di_rpn")
    assert (cfg.train_resize, cfg.train_crop) == ([800, 1333], [384, 384])
    assert cfg.model_overrides["resize_in_training"] is False
    assert (cfg.model_overrides["min_size"], cfg.model_overrides["max_size"]) == (800, 1333)
    for field in ("backbone", "lr", "batch_size", "train_preset", "pretrained_backbone"):
        assert getattr(cfg, field) == getattr(tiny, field)
    assert cfg.model_overrides["rpn_post_nms_top_n_test"] == tiny.model_overrides["rpn_post_nms_top_n_test"]
    assert MOQAM_PROFILES["release_scale"]["resize_in_training"] is False
    moqam = make_config("release_scale", model="moqam")
    assert moqam.model_overrides["min_size"] == 800 and moqam.backbone == "resnet18"
    # the book's schedule applies to both CPU profiles; the default profiles are untouched
    assert set(BOOK_SCHEDULES) == {"tiny", "release_scale"}
    assert ENGINE_PROFILES["tiny"]["model_overrides"] == {"min_size": 288, "max_size": 512}
    assert tiny.train_resize is None and tiny.train_crop is None


def test_train_resize_needs_a_model_that_does_not_resize_again():
    with pytest.raises(ConfigError, match="resize_in_training"):
        make_config("tiny", train_resize=[800, 1333])
    with pytest.raises(ConfigError, match="train_crop"):
        make_config("tiny", train_crop=[400, 300])
    with pytest.raises(ConfigError, match="train_crop"):
        make_config("tiny", train_crop=[384])
    # a crop alone is fine: the model resizes the crop afterwards (the release's branch (b))
    assert make_config("tiny", train_crop=[384, 600]).train_crop == [384, 600]


def _item(width=1024, height=580):
    image = tv_tensors.Image(torch.rand(3, height, width))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[100.0, 200.0, 110.0, 220.0],
                                                   [500.0, 250.0, 540.0, 330.0]]),
                                     format="XYXY", canvas_size=(height, width))
    return image, {"boxes": boxes, "labels": torch.tensor([3, 5])}


def test_crop_pipeline_keeps_the_release_scale():
    transform = T.train_transforms("none", scale_to=(800, 1333), crop=(384, 384))
    sizes = []
    torch.manual_seed(0)
    for _ in range(40):
        image, target = transform(*_item())
        assert tuple(image.shape[-2:]) == (384, 384)
        box = target["boxes"]
        whole = ((box[:, 0] > 0) & (box[:, 1] > 0) & (box[:, 2] < 383) & (box[:, 3] < 383))
        for b, lab in zip(box[whole], target["labels"][whole]):
            sizes.append((int(lab), float(b[2] - b[0]), float(b[3] - b[1])))
    # boxes the crop did not cut have the original size times the release factor (1333 / 1024)
    assert sizes, "no uncut box in 40 crops"
    for label, w, h in sizes:
        ow, oh = {3: (10, 20), 5: (40, 80)}[label]
        assert w == pytest.approx(ow * 1333 / 1024, rel=0.01)
        assert h == pytest.approx(oh * 755 / 580, rel=0.01)
    # the scale step alone: 1024 x 580 -> 1333 x 755 (torchvision's rule, as the model resizes)
    image, _ = T.train_transforms("none", scale_to=(800, 1333))(*_item())
    assert tuple(image.shape[-2:]) == (755, 1333)
    with pytest.raises(ValueError, match="crop"):
        T.train_transforms("light", crop=(500, 400))


def test_model_keeps_training_crops_and_resizes_whole_images_in_eval():
    model = build_model("faster_rcnn", backbone="resnet18", min_size=800, max_size=1333,
                        resize_in_training=False, rpn_pre_nms_top_n_train=50,
                        rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=50,
                        rpn_post_nms_top_n_test=20, box_batch_size_per_image=16,
                        representation_size=32)
    crop = torch.rand(3, 384, 384)
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 60.0]]), "labels": torch.tensor([2])}
    model.train()
    images, targets = model.transform([crop], [target])
    assert tuple(images.image_sizes[0]) == (384, 384)
    assert torch.equal(targets[0]["boxes"], target["boxes"])
    losses = model([crop], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    # an empty crop (the crop branch allows them) trains as a negative image
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    losses = model([crop], [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    images, _ = model.transform([torch.rand(3, 580, 1024)])
    assert tuple(images.image_sizes[0]) == (755, 1333)
    # the default still resizes in training
    default = build_model("faster_rcnn", backbone="resnet18", min_size=288, max_size=512)
    default.train()
    images, _ = default.transform([crop], [dict(target)])
    assert tuple(images.image_sizes[0]) == (288, 288)


@pytest.mark.slow  # one training step of the release_scale profile on real synthetic images
def test_one_release_scale_step_trains(tmp_path):
    from oralx_lib.data.synthetic import generate_dataset
    from oralx_lib.engine import train

    root = generate_dataset(tmp_path / "d", train=2, val=1, test=0, seed=0, width=512,
                            height=290, progress=False)
    cfg = make_config("release_scale", model="faster_rcnn", data_root=str(root),
                      out_dir=str(tmp_path / "run"), epochs=1, max_iters_per_epoch=1,
                      val_split=None, train_crop=[128, 128])
    summary = train(cfg, progress=False)
    assert summary["steps"] == 1


def test_input_box_sizes_scale_the_same_boxes(tiny_set):
    from oralx_lib.data import stats

    table = stats.input_box_sizes(tiny_set, ("fast", "release_scale"))
    fast = table[table["profile"] == "fast"].reset_index(drop=True)
    release = table[table["profile"] == "release_scale"].reset_index(drop=True)
    raw = stats.box_table(tiny_set)
    assert len(fast) == len(release) == len(raw) > 0
    # 256 x 160 images: fast min(288 / 160, 512 / 256) = 1.8, release min(800 / 160, 1333 / 256)
    # = 5 (this image is less wide than a panorama, so its short side decides)
    assert fast["scale"].unique().tolist() == [pytest.approx(1.8)]
    assert release["scale"].unique().tolist() == [pytest.approx(5.0)]
    assert fast["sqrt_area"].to_numpy() == pytest.approx(raw["sqrt_area"].to_numpy() * 1.8)
    assert release["w"].to_numpy() == pytest.approx(raw["w"].to_numpy() * 5.0)
    assert list(fast["class"]) == list(raw["class"])
    summary = stats.input_size_summary(table)
    assert list(summary.index) == ["fast", "release_scale"]
    shares = summary.filter(like="share_")
    assert shares.sum(axis=1).to_numpy() == pytest.approx([1.0, 1.0])
    ratio = summary.loc["release_scale", "median_sqrt_area"] / summary.loc["fast", "median_sqrt_area"]
    assert ratio == pytest.approx(5.0 / 1.8)


# ------------------------------------------------------------------------------------------------
# The assigner variants of the reference runs, through build_model options
# ------------------------------------------------------------------------------------------------
def _thresholds(model, sizes):
    gt = torch.tensor([[0.0, 0.0, s, s] for s in sizes])
    return model.rpn.assigner.effective_thresholds(gt).tolist()


def test_di_rpn_variants_through_options():
    sizes = [4.0, 9.0, 12.0, 16.0, 24.0, 48.0]
    kw = dict(backbone="resnet18", representation_size=32)
    released = _thresholds(build_model("di_rpn", **kw), sizes)
    unclamped = _thresholds(build_model("di_rpn", di_rpn_cap_at_base=False, **kw), sizes)
    fixed = _thresholds(build_model("di_rpn", di_rpn_slope=0.0, **kw), sizes)

    def formula(s):
        return min(max(0.55 + 0.15 * math.log2(s / 12.0), 0.5), 0.7)

    assert released == pytest.approx([min(0.55, formula(s)) for s in sizes])
    assert unclamped == pytest.approx([formula(s) for s in sizes])
    assert fixed == pytest.approx([0.55] * len(sizes))
    # released: lower than 0.55 only under 12 px, never above; unclamped reaches 0.7 at 24 px
    assert [t < 0.55 - 1e-9 for t in released] == [True, True, False, False, False, False]
    assert unclamped[-2:] == pytest.approx([0.7, 0.7])
    # the baseline's fixed rule is a different option
    assert build_model("faster_rcnn", **kw).rpn.assigner.pos_iou_thr == 0.7
