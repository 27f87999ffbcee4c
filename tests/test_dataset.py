"""The OralXrays9 loader: good data, by-name category mapping, every error case, transforms."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from oralx_lib import CLASSES
from oralx_lib.data import DatasetError, DatasetWarning, OralXrays9, collate_fn
from oralx_lib.data import stats
from oralx_lib.data.transforms import train_transforms, eval_transforms


def make_set(root: Path, split="train", *, categories=None, images=None, annotations=None,
             size=(80, 60), write_images=True):
    """A tiny COCO set: two grayscale JPEGs and a few boxes (by default)."""
    w, h = size
    if categories is None:
        categories = [{"id": i + 1, "name": n, "supercategory": "anomaly"}
                      for i, n in enumerate(CLASSES)]
    if images is None:
        images = [{"id": 1, "file_name": "a.jpg", "width": w, "height": h},
                  {"id": 2, "file_name": "b.jpg", "width": w, "height": h},
                  {"id": 3, "file_name": "empty.jpg", "width": w, "height": h}]
    if annotations is None:
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12], "area": 120,
             "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 9, "bbox": [20, 10, 30, 20], "area": 600,
             "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [0, 0, 8, 8], "area": 64,
             "iscrowd": 1},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [40, 30, 20, 25], "area": 500,
             "iscrowd": 0},
        ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    if write_images:
        rng = np.random.default_rng(0)
        for img in images:
            arr = rng.integers(0, 255, (img["height"], img["width"]), dtype=np.uint8)
            Image.fromarray(arr, mode="L").save(root / f"{split}2017" / img["file_name"])
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def test_items_follow_the_torchvision_contract(tmp_path):
    ds = OralXrays9(make_set(tmp_path), "train")
    assert len(ds) == 3
    img, tgt = ds[0]
    assert img.shape == (3, 60, 80) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # gray -> 3 channels
    assert tgt["boxes"].dtype == torch.float32 and tgt["labels"].dtype == torch.int64
    assert tgt["boxes"].tolist() == [[5, 6, 15, 18], [20, 10, 50, 30]]  # xywh -> xyxy
    assert tgt["labels"].tolist() == [1, 9]
    assert tgt["image_id"] == 1
    assert tgt["orig_size"].tolist() == [60, 80]
    # iscrowd regions are kept apart from the boxes
    _, tgt2 = ds[1]
    assert tgt2["labels"].tolist() == [3]
    assert tgt2["ignore_boxes"].tolist() == [[0, 0, 8, 8]]
    # an image without boxes stays, with empty well-shaped tensors
    _, tgt3 = ds[2]
    assert tgt3["boxes"].shape == (0, 4) and tgt3["labels"].shape == (0,)


def test_categories_are_mapped_by_name_not_id_or_order(tmp_path):
    rng = np.random.default_rng(1)
    order = rng.permutation(len(CLASSES))
    # shuffled order, odd ids, and sloppy spelling of the names
    cats = [{"id": 100 + 7 * int(k), "name": CLASSES[k].upper().replace(" ", "_")} for k in order]
    name_to_id = {CLASSES[k]: 100 + 7 * int(k) for k in order}
    anns = [{"id": 1, "image_id": 1, "category_id": name_to_id["Implant"], "bbox": [1, 1, 5, 5],
             "area": 25, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": name_to_id["Decay"], "bbox": [9, 9, 5, 5],
             "area": 25, "iscrowd": 0}]
    imgs = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    ds = OralXrays9(make_set(tmp_path, categories=cats, images=imgs, annotations=anns), "train")
    assert ds[0][1]["labels"].tolist() == [CLASSES.index("Implant") + 1,
                                           CLASSES.index("Decay") + 1]
    assert ds.label_to_category_id[CLASSES.index("Implant") + 1] == name_to_id["Implant"]


def test_dataloader_with_collate_and_released_transforms(tmp_path):
    torch.manual_seed(0)
    ds = OralXrays9(make_set(tmp_path, size=(900, 500)), "train",
                    transforms=train_transforms("released", resize=True))
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_fn)
    for images, targets in loader:
        assert isinstance(images, list) and isinstance(targets, list)
        for img, tgt in zip(images, targets):
            assert type(img) is torch.Tensor and img.ndim == 3
            h, w = img.shape[-2:]
            assert min(h, w) <= 800 and max(h, w) <= 1333
            b = tgt["boxes"]
            assert type(b) is torch.Tensor and b.shape[1] == 4
            assert len(b) == len(tgt["labels"])
            if len(b):
                assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
                assert ((b[:, 2] - b[:, 0]) >= 1).all()


def test_horizontal_flip_moves_boxes_with_the_image(tmp_path):
    from torchvision.transforms import v2

    # an image that is bright exactly inside its one box
    imgs = [{"id": 1, "file_name": "a.png", "width": 64, "height": 32}]
    anns = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 8, 12, 10], "area": 120,
             "iscrowd": 0}]
    make_set(tmp_path, images=imgs, annotations=anns, write_images=False)
    arr = np.zeros((32, 64), np.uint8)
    arr[8:18, 4:16] = 255
    Image.fromarray(arr).save(tmp_path / "train2017" / "a.png")
    ds = OralXrays9(tmp_path, "train", transforms=v2.RandomHorizontalFlip(1.0))
    img, tgt = ds[0]
    x1, y1, x2, y2 = tgt["boxes"][0].int().tolist()
    assert (x1, y1, x2, y2) == (64 - 16, 8, 64 - 4, 18)
    assert img[0, y1:y2, x1:x2].min() == 1.0 and img[0].sum() == (x2 - x1) * (y2 - y1)


def test_eval_transforms_change_nothing(tmp_path):
    plain = OralXrays9(make_set(tmp_path), "train")
    ev = OralXrays9(tmp_path, "train", transforms=eval_transforms())
    a, ta = plain[0]
    b, tb = ev[0]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


# -- errors ------------------------------------------------------------------------------------
def test_missing_split_file_names_the_file(tmp_path):
    make_set(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"instances_val2017\.json"):
        OralXrays9(tmp_path, "val")


def test_missing_test_split_hints_at_the_split_tool(tmp_path):
    make_set(tmp_path, "val")
    with pytest.raises(DatasetError, match=r"split_dataset\.py"):
        OralXrays9(tmp_path, "test")


def test_invalid_json_names_the_file(tmp_path):
    make_set(tmp_path)
    f = tmp_path / "annotations" / "instances_train2017.json"
    f.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_train2017\.json.*not valid JSON"):
        OralXrays9(tmp_path, "train")


def test_unknown_category_is_named_and_the_nine_listed(tmp_path):
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)] + [{"id": 99, "name": "Cyst"}]
    make_set(tmp_path, categories=cats)
    with pytest.raises(DatasetError, match=r"'Cyst'.*Apical Periodontitis"):
        OralXrays9(tmp_path, "train")


def test_missing_class_is_a_warning(tmp_path):
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES) if n != "Implant"]
    make_set(tmp_path, categories=cats)
    with pytest.warns(DatasetWarning, match="Implant"):
        OralXrays9(tmp_path, "train")


def test_annotation_with_unknown_image_names_the_annotation(tmp_path):
    anns = [{"id": 77, "image_id": 42, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
             "iscrowd": 0}]
    make_set(tmp_path, annotations=anns)
    with pytest.raises(DatasetError, match=r"annotation id 77.*image id 42"):
        OralXrays9(tmp_path, "train")


def test_missing_image_file_is_reported_when_built(tmp_path):
    make_set(tmp_path)
    (tmp_path / "train2017" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"b\.jpg"):
        OralXrays9(tmp_path, "train")


def test_undecodable_image_is_reported_when_loaded(tmp_path):
    make_set(tmp_path)
    (tmp_path / "train2017" / "b.jpg").write_bytes(b"not a jpeg at all")
    ds = OralXrays9(tmp_path, "train")  # building does not decode
    ds[0]
    with pytest.raises(DatasetError, match=r"b\.jpg.*cannot decode"):
        ds[1]


BAD_BOXES = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 0.2], "area": 2, "iscrowd": 0},
    {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 0, "iscrowd": 0},
    {"id": 4, "image_id": 1, "category_id": 2, "bbox": [70, 50, 20, 20], "area": 400,
     "iscrowd": 0},  # reaches outside the 80 x 60 image: clipped to [70, 50, 80, 60]
    {"id": 5, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400,
     "iscrowd": 0},  # fine
]


def test_degenerate_boxes_dropped_and_outside_boxes_clipped_with_one_warning(tmp_path):
    make_set(tmp_path, annotations=BAD_BOXES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = OralXrays9(tmp_path, "train")
    msgs = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(msgs) == 1 and "dropped 3" in msgs[0] and "clipped 1" in msgs[0]
    tgt = ds.target(0)
    assert tgt["labels"].tolist() == [2, 3]
    assert tgt["boxes"].tolist() == [[70, 50, 80, 60], [10, 10, 30, 30]]


@pytest.mark.parametrize("bad", [0, 1, 2, 3])
def test_strict_mode_names_each_bad_annotation(tmp_path, bad):
    make_set(tmp_path, annotations=[BAD_BOXES[bad], BAD_BOXES[4]])
    with pytest.raises(DatasetError, match=rf"annotation id {BAD_BOXES[bad]['id']}\b"):
        OralXrays9(tmp_path, "train", strict=True)


def test_statistics(tmp_path):
    ds = OralXrays9(make_set(tmp_path), "train")
    counts = stats.class_counts(ds)
    assert list(counts.index) == list(CLASSES)
    assert counts["Apical Periodontitis"] == 1 and counts["Ceramic Bridge"] == 1
    assert counts["Wisdom Tooth"] == 1 and counts.sum() == 3  # the crowd region is not counted
    assert stats.boxes_per_image(ds).tolist() == [2, 1, 0]
    table = stats.box_table(ds)
    assert np.allclose(sorted(table["sqrt_area"]), np.sqrt([120, 500, 600]))
    s = stats.summary(ds)
    assert s["images"] == 3 and s["boxes"] == 3 and s["images_without_boxes"] == 1
    assert s["imbalance"] == 1.0 and s["ignored_regions"] == 1
    assert stats.image_sizes(ds).to_dict() == {"80 x 60": 3}
