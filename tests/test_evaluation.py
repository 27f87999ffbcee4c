"""COCO evaluation: agreement with pycocotools, per-class AP by name, PR curves, confusion."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from oralx_lib import CLASSES
from oralx_lib.evaluation import (
    CONFUSION_NAMES,
    EvaluationError,
    confusion_matrix,
    evaluate_coco,
    plot_confusion,
    plot_pr_curves,
    pr_curves,
    run_cocoeval,
)

# Category ids deliberately not in the released order and not 1..9: mapping must go by name.
CAT_IDS = {name: 30 - 2 * i for i, name in enumerate(CLASSES)}


def _write_gt(path, images, annotations, categories=None):
    categories = categories or [{"id": cid, "name": name} for name, cid in CAT_IDS.items()]
    data = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.png"}
                   for i, (w, h) in images.items()],
        "annotations": [
            {"id": k + 1, "image_id": img, "category_id": cat, "bbox": list(box),
             "area": float(box[2] * box[3]), "iscrowd": crowd}
            for k, (img, cat, box, crowd) in enumerate(annotations)
        ],
        "categories": categories,
    }
    path.write_text(json.dumps(data))
    return path


def _random_case(tmp_path, seed=0, n_images=12):
    """Ground truth over 8 of the 9 classes (one has none) and noisy detections."""
    rng = np.random.default_rng(seed)
    images = {i + 1: (640, 480) for i in range(n_images)}
    used = [name for name in CLASSES if name != "Implant"]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(1, 8)):
            name = used[rng.integers(len(used))]
            w, h = rng.uniform(8, 200, size=2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append((img, CAT_IDS[name], (x, y, w, h), 0))
            if rng.random() < 0.8:  # a jittered, sometimes mislabelled detection
                jit = rng.normal(0, 0.08, size=4) * [w, h, w, h]
                det_name = name if rng.random() < 0.8 else CLASSES[rng.integers(9)]
                dets.append({"image_id": img, "category_id": CAT_IDS[det_name],
                             "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                             "score": float(rng.random())})
        for _ in range(rng.integers(0, 4)):  # false positives
            w, h = rng.uniform(8, 150, size=2)
            dets.append({"image_id": img, "category_id": CAT_IDS[CLASSES[rng.integers(9)]],
                         "bbox": [rng.uniform(0, 400), rng.uniform(0, 300), w, h],
                         "score": float(rng.random())})
    return _write_gt(tmp_path / "gt.json", images, anns), dets


def _reference_stats(gt_path, dets, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_cocoeval_summarize(tmp_path, seed):
    gt_path, dets = _random_case(tmp_path, seed)
    ours = evaluate_coco(gt_path, dets)
    ref = _reference_stats(gt_path, dets)
    np.testing.assert_allclose([ours[k] for k in KEYS], ref, rtol=0, atol=1e-12)
    assert 0.05 < ours["AP"] < 0.95  # a non-trivial case
    # Also from a COCO object, and without mutating the caller's dicts.
    before = json.dumps(dets)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    assert evaluate_coco(gt, dets)["AP"] == ours["AP"]
    assert json.dumps(dets) == before


def test_per_class_ap_by_name_and_none(tmp_path):
    gt_path, dets = _random_case(tmp_path, 3)
    ours = evaluate_coco(gt_path, dets)
    assert list(ours["per_class_AP"]) == list(CLASSES)
    assert ours["per_class_AP"]["Implant"] is None  # no ground truth for it
    for name in CLASSES:
        if name == "Implant":
            continue
        ref = _reference_stats(gt_path, dets, cat_ids=[CAT_IDS[name]])
        assert ours["per_class_AP"][name] == pytest.approx(ref[0], abs=1e-12)
        assert ours["per_class_AP50"][name] == pytest.approx(ref[1], abs=1e-12)


def test_hand_computed_ap(tmp_path):
    # Two "Decay" boxes; detections: exact (0.9), false positive (0.8), exact (0.7).
    # Precision is 1 up to recall 0.5 and 2/3 up to recall 1: AP = (51 * 1 + 50 * 2/3) / 101.
    gt_path = _write_gt(tmp_path / "gt.json", {1: (400, 300)},
                        [(1, CAT_IDS["Decay"], (10, 10, 50, 50), 0),
                         (1, CAT_IDS["Decay"], (200, 100, 60, 40), 0)])
    dets = [
        {"image_id": 1, "category_id": CAT_IDS["Decay"], "bbox": [10, 10, 50, 50], "score": 0.9},
        {"image_id": 1, "category_id": CAT_IDS["Decay"], "bbox": [300, 200, 30, 30], "score": 0.8},
        {"image_id": 1, "category_id": CAT_IDS["Decay"], "bbox": [200, 100, 60, 40], "score": 0.7},
    ]
    expected = (51 + 50 * 2 / 3) / 101
    stats = evaluate_coco(gt_path, dets)
    assert stats["AP"] == pytest.approx(expected)
    assert stats["AP50"] == pytest.approx(expected)
    assert stats["AR100"] == pytest.approx(1.0)
    assert stats["AR1"] == pytest.approx(0.5)
    assert stats["per_class_AP"]["Decay"] == pytest.approx(expected)
    assert stats["per_class_AP"]["Implant"] is None
    recall, precision = pr_curves(run_cocoeval(gt_path, dets))["Decay"]
    assert recall.shape == precision.shape == (101,)
    np.testing.assert_allclose(precision[:51], 1.0)
    np.testing.assert_allclose(precision[51:], 2 / 3)


def test_max_dets_beyond_100(tmp_path):
    # One GT; 12 higher-scoring false positives, then the true box. With 10 detections per
    # image the true box is cut off (AP 0); with 100 or 1000 precision at recall 1 is 1/13.
    gt_path = _write_gt(tmp_path / "gt.json", {1: (800, 600)},
                        [(1, CAT_IDS["Implant"], (100, 100, 40, 40), 0)])
    dets = [{"image_id": 1, "category_id": CAT_IDS["Implant"],
             "bbox": [400 + 20 * i, 300, 10, 10], "score": 0.9 - 0.01 * i} for i in range(12)]
    dets.append({"image_id": 1, "category_id": CAT_IDS["Implant"], "bbox": [100, 100, 40, 40],
                 "score": 0.5})
    assert evaluate_coco(gt_path, dets, max_dets=10)["AP"] == 0.0
    for max_dets in (100, 1000):
        stats = evaluate_coco(gt_path, dets, max_dets=max_dets)
        assert stats["AP"] == pytest.approx(1 / 13)
        assert stats[f"AR{max_dets}"] == pytest.approx(1.0)
        assert stats["AR10"] == 0.0


def test_max_dets_1000_equals_100_when_few_boxes(tmp_path):
    gt_path, dets = _random_case(tmp_path, 5)
    a, b = evaluate_coco(gt_path, dets, 100), evaluate_coco(gt_path, dets, max_dets=1000)
    for key in ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10"]:
        assert a[key] == pytest.approx(b[key])
    assert a["AR100"] == pytest.approx(b["AR1000"])


def test_empty_detections_give_zeros(tmp_path):
    gt_path, _ = _random_case(tmp_path, 0)
    stats = evaluate_coco(gt_path, [])
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR100"] == 0.0
    assert stats["per_class_AP"]["Decay"] == 0.0
    assert stats["per_class_AP"]["Implant"] is None
    assert stats["num_detections"] == 0


def test_img_ids_restrict_the_evaluation(tmp_path):
    gt_path, dets = _random_case(tmp_path, 0)
    keep = {1, 2, 3}
    subset = [d for d in dets if d["image_id"] in keep]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in subset]), "bbox")
        ev.params.imgIds = sorted(keep)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    stats = evaluate_coco(gt_path, subset, img_ids=sorted(keep))
    assert stats["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert stats["num_images"] == 3


def test_bad_inputs_raise_project_errors(tmp_path):
    gt_path, dets = _random_case(tmp_path, 0)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_coco(tmp_path / "missing.json", dets)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EvaluationError, match="bad.json"):
        evaluate_coco(tmp_path / "bad.json", dets)
    with pytest.raises(EvaluationError, match="score"):
        evaluate_coco(gt_path, [{"image_id": 1, "category_id": 30, "bbox": [0, 0, 5, 5]}])
    with pytest.raises(EvaluationError, match="image_id 999"):
        evaluate_coco(gt_path, [{"image_id": 999, "category_id": 30, "bbox": [0, 0, 5, 5],
                                 "score": 1.0}])
    with pytest.raises(EvaluationError, match="category_id 7"):
        evaluate_coco(gt_path, [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5],
                                 "score": 1.0}])


def test_pr_curves_average_over_ious(tmp_path):
    gt_path, dets = _random_case(tmp_path, 1)
    ev = run_cocoeval(gt_path, dets)
    at50 = pr_curves(ev, iou=0.5)
    mean = pr_curves((gt_path, dets), iou="0.5:0.95")
    assert at50["Implant"] is None and mean["Implant"] is None
    for name in CLASSES:
        if at50[name] is None:
            continue
        k = list(ev.params.catIds).index(CAT_IDS[name])
        np.testing.assert_allclose(at50[name][1], ev.eval["precision"][0, :, k, 0, -1])
        np.testing.assert_allclose(mean[name][1], ev.eval["precision"][:, :, k, 0, -1].mean(0))
        assert np.all(np.diff(at50[name][1]) <= 1e-12)  # interpolated: non-increasing
    with pytest.raises(EvaluationError):
        pr_curves(ev, iou="0.3")
    fig = plot_pr_curves(at50)
    assert len(fig.axes[0].lines) == 8
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_confusion_matrix_hand_case(tmp_path):
    d, f, c = CAT_IDS["Decay"], CAT_IDS["Dental Filling"], CAT_IDS["Porcelain Crown"]
    gt_path = _write_gt(
        tmp_path / "gt.json", {1: (400, 300), 2: (400, 300)},
        [
            (1, d, (10, 10, 40, 40), 0),     # found as Decay
            (1, f, (100, 100, 40, 40), 0),   # found but called Decay
            (1, c, (200, 200, 50, 50), 0),   # missed (only a low-IoU detection nearby)
            (2, d, (10, 10, 40, 40), 0),     # found as Decay (two detections: one matches)
            (2, f, (300, 10, 60, 60), 1),    # crowd region: detections on it are ignored
        ],
    )
    dets = [
        {"image_id": 1, "category_id": d, "bbox": [12, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": d, "bbox": [100, 102, 40, 40], "score": 0.8},
        {"image_id": 1, "category_id": c, "bbox": [235, 235, 50, 50], "score": 0.7},  # IoU<0.5
        {"image_id": 1, "category_id": f, "bbox": [14, 10, 40, 40], "score": 0.1},  # < score_thr
        {"image_id": 2, "category_id": d, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 2, "category_id": d, "bbox": [11, 11, 40, 40], "score": 0.6},  # duplicate
        {"image_id": 2, "category_id": f, "bbox": [300, 10, 60, 60], "score": 0.9},  # on crowd
    ]
    matrix, names = confusion_matrix(gt_path, dets, iou_thr=0.5, score_thr=0.3)
    assert names == CONFUSION_NAMES and matrix.shape == (10, 10)
    i_d, i_f, i_c = (CLASSES.index(n) for n in ("Decay", "Dental Filling", "Porcelain Crown"))
    bg = 9
    expected = np.zeros((10, 10), dtype=np.int64)
    expected[i_d, i_d] = 2
    expected[i_f, i_d] = 1
    expected[i_c, bg] = 1
    expected[bg, i_c] = 1   # the low-IoU crown detection is a false positive
    expected[bg, i_d] = 1   # the duplicate Decay in image 2
    np.testing.assert_array_equal(matrix, expected)
    # A lower score threshold lets the 0.1 filling compete; the one-to-one matching keeps the
    # better-IoU Decay detection on the Decay box, so the filling is a false positive.
    low, _ = confusion_matrix(gt_path, dets, iou_thr=0.5, score_thr=0.05)
    assert low[bg, i_f] == 1 and low[i_d, i_d] == 2
    fig = plot_confusion(matrix, names, normalize=True)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_confusion_rejects_unknown_category(tmp_path):
    gt_path = _write_gt(tmp_path / "gt.json", {1: (100, 100)}, [(1, 5, (1, 1, 10, 10), 0)],
                        categories=[{"id": 5, "name": "Cavity"}])
    with pytest.raises(EvaluationError, match="Cavity"):
        confusion_matrix(gt_path, [])


# ------------------------------------------------------------------ the release's protocol
def _crowded_case(tmp_path, seed=3):
    """The random case plus 300 low-scored boxes per image in one class: COCOeval's per-class
    maxDets of 100 binds, and the release's 1000 does not."""
    gt_path, dets = _random_case(tmp_path, seed)
    rng = np.random.default_rng(seed)
    for img in range(1, 13):
        for i in range(300):
            w, h = rng.uniform(8, 200, size=2)
            dets.append({"image_id": img, "category_id": CAT_IDS["Decay"],
                         "bbox": [rng.uniform(0, 400), rng.uniform(0, 300), w, h],
                         "score": float(rng.random()) * 0.5})
    return gt_path, dets


