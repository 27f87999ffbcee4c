"""The synthetic OralXrays-9-like generator: layout, COCO fields, determinism, statistics."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oralx_lib import CLASSES
from oralx_lib.data import synthetic
from oralx_lib.data.synthetic import geometry
from oralx_lib.data.synthetic import (
    DEFAULTS,
    MARKER,
    ensure_synthetic,
    generate_dataset,
    image_rng,
    render_panoramic,
)
from oralx_lib.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(width=256, height=145)  # the real aspect ratio (1991 x 1127), tiny
TEST_SIZE = dict(width=512, height=290)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


@pytest.fixture(scope="module")
def sample():
    """40 images at 512 x 290 (the statistics sample), rendered once for the module."""
    return [render_panoramic(image_rng(0, "train", i), **TEST_SIZE) for i in range(40)]


# --------------------------------------------------------------------------- hand-computed parts


def test_image_rng_is_seed_sequence_of_seed_split_index():
    expected = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(1, 3))).random(4)
    assert np.array_equal(image_rng(7, "val", 3).random(4), expected)
    assert not np.array_equal(image_rng(7, "train", 3).random(4), expected)


def test_frame_coordinates_and_box_by_hand():
    # a lower tooth at zero tilt: s = x + 1/2 - ax (to the right), t = y + 1/2 - ay (down)
    fr = geometry._make_frame(10.5, 20.5, 0.0, False, -2, 2, 0, 3, 100, 100)
    assert (fr.x0, fr.y0) == (8, 20)
    assert fr.s[0, :5].tolist() == [-2, -1, 0, 1, 2]
    assert fr.t[:4, 0].tolist() == [0, 1, 2, 3]
    # an upper tooth points up: t grows towards smaller y, s still to the right
    up = geometry._make_frame(10.5, 20.5, 0.0, True, -2, 2, 0, 3, 100, 100)
    assert up.y0 == 17 and up.t[:, 0].tolist() == [3, 2, 1, 0, -1]  # one spare row, as below
    assert up.s[0, :5].tolist() == [-2, -1, 0, 1, 2]
    # the box of coverage >= 0.5
    mask = np.zeros(fr.s.shape)
    mask[1, 2] = 0.5
    mask[3, 3] = 0.9
    mask[0, 0] = 0.49
    assert fr.box(mask) == [8 + 2, 20 + 1, 2.0, 3.0]
    assert fr.box(np.zeros(fr.s.shape)) is None


# --------------------------------------------------------------------------- render_panoramic


def test_render_returns_uint8_image_and_valid_boxes(sample):
    for img, anns in sample[:10]:
        assert img.shape == (290, 512) and img.dtype == np.uint8
        assert 30 < img.mean() < 200 and img.max() >= 250  # dark background, bright restorations
        for a in anns:
            assert a["category"] in CLASSES
            x, y, w, h = a["bbox"]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0
            assert x + w <= 512 and y + h <= 290


@pytest.mark.parametrize("size", [(64, 40), (300, 600), (1991, 1127)])
def test_render_any_size(size):
    w, h = size
    img, anns = render_panoramic(image_rng(3, "test", 0), w, h)
    assert img.shape == (h, w)
    for a in anns:
        x, y, bw, bh = a["bbox"]
        assert bw >= 1 and bh >= 1 and 0 <= x and x + bw <= w and 0 <= y and y + bh <= h


def test_same_scene_at_another_resolution():
    """The scene is drawn before any pixel: large objects are the same at every size."""
    large = {"Wisdom Tooth", "Missing Tooth", "Implant", "Porcelain Crown", "Ceramic Bridge"}
    for i in range(4):
        a = [x["category"] for x in render_panoramic(image_rng(0, "val", i), 256, 145)[1]]
        b = [x["category"] for x in render_panoramic(image_rng(0, "val", i), 512, 290)[1]]
        assert sorted(c for c in a if c in large) == sorted(c for c in b if c in large)


def test_statistics_like_the_real_set(sample):
    per_image = [len(anns) for _, anns in sample]
    assert 5.0 <= np.mean(per_image) <= 8.0
    sizes = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for _, anns in sample for a in anns])
    p5, p95 = np.percentile(sizes, [5, 95])
    assert p95 / p5 >= 10.0, (p5, p95)


def test_long_tailed_class_distribution():
    """Head/tail >= 10 over ~800 boxes (120 tiny images; which objects exist does not depend
    on the size, only the smallest lesions can vanish at 256 x 145)."""
    counts = collections.Counter(
        a["category"] for i in range(120) for a in render_panoramic(image_rng(1, "train", i), **SMALL)[1]
    )
    assert set(counts) == set(CLASSES)
    assert max(counts.values()) >= 10 * min(counts.values()), counts
    assert counts["Dental Filling"] > counts["Implant"] and counts["Decay"] > counts["Ceramic Bridge"]


def test_signatures_are_distinct(sample):
    """Restorations are bright inside their box; decay, gaps and apical lesions are darker than
    the ring of pixels around their box."""
    bright = {"Dental Filling", "Root Canal Filling", "Implant", "Porcelain Crown", "Ceramic Bridge"}
    dark = collections.defaultdict(list)
    for img, anns in sample:
        img = img.astype(np.float64)
        for a in anns:
            x, y, w, h = (int(round(v)) for v in a["bbox"])
            box = img[y : y + h, x : x + w]
            if a["category"] in bright:
                assert box.max() >= 230, a
            else:
                big = img[max(0, y - 6) : y + h + 6, max(0, x - 6) : x + w + 6]
                ring = (big.sum() - box.sum()) / max(1, big.size - box.size)
                dark[a["category"]].append(box.mean() < ring)
    for cat in ("Decay", "Missing Tooth", "Apical Periodontitis"):
        assert len(dark[cat]) >= 5 and np.mean(dark[cat]) >= 0.75, (cat, dark[cat])


# --------------------------------------------------------------------------- generate_dataset


def test_layout_and_coco_fields(tmp_path):
    root = generate_dataset(tmp_path / "s", train=3, val=2, test=0, seed=5, progress=False, **SMALL)
    assert root == tmp_path / "s"
    assert sorted(p.name for p in (root / "train2017").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert len(list((root / "val2017").iterdir())) == 2
    assert not (root / "test2017").exists() and not (root / "annotations" / "instances_test2017.json").exists()
    for split, n in (("train", 3), ("val", 2)):
        coco = _load(root, split)
        assert set(coco) >= {"info", "licenses", "images", "annotations", "categories"}
        assert coco["info"]["description"] == synthetic.DESCRIPTION
        assert [c["name"] for c in coco["categories"]] == list(CLASSES)
        assert [c["id"] for c in coco["categories"]] == list(range(1, 10))
        assert all("supercategory" in c for c in coco["categories"])
        assert [im["id"] for im in coco["images"]] == list(range(1, n + 1))
        for im in coco["images"]:
            assert im["width"] == 256 and im["height"] == 145
            assert (root / f"{split}2017" / im["file_name"]).is_file()
        ids = [a["id"] for a in coco["annotations"]]
        assert ids == list(range(1, len(ids) + 1))
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["image_id"] in range(1, n + 1) and 1 <= a["category_id"] <= 9
            assert a["area"] == pytest.approx(w * h, abs=0.02) and a["iscrowd"] == 0
    marker = json.loads((root / MARKER).read_text())
    assert marker["params"] == {"train": 3, "val": 2, "test": 0, "seed": 5, "width": 256, "height": 145}
    # the marker is written last: a folder without it is an interrupted one
    newest = max(p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != MARKER)
    assert (root / MARKER).stat().st_mtime_ns >= newest
    assert not list(root.rglob("*.tmp"))


def test_files_match_render_and_load_with_the_dataset(tmp_path):
    from PIL import Image

    from oralx_lib.data import OralXrays9

    root = generate_dataset(tmp_path, train=2, val=0, test=0, seed=11, progress=False, **SMALL)
    img, anns = render_panoramic(image_rng(11, "train", 1), **SMALL)
    decoded = np.asarray(Image.open(root / "train2017" / "000002.jpg"))
    assert decoded.shape == img.shape and np.abs(decoded.astype(int) - img).mean() < 4.0  # JPEG
    coco = _load(root, "train")
    got = [(a["category_id"], a["bbox"]) for a in coco["annotations"] if a["image_id"] == 2]
    assert got == [(CLASSES.index(a["category"]) + 1, [round(v, 2) for v in a["bbox"]]) for a in anns]
    ds = OralXrays9(root, "train")
    assert len(ds) == 2
    image, target = ds[1]
    assert tuple(image.shape) == (3, 145, 256)
    assert target["labels"].tolist() == [CLASSES.index(a["category"]) + 1 for a in anns]


def test_deterministic_byte_identical(tmp_path):
    a = generate_dataset(tmp_path / "a", train=2, val=1, test=1, seed=3, progress=False, **SMALL)
    b = generate_dataset(tmp_path / "b", train=2, val=1, test=1, seed=3, progress=False, **SMALL)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and fa == fb
    c = generate_dataset(tmp_path / "c", train=2, val=1, test=1, seed=4, progress=False, **SMALL)
    assert _files(c)["train2017/000001.jpg"] != fa["train2017/000001.jpg"]


def test_images_independent_of_split_sizes(tmp_path):
    a = generate_dataset(tmp_path / "a", train=1, val=2, test=0, seed=9, progress=False, **SMALL)
    b = generate_dataset(tmp_path / "b", train=3, val=1, test=0, seed=9, progress=False, **SMALL)
    for name in ("train2017/000001.jpg", "val2017/000001.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    def first_image(coco):
        return [(x["category_id"], x["bbox"]) for x in coco["annotations"] if x["image_id"] == 1]

    assert first_image(_load(a, "val")) == first_image(_load(b, "val"))
    assert first_image(_load(a, "train")) == first_image(_load(b, "train"))
    # an image is the same whatever order it is generated in
    assert np.array_equal(render_panoramic(image_rng(9, "val", 1), **SMALL)[0],
                          render_panoramic(image_rng(9, "val", 1), **SMALL)[0])


def test_regenerating_removes_stale_files(tmp_path):
    generate_dataset(tmp_path, train=3, val=1, test=1, seed=0, progress=False, **SMALL)
    generate_dataset(tmp_path, train=1, val=1, test=0, seed=0, progress=False, **SMALL)
    assert [p.name for p in (tmp_path / "train2017").iterdir()] == ["000001.jpg"]
    assert not (tmp_path / "annotations" / "instances_test2017.json").exists()
    assert not (tmp_path / "test2017").exists()


def test_refuses_to_overwrite_a_real_dataset(tmp_path):
    from oralx_lib.data import DatasetError

    ann = tmp_path / "annotations" / "instances_train2017.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"info": {"description": "OralXrays-9"}, "images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        generate_dataset(tmp_path, train=1, val=0, test=0, seed=0, progress=False, **SMALL)
    # ensure_synthetic leaves a real dataset alone and returns its root
    assert ensure_synthetic(tmp_path, train=1, val=0, test=0, progress=False, **SMALL) == tmp_path
    assert not (tmp_path / MARKER).exists() and not (tmp_path / "train2017").exists()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(train=-1), "train"),
        (dict(val=1.5), "val"),
        (dict(width=10), "size"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_parameters_raise_config_error(tmp_path, kwargs, field):
    params = dict(train=1, val=0, test=0, seed=0, **SMALL)
    params.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        generate_dataset(tmp_path, progress=False, **params)
    assert not (tmp_path / MARKER).exists()


# --------------------------------------------------------------------------- ensure_synthetic


def test_ensure_synthetic_generates_once_and_on_change(tmp_path, monkeypatch):
    small = dict(train=2, val=1, test=0, progress=False, **SMALL)
    calls = []
    real = synthetic.generate_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic.writer, "generate_dataset", counting)
    root = tmp_path / "data"
    assert ensure_synthetic(root, **small) == root and len(calls) == 1
    assert ensure_synthetic(root, **small) == root and len(calls) == 1  # up to date: untouched
    ensure_synthetic(root, **{**small, "train": 3})  # parameters changed: regenerated
    assert len(calls) == 2 and len(list((root / "train2017").iterdir())) == 3
    (root / MARKER).unlink()  # an interrupted run: no marker
    ensure_synthetic(root, **{**small, "train": 3})
    assert len(calls) == 3 and (root / MARKER).exists()
    assert calls[-1]["seed"] == DEFAULTS["seed"]


def test_ensure_synthetic_default_root_and_bad_keyword(tmp_path, monkeypatch):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "env"))
    root = ensure_synthetic(train=1, val=0, test=0, progress=False, **SMALL)
    assert root == tmp_path / "env" and (root / MARKER).exists()
    with pytest.raises(ConfigError, match="unknown parameter"):
        ensure_synthetic(tmp_path, trian=3)


def test_defaults_are_the_documented_ballpark():
    assert DEFAULTS["width"] / DEFAULTS["height"] == pytest.approx(1991 / 1127, rel=0.01)
    assert 120 <= DEFAULTS["train"] <= 160 and DEFAULTS["val"] == DEFAULTS["test"] == 40


# --------------------------------------------------------------------------- CLI


def test_main_in_process(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path), "--train", "1", "--val", "1", "--test", "0",
                           "--width", "128", "--height", "72", "--seed", "2", "--quiet"]) == 0
    assert "synthetic set ready" in capsys.readouterr().out
    assert json.loads((tmp_path / MARKER).read_text())["params"]["seed"] == 2
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(tmp_path), "--train", "-2", "--quiet"])
    assert exc.value.code == 2


@pytest.mark.slow  # a fresh interpreter imports torch (a few seconds on 2 cores)
def test_script_runs_from_the_repo_root(tmp_path):
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "data_scripts/make_synthetic.py", "--out", str(tmp_path), "--train", "1",
         "--val", "0", "--test", "0", "--width", "128", "--height", "72", "--if-needed", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "train2017" / "000001.jpg").is_file() and (tmp_path / MARKER).is_file()


# --------------------------------------------------------------------------- rare-class enrichment


def _per_class(coco: dict) -> dict[str, int]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    counts = collections.Counter(names[a["category_id"]] for a in coco["annotations"])
    return {c: counts.get(c, 0) for c in CLASSES}


def test_rare_eval_enriches_val_and_test_only(tmp_path):
    plain = generate_dataset(tmp_path / "plain", train=2, val=1, test=1, seed=2, progress=False,
                             **SMALL)
    rare = generate_dataset(tmp_path / "rare", train=2, val=1, test=1, seed=2, progress=False,
                            min_boxes_per_class_eval=4, **SMALL)
    # training split: the very same files (the long tail is kept)
    for name in ("annotations/instances_train2017.json", "train2017/000001.jpg",
                 "train2017/000002.jpg"):
        assert (plain / name).read_bytes() == (rare / name).read_bytes()
    marker = json.loads((rare / MARKER).read_text())
    assert marker["params"]["min_boxes_per_class_eval"] == 4
    for split in ("val", "test"):
        coco = _load(rare, split)
        counts = _per_class(coco)
        assert min(counts.values()) >= 4, (split, counts)
        assert marker["counts"][split]["per_class"] == counts
        # the regular image comes first and is unchanged; the rest are enrichment draws
        assert (plain / f"{split}2017/000001.jpg").read_bytes() == \
            (rare / f"{split}2017/000001.jpg").read_bytes()
        extra = [im for im in coco["images"] if "enrichment_candidate" in im]
        assert len(extra) == len(coco["images"]) - 1 == marker["counts"][split]["enriched_images"]
        assert len(extra) > 0
        # every kept image was needed: without the last one some class would be short
        last = extra[-1]["id"]
        without = collections.Counter(
            coco["categories"][a["category_id"] - 1]["name"]
            for a in coco["annotations"] if a["image_id"] != last)
        assert min(without.get(c, 0) for c in CLASSES) < 4
    # deterministic: the same call writes the same bytes
    again = generate_dataset(tmp_path / "again", train=2, val=1, test=1, seed=2, progress=False,
                             min_boxes_per_class_eval=4, **SMALL)
    assert _files(again) == _files(rare)


def test_rare_eval_off_keeps_the_marker_and_ensure_accepts_it(tmp_path):
    root = generate_dataset(tmp_path / "a", train=1, val=1, test=0, seed=0, progress=False,
                            min_boxes_per_class_eval=0, **SMALL)
    assert "min_boxes_per_class_eval" not in json.loads((root / MARKER).read_text())["params"]
    rare = ensure_synthetic(tmp_path / "b", train=1, val=1, test=0, seed=0, progress=False,
                            min_boxes_per_class_eval=2, **SMALL)
    assert min(_per_class(_load(rare, "val")).values()) >= 2
    with pytest.raises(ConfigError, match="min_boxes_per_class_eval"):
        generate_dataset(tmp_path / "c", train=1, val=1, test=0, seed=0, progress=False,
                         min_boxes_per_class_eval=-1, **SMALL)


def test_scene_classes_cover_the_drawn_boxes():
    from oralx_lib.data.synthetic.scene import _sample_scene, _scene_classes

    for i in range(12):
        _, anns = render_panoramic(image_rng(0, "val", i), **SMALL)
        assert {a["category"] for a in anns} <= _scene_classes(_sample_scene(image_rng(0, "val", i)))


@pytest.mark.slow  # ~15 s of CPU: ~150 enrichment images per split at 256 x 145
def test_rare_eval_cli_gives_fifty_boxes_per_class(tmp_path):
    assert synthetic.main(["--out", str(tmp_path), "--train", "2", "--val", "2", "--test", "2",
                           "--width", "256", "--height", "145", "--rare-eval", "--quiet"]) == 0
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["params"]["min_boxes_per_class_eval"] == synthetic.RARE_EVAL_MIN_BOXES == 50
    for split in ("val", "test"):
        assert min(_per_class(_load(tmp_path, split)).values()) >= 50
    train = _per_class(_load(tmp_path, "train"))
    assert sum(train.values()) == marker["counts"]["train"]["annotations"] < 50
