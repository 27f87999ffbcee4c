"""Self-checks for the data chapter's exercises."""

from __future__ import annotations

import numpy as np

from ._report import report as _report


def check_coco_to_xyxy(fn, *, seed: int = 0) -> None:
    """``fn(bbox, width, height) -> [x1, y1, x2, y2] | None``: COCO xywh to clipped xyxy, ``None``
    for degenerate boxes, as :class:`oralx_lib.data.OralXrays9` does."""
    cases = [
        (([10, 20, 30, 40], 100, 100), [10, 20, 40, 60]),
        (([90, 90, 30, 40], 100, 100), [90, 90, 100, 100]),
        (([-5, -5, 10, 10], 100, 100), [0, 0, 5, 5]),
        (([10, 10, 0.5, 10], 100, 100), None),
        (([10, 10, 10, 0.9], 100, 100), None),
        (([99.5, 10, 10, 10], 100, 100), None),
    ]
    rng = np.random.default_rng(seed)
    for _ in range(200):
        x, y = rng.uniform(-20, 120, 2)
        w, h = rng.uniform(0, 40, 2)
        W, H = 100, 80
        x1, y1 = min(max(x, 0), W), min(max(y, 0), H)
        x2, y2 = min(max(x + w, 0), W), min(max(y + h, 0), H)
        ok = w >= 1 and h >= 1 and x2 - x1 >= 1 and y2 - y1 >= 1
        cases.append((([x, y, w, h], W, H), [x1, y1, x2, y2] if ok else None))
    for (bbox, W, H), want in cases:
        got = fn(list(bbox), W, H)
        if want is None:
            assert got is None, f"coco_to_xyxy({bbox}, {W}, {H}) should be None, got {got}"
        else:
            assert got is not None, f"coco_to_xyxy({bbox}, {W}, {H}) should be {want}, got None"
            assert np.allclose(got, want), f"coco_to_xyxy({bbox}, {W}, {H}): want {want}, got {got}"
    _report("coco_to_xyxy", len(cases))
