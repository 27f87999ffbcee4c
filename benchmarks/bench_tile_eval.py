"""Whole images against training-sized tiles: is a trained model's AP a matter of the input size?

The ``release_scale`` profile (``oralx_lib.profiles``) trains on random 384 x 384 crops of the
images resized to the release's 1333 x 755 and evaluates on the whole 1333 x 755 image. For an
anchor-based two-stage detector the two regimes look alike: anchors, proposals and box deltas
live in pixels, and a 30-pixel object is a 30-pixel object in both. A query-based detector
(the complete MOQAM) works in coordinates **normalised by the image**: its encoder proposes
boxes of ``0.05 * 2**l`` of the image on level ``l``, its boxes are cxcywh in [0, 1], its
positional encodings are normalised to the image. Trained on 384-pixel crops and run on
1333-pixel images, every one of these priors is 3.5 times too large in pixels.

This script measures what that costs. For each checkpoint it evaluates COCO AP on the first
``--images`` validation images twice, with the same weights:

- ``whole``: as the reference runs do (``oralx_lib.engine.evaluate_model``: the model's own
  resize to 1333 x 755);
- ``tiles``: each image resized to the same 1333 x 755 (the model's own resize, done here), cut
  into overlapping 384 x 384 tiles that cover it (the training input's size and object scale),
  each tile run as an image of its own with the model's resize switched off; the ground truth
  of a tile is every box with at least ``--min-visible`` of its area inside, clipped to the tile.

- ``tiled``: sliding-window inference on the **whole** images, scored against the images' own
  ground truth like ``whole``: :class:`oralx_lib.engine.tiling.TiledDetector` runs the model on
  ``--tile`` windows overlapping by ``--overlap`` pixels at the same 1333 x 755 scale and merges
  their detections. This is the evaluation that matches crop training end to end (what
  ``python -m oralx_lib evaluate --tile 384`` does).

A two-stage checkpoint is the control: its numbers should be close. Results, with their
provenance (per row), go to ``--out`` (JSON); ``--append`` adds rows to an existing file
measured on the same images (rows of the same checkpoint and step are replaced).

    python benchmarks/bench_tile_eval.py --checkpoints runs/ref_960/di_rpn_seed0/best.pt \\
        runs/reference_runs/moqam_seed0/best.pt --images 20 --threads 1 \\
        --out benchmarks/results/tile_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm  # noqa: E402

from _common import provenance, write_results  # noqa: E402


from oralx_lib.engine.tiling import TiledDetector, tile_origins  # noqa: E402

#: What is measured per checkpoint (see the module's docstring).
MODES = ("whole", "tiles", "tiled")


def tile_ground_truth(boxes, labels, x0: int, y0: int, tile: int, min_visible: float):
    """The boxes (xyxy, pixels of the resized image) with at least ``min_visible`` of their area
    inside the tile at ``(x0, y0)``, clipped to it and shifted to its corner, and their labels."""
    clipped = boxes.clone()
    clipped[:, 0::2] = (clipped[:, 0::2] - x0).clamp(0, tile)
    clipped[:, 1::2] = (clipped[:, 1::2] - y0).clamp(0, tile)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (area > 0) & (inside >= min_visible * area)
    return clipped[keep], labels[keep]


def evaluate_tiles(model, dataset, indices, tile: int, min_visible: float, max_dets: int = 100,
                   progress: bool = True) -> dict:
    """COCO metrics of ``model`` on the ``tile`` x ``tile`` tiles of the images ``indices``,
    resized first as the model's transform resizes them (see the module's docstring)."""
    import torch
    import torch.nn.functional as F
    from pycocotools.coco import COCO

    from oralx_lib.engine.inference import _to_coco, detection_cap, unwrap_model
    from oralx_lib.evaluation import evaluate_coco, top_per_image

    net = unwrap_model(model).eval()
    transform = net.transform
    gt = {"images": [], "annotations": [], "categories": dataset.coco.dataset["categories"]}
    label_map = {int(k): int(v) for k, v in dataset.label_to_category_id.items()}
    detections = []
    saved = (transform.min_size, transform.max_size)
    with torch.no_grad(), detection_cap(net, max_dets):
        for index in tqdm(indices, desc="tiles", unit="image", disable=not progress):
            image, target = dataset[index]
            h, w = image.shape[-2:]
            # the model's own resize rule (torchvision's GeneralizedRCNNTransform)
            scale = min(saved[0][-1] / min(h, w), saved[1] / max(h, w))
            size = (round(h * scale), round(w * scale))
            resized = F.interpolate(image[None], size=size, mode="bilinear",
                                    align_corners=False)[0]
            boxes = target["boxes"].float() * torch.tensor(
                [size[1] / w, size[0] / h, size[1] / w, size[0] / h])
            transform.min_size, transform.max_size = (tile,), tile  # a tile goes in as it is
            try:
                for y0 in tile_origins(size[0], tile):
                    for x0 in tile_origins(size[1], tile):
                        crop = resized[:, y0:y0 + tile, x0:x0 + tile]
                        tile_id = len(gt["images"]) + 1
                        gt["images"].append({"id": tile_id, "width": crop.shape[-1],
                                             "height": crop.shape[-2]})
                        t_boxes, t_labels = tile_ground_truth(boxes, target["labels"], x0, y0,
                                                              tile, min_visible)
                        for box, label in zip(t_boxes.tolist(), t_labels.tolist()):
                            bw, bh = box[2] - box[0], box[3] - box[1]
                            gt["annotations"].append({
                                "id": len(gt["annotations"]) + 1, "image_id": tile_id,
                                "category_id": label_map[int(label)], "iscrowd": 0,
                                "bbox": [box[0], box[1], bw, bh], "area": bw * bh})
                        output = net([crop])[0]
                        detections += _to_coco(output, tile_id, (1.0, 1.0), label_map, max_dets)
            finally:
                transform.min_size, transform.max_size = saved
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    metrics = evaluate_coco(coco, top_per_image(detections, max_dets), max_dets=max_dets)
    metrics["num_tiles"] = len(gt["images"])
    metrics["num_boxes"] = len(gt["annotations"])
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="training checkpoints (best.pt / last.pt) of the reference runs")
    parser.add_argument("--data", default=None,
                        help="dataset root (default: the one the checkpoint trained on)")
    parser.add_argument("--images", type=int, default=20, help="first N validation images")
    parser.add_argument("--tile", type=int, default=384, help="tile side (the training crop)")
    parser.add_argument("--min-visible", type=float, default=0.5,
                        help="share of a box's area inside a tile for it to count there")
    parser.add_argument("--overlap", type=int, default=None,
                        help="least overlap of the sliding windows of 'tiled' (default: tile/2)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                        help="what to measure (default: all)")
    parser.add_argument("--append", action="store_true",
                        help="add the rows to --out (same --images) instead of replacing it")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args(argv)

    import torch
    from torch.utils.data import Subset

    from oralx_lib.data import OralXrays9
    from oralx_lib.engine import evaluate_model, load_model
    from oralx_lib.engine.checkpoint import load_checkpoint
    from oralx_lib.errors import ConfigError

    if args.threads:
        torch.set_num_threads(args.threads)
    overlap = args.tile // 2 if args.overlap is None else args.overlap
    earlier = []
    if args.append and args.out and Path(args.out).is_file():
        before = json.loads(Path(args.out).read_text())
        if before.get("images") != args.images or before.get("tile") != args.tile:
            raise ConfigError(f"--append {args.out}: its rows are on {before.get('images')} "
                              f"images with tile {before.get('tile')}; pass --images "
                              f"{before.get('images')} --tile {before.get('tile')} or another "
                              "--out.")
        # rows written before rows had their own provenance take the file's
        earlier = [{**r, "provenance": r.get("provenance", before["provenance"])}
                   for r in before["rows"]]
    rows = []
    keys = ("AP", "AP50", "APs", "APm", "AR100", "num_images", "num_detections")
    for path in args.checkpoints:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--checkpoints {path}: no such file; pass the best.pt or last.pt "
                              "of a reference run (runs/<folder>/<arm>_seed<k>/)")
        state = load_checkpoint(path, map_location="cpu")
        config = state["config"]
        data_root = Path(args.data or config["data_root"])
        dataset = OralXrays9(data_root, "val")
        indices = list(range(min(args.images, len(dataset))))
        model = load_model(path)
        row = {"checkpoint": str(path), "run": path.parent.name, "model": config["model"],
               "seed": config["seed"], "lr": config.get("lr"), "step": int(state["step"]),
               "profile": config.get("profile"), "train_crop": config.get("train_crop")}
        if "whole" in args.modes:
            tic = time.perf_counter()
            whole, _ = evaluate_model(model, Subset(dataset, indices), progress=args.progress)
            row["whole"], row["whole_s"] = ({k: whole[k] for k in keys},
                                            round(time.perf_counter() - tic, 1))
        if "tiles" in args.modes:
            tic = time.perf_counter()
            tiles = evaluate_tiles(model, dataset, indices, args.tile, args.min_visible,
                                   progress=args.progress)
            row["tiles"], row["tiles_s"] = ({k: tiles[k] for k in keys + ("num_tiles",
                                                                          "num_boxes")},
                                            round(time.perf_counter() - tic, 1))
        if "tiled" in args.modes:
            tic = time.perf_counter()
            tiled, _ = evaluate_model(TiledDetector(model, tile=args.tile, overlap=overlap),
                                      Subset(dataset, indices), progress=args.progress)
            row["tiled"], row["tiled_s"] = ({k: tiled[k] for k in keys},
                                            round(time.perf_counter() - tic, 1))
            row["tiled_overlap"] = overlap
        row["provenance"] = provenance()
        rows.append(row)
        print(f"{config['model']:>12} seed {config['seed']} step {row['step']}: AP "
              + " | ".join(f"{mode} {row[mode]['AP']:.4f}" for mode in MODES if mode in row))
    same = {(r["checkpoint"], r["step"]) for r in rows}
    rows = [r for r in earlier if (r["checkpoint"], r["step"]) not in same] + rows
    write_results(args.out, {"images": args.images, "tile": args.tile,
                             "min_visible": args.min_visible, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
