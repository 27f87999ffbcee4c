"""oralx_lib.engine.tiling: the windows that cover an image, their cores, the merge across
windows, and the tiled detector's contract (same detections as the whole image for a detector
that works in pixels; every window at the tile's size and the whole image's scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from oralx_lib.engine.tiling import TiledDetector, core_bounds, merge_tiles, tile_origins
from oralx_lib.errors import ConfigError


def test_windows_cover_the_axis_with_the_stride_and_end_flush():
    assert tile_origins(1333, 384) == [0, 384, 768, 949]      # no overlap asked
    assert tile_origins(1333, 384, 192) == [0, 192, 384, 576, 768, 949]
    assert tile_origins(755, 384, 192) == [0, 192, 371]
    assert tile_origins(300, 384, 192) == [0]
    for length in (385, 755, 1000, 1333):
        for overlap in (0, 96, 192, 300):
            starts = tile_origins(length, 384, overlap)
            assert starts == sorted(set(starts))
            assert all(0 <= s and s + 384 <= length for s in starts)
            assert all(b - a <= 384 - overlap for a, b in zip(starts, starts[1:]))
            covered = np.zeros(length, bool)
            for s in starts:
                covered[s:s + 384] = True
            assert covered.all()


def test_cores_partition_the_axis_and_hold_whole_objects_up_to_the_overlap():
    rng = np.random.default_rng(0)
    for length, overlap in ((1333, 192), (755, 192), (1000, 128), (384, 100)):
        starts = tile_origins(length, 384, overlap)
        cores = core_bounds(starts, 384, length)
        assert cores[0][0] == 0 and cores[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))  # no gap, no overlap
        for (lo, hi), s in zip(cores, starts):
            assert s <= lo < hi <= s + 384
        # an object no longer than the overlap, centred in a core, lies inside that window
        for _ in range(500):
            size = rng.uniform(1, overlap)
            a = rng.uniform(0, length - size)
            centre = a + size / 2
            (k,) = [i for i, (lo, hi) in enumerate(cores) if lo <= centre < hi]
            assert starts[k] <= a and a + size <= starts[k] + 384


def test_merge_drops_duplicates_across_windows_only():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10, 10],   # same object, windows 0 and 1
                          [0.0, 0, 10, 9.5],                    # window 0 again: kept
                          [0.0, 0, 10, 10],                     # other class: kept
                          [50.0, 50, 60, 60]])                  # elsewhere: kept
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([1, 1, 1, 2, 1])
    tiles = torch.tensor([0, 1, 0, 1, 1])
    kept = merge_tiles(boxes, scores, labels, tiles, 0.5)
    assert kept.tolist() == [0, 2, 3, 4]
    empty = merge_tiles(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.tolist() == []


class BlobDetector(torch.nn.Module):
    """A detector that works in pixels: every bright connected blob of its (resized) input is
    one detection of class 1. It records the size of every input it receives."""

    def __init__(self, min_size=800, max_size=1333):
        super().__init__()
        self.transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3)
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so that the model has a device
        self.detections_per_img = 100
        self.seen = []

    def forward(self, images):
        original = [tuple(img.shape[-2:]) for img in images]
        batch, _ = self.transform(images)
        outputs = []
        for img, (h, w) in zip(batch.tensors, batch.image_sizes):
            self.seen.append((h, w))
            found, _ = ndimage.label(img[0, :h, :w].numpy() > 0.5)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop]
                     for s in ndimage.find_objects(found)]
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            outputs.append({"boxes": boxes, "scores": area / (area + 100.0),
                            "labels": torch.ones(len(boxes), dtype=torch.long)})
        return self.transform.postprocess(outputs, batch.image_sizes, original)


def _image_with_blobs():
    """256 x 160 (1280 x 800 at the model's scale), blobs inside windows and across borders."""
    image = torch.zeros(3, 160, 256)
    for x0, y0, x1, y1 in ((10, 10, 20, 18),      # inside the first window
                           (74, 30, 84, 40),      # across x = 384 at the model's scale
                           (150, 70, 180, 100),   # across several windows' borders
                           (230, 140, 250, 155),  # in the last, flush window
                           (40, 120, 44, 124)):   # small
        image[:, y0:y1, x0:x1] = 1.0
    return image


def test_tiled_detections_equal_the_whole_image_for_a_pixel_detector():
    image = _image_with_blobs()
    whole_net = BlobDetector().eval()
    whole = whole_net([image])[0]
    assert len(whole["boxes"]) == 5
    net = BlobDetector()
    tiled = TiledDetector(net, tile=384, overlap=192)
    out = tiled([image])[0]
    order_w, order_t = whole["scores"].argsort(), out["scores"].argsort()
    assert torch.allclose(out["boxes"][order_t], whole["boxes"][order_w], atol=1e-4)
    assert torch.equal(out["labels"][order_t], whole["labels"][order_w])
    # every window went in at the tile's size, 6 x 4 of them, at the whole image's scale
    assert set(net.seen) == {(384, 384)}
    assert len(net.seen) == len(tile_origins(1280, 384, 192)) * len(tile_origins(800, 384, 192))
    assert (net.transform.min_size, net.transform.max_size) == ((800,), 1333)  # put back


def test_without_overlap_an_object_on_a_border_is_cut():
    image = _image_with_blobs()
    out = TiledDetector(BlobDetector(), tile=384, overlap=0)([image])[0]
    whole = BlobDetector().eval()([image])[0]
    widths = sorted((out["boxes"][:, 2] - out["boxes"][:, 0]).round().tolist())
    assert sorted((whole["boxes"][:, 2] - whole["boxes"][:, 0]).round().tolist()) != widths


def test_the_cap_applies_after_the_merge():
    image = _image_with_blobs()
    out = TiledDetector(BlobDetector(), tile=384, overlap=192, detections_per_img=2)([image])[0]
    assert len(out["boxes"]) == 2
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_evaluate_model_runs_the_tiled_detector(tiny_set):
    from oralx_lib.engine import evaluate_model

    net = TiledDetector(BlobDetector(), tile=384)
    metrics, detections = evaluate_model(net, tiny_set, progress=False)
    assert metrics["num_images"] == 2 and not net.training
    assert all(d["image_id"] in set(tiny_set.image_ids) for d in detections)


@pytest.mark.parametrize("kwargs, words", [
    ({"tile": 16}, "at least 32"),
    ({"tile": 384.0}, "integer"),
    ({"tile": 384, "overlap": 384}, "[0, 384)"),
    ({"tile": 384, "overlap": -1}, "overlap"),
    ({"tile": 384, "iou_threshold": 0.0}, "iou_threshold"),
])
def test_bad_settings_are_refused_with_the_field(kwargs, words):
    with pytest.raises(ConfigError, match=None) as err:
        TiledDetector(BlobDetector(), **kwargs)
    assert words in str(err.value)


def test_inference_only_and_a_transform_is_needed():
    tiled = TiledDetector(BlobDetector())
    with pytest.raises(ConfigError, match="inference only"):
        tiled.train()
    with pytest.raises(ConfigError, match="without targets"):
        tiled([torch.zeros(3, 64, 64)], [{}])
    with pytest.raises(ConfigError, match="transform"):
        TiledDetector(torch.nn.Linear(2, 2))
