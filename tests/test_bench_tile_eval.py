"""benchmarks/bench_tile_eval.py: the tiles that cover an image, the ground truth of a tile, and
the tile evaluation's plumbing (every tile at the training size, the model's resize put back)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch


def test_tiles_cover_the_image_flush_with_its_end(load_benchmark):
    bench = load_benchmark("bench_tile_eval")
    assert bench.tile_origins(1333, 384) == [0, 384, 768, 949]
    assert bench.tile_origins(755, 384) == [0, 371]
    assert bench.tile_origins(768, 384) == [0, 384]
    assert bench.tile_origins(300, 384) == [0]
    for length in (385, 755, 1000, 1333):
        starts = bench.tile_origins(length, 384)
        covered = set()
        for s in starts:
            assert 0 <= s and s + 384 <= length
            covered |= set(range(s, s + 384))
        assert covered == set(range(length))


def test_ground_truth_of_a_tile_is_clipped_and_keeps_mostly_visible_boxes(load_benchmark):
    bench = load_benchmark("bench_tile_eval")
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0],      # inside the tile at (0, 0)
                          [90.0, 10.0, 110.0, 30.0],     # half inside (x 90..100)
                          [95.0, 10.0, 115.0, 30.0],     # a quarter inside
                          [200.0, 200.0, 220.0, 220.0]])  # outside
    labels = torch.tensor([1, 2, 3, 4])
    kept, kept_labels = bench.tile_ground_truth(boxes, labels, 0, 0, 100, 0.5)
    assert kept_labels.tolist() == [1, 2]
    assert kept.tolist() == [[10.0, 10.0, 30.0, 30.0], [90.0, 10.0, 100.0, 30.0]]
    shifted, shifted_labels = bench.tile_ground_truth(boxes, labels, 100, 0, 100, 0.5)
    # in the tile at x 100: the other half of box 2, three quarters of box 3
    assert shifted_labels.tolist() == [2, 3]
    assert shifted.tolist() == [[0.0, 10.0, 10.0, 30.0], [0.0, 10.0, 15.0, 30.0]]


class _Recorder(torch.nn.Module):
    """Stands in for a detector: records the inputs and the transform's sizes, detects nothing."""

    def __init__(self):
        super().__init__()
        self.transform = SimpleNamespace(min_size=(800,), max_size=1333)
        self.seen = []

    def forward(self, images):
        self.seen.append((tuple(images[0].shape), self.transform.min_size,
                          self.transform.max_size))
        empty = torch.zeros(0)
        return [{"boxes": torch.zeros(0, 4), "scores": empty, "labels": empty.long()}]


def test_every_tile_goes_in_at_the_training_size_and_the_resize_is_put_back(load_benchmark, tiny_set):
    bench = load_benchmark("bench_tile_eval")
    net = _Recorder()
    metrics = bench.evaluate_tiles(net, tiny_set, [0, 1], tile=384, min_visible=0.5,
                                   progress=False)
    # 256 x 160 resized by the model's rule (short side 800, long side at most 1333): 1280 x 800
    per_image = len(bench.tile_origins(1280, 384)) * len(bench.tile_origins(800, 384))
    assert metrics["num_tiles"] == len(net.seen) == 2 * per_image == 24
    assert {shape for shape, _, _ in net.seen} == {(3, 384, 384)}
    assert {(mn, mx) for _, mn, mx in net.seen} == {((384,), 384)}
    assert (net.transform.min_size, net.transform.max_size) == ((800,), 1333)
    assert metrics["num_boxes"] >= sum(len(tiny_set[i][1]["boxes"]) for i in (0, 1))
    assert metrics["AP"] == 0.0 and metrics["num_detections"] == 0


@pytest.mark.slow
def test_the_three_modes_on_a_checkpoint_and_append_keeps_earlier_rows(load_benchmark, tmp_path):
    from test_engine import make_tiny_set, tiny_config

    from oralx_lib.engine import train
    from oralx_lib.errors import ConfigError

    bench = load_benchmark("bench_tile_eval")
    root = make_tiny_set(tmp_path / "data")
    summary = train(tiny_config(root, tmp_path / "run", epochs=1, max_iters_per_epoch=2,
                                val_split="val", eval_max_dets=20), progress=False)
    out = tmp_path / "tile_eval.json"
    common = ["--images", "2", "--tile", "64", "--threads", "1", "--no-progress", "--out",
              str(out)]
    assert bench.main(["--checkpoints", summary["last_checkpoint"], "--modes", "whole",
                       *common]) == 0
    first = json.loads(out.read_text())
    (row,) = first["rows"]
    assert set(row) >= {"whole", "provenance", "lr", "run"} and "tiled" not in row
    assert bench.main(["--checkpoints", summary["best_checkpoint"], "--modes", "whole", "tiles",
                       "tiled", "--overlap", "32", "--append", *common]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["checkpoint"] for r in rows] == [summary["last_checkpoint"],
                                               summary["best_checkpoint"]]
    assert rows[0] == row                                   # the earlier row, untouched
    new = rows[1]
    assert new["tiled_overlap"] == 32 and new["tiled"]["num_images"] == 2
    assert new["tiles"]["num_tiles"] >= 2 * 2               # 96 x 128 input, 64-px tiles
    # the same checkpoint and step again: its row is replaced, the other one kept
    assert bench.main(["--checkpoints", summary["last_checkpoint"], "--modes", "tiled",
                       "--append", *common]) == 0
    again = json.loads(out.read_text())["rows"]
    assert [r["checkpoint"] for r in again] == [summary["best_checkpoint"],
                                                summary["last_checkpoint"]]
    assert again[0] == new and "whole" not in again[1] and again[1]["tiled_overlap"] == 32
    with pytest.raises(ConfigError, match="--images 2 --tile 64"):
        bench.main(["--checkpoints", summary["best_checkpoint"], "--modes", "whole", "--append",
                    "--images", "3", "--tile", "64", "--out", str(out), "--no-progress"])