def test_release_metrics_are_pycocotools_summarize_with_100_300_1000(tmp_path):
    from oralx_lib.evaluation import RELEASE_MAX_DETS, release_metrics

    gt_path, dets = _crowded_case(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.params.maxDets = list(RELEASE_MAX_DETS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()  # the release's own summary
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AR300", "AR1000", "ARs",
             "ARm", "ARl"]
    ours = release_metrics(gt_path, dets)
    for name, value in zip(names, ev.stats):
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert ours["max_dets"]["AP"] == 100 and ours["max_dets"]["AP50"] == 1000
    # here maxDets matters: the headline AP at 100 is not the AP at 1000
    assert evaluate_coco(gt_path, dets, max_dets=1000)["AP"] != pytest.approx(ours["AP"])


def test_top_per_image_is_cocos_rule(tmp_path):
    from oralx_lib.evaluation import top_per_image

    _, dets = _crowded_case(tmp_path)
    top = top_per_image(dets, 100)
    per_image = {}
    for d in top:
        per_image.setdefault(d["image_id"], []).append(d["score"])
    assert set(per_image) == set(range(1, 13)) and all(len(v) == 100 for v in per_image.values())
    for img, scores in per_image.items():
        rest = [d["score"] for d in dets if d["image_id"] == img]
        assert min(scores) >= sorted(rest, reverse=True)[99]
