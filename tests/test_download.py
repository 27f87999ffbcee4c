"""The real-data path: download (gdown mocked, no network), extract, arrange, verify, split.

Every archive here is made by the tests from tiny 64x48 JPEGs and COCO files with the nine names.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from oralx_lib import CLASSES
from oralx_lib.data import real as dl
from oralx_lib.data.real import download as whole_path
from oralx_lib.data.dataset import DatasetError, OralXrays9
from oralx_lib.errors import ConfigError

pyzipper = pytest.importorskip("pyzipper")

PASSWORD = dl.ARCHIVE_PASSWORD
REPO = Path(__file__).resolve().parent.parent
HAS_UNZIP = shutil.which("unzip") is not None
HAS_ZIP = shutil.which("zip") is not None

#: Boxes per image (by class name) of the small dataset used throughout.
TRAIN = [["Decay", "Implant"], [], ["Decay"], ["Wisdom Tooth", "Missing Tooth", "Decay"]]
VAL = [["Apical Periodontitis"], ["Dental Filling", "Root Canal Filling"], [],
       ["Porcelain Crown"], ["Ceramic Bridge"], ["Decay"], ["Implant"], [], ["Decay"], ["Decay"]]


# ------------------------------------------------------------------------------------------------
# dataset and archive builders
# ------------------------------------------------------------------------------------------------
def jpeg_bytes(seed: int, size=(64, 48)) -> bytes:
    im = Image.linear_gradient("L").resize(size)
    draw = ImageDraw.Draw(im)
    x, y = 4 + (seed * 7) % 40, 4 + (seed * 5) % 30
    draw.rectangle([x, y, x + 12, y + 10], fill=(seed * 37) % 256)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def categories(names=CLASSES) -> list[dict]:
    # ids deliberately not 1..9 in the released order: everything must go by name
    return [{"id": 100 + 8 - k, "name": n} for k, n in enumerate(names)][::-1]


def write_split(root: Path, split: str, boxes: list[list[str]], *, first_id: int = 1,
                names=CLASSES) -> dict:
    """Write ``root/{split}2017/*.jpg`` and ``root/annotations/instances_{split}2017.json``."""
    cats = categories(names)
    cat_id = {cls: next(c["id"] for c in cats if c["name"] == names[k])
              for k, cls in enumerate(CLASSES)}
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, classes in enumerate(boxes):
        iid = first_id + k
        name = f"{split}_{iid:04d}.jpg"
        (img_dir / name).write_bytes(jpeg_bytes(iid))
        images.append({"id": iid, "file_name": name, "width": 64, "height": 48})
        for j, cls in enumerate(classes):
            anns.append({"id": iid * 10 + j, "image_id": iid, "category_id": cat_id[cls],
                         "bbox": [2 + 3 * j, 2 + 2 * j, 10 + j, 8 + j], "area": 80.0,
                         "iscrowd": 0})
    data = {"info": {"description": "test"}, "images": images, "annotations": anns,
            "categories": cats}
    ann = root / "annotations" / f"instances_{split}2017.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data))
    return data


def make_dataset(root: Path, *, test: list[list[str]] | None = None) -> Path:
    write_split(root, "train", TRAIN, first_id=1)
    write_split(root, "val", VAL, first_id=101)
    if test is not None:
        write_split(root, "test", test, first_id=201)
    return root


def tree_files(src: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(src).as_posix(): p.read_bytes()
            for p in sorted(src.rglob("*")) if p.is_file()}


# -- TEST-ONLY ZipCrypto writer -------------------------------------------------------------------
# No installed library writes the traditional PKWARE ("ZipCrypto") encryption that most released
# datasets use (pyzipper only reads it), so the tests carry a minimal writer from the format's
# description: three 32-bit keys updated with CRC-32 steps, a 12-byte encrypted header whose last
# byte is the CRC's high byte. The cipher is broken: never use this to protect anything.
def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


class _PkwareEncrypter:
    def __init__(self, password: bytes) -> None:
        self.k0, self.k1, self.k2 = 0x12345678, 0x23456789, 0x34567890
        for b in password:
            self._update(b)

    def _update(self, b: int) -> None:
        self.k0 = (self.k0 >> 8) ^ _CRC[(self.k0 ^ b) & 0xFF]
        self.k1 = ((self.k1 + (self.k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        self.k2 = (self.k2 >> 8) ^ _CRC[(self.k2 ^ (self.k1 >> 24)) & 0xFF]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray(len(data))
        for i, p in enumerate(data):
            t = (self.k2 | 2) & 0xFFFF
            out[i] = p ^ (((t * (t ^ 1)) >> 8) & 0xFF)
            self._update(p)
        return bytes(out)


def write_zipcrypto(path: Path, files: dict[str, bytes], password: bytes, seed: int = 0) -> None:
    """TEST-ONLY: a deflated zip whose members are ZipCrypto-encrypted."""
    rng = random.Random(seed)
    local, central = bytearray(), bytearray()
    for name, data in files.items():
        crc = zlib.crc32(data)
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = comp.compress(data) + comp.flush()
        header = bytes(rng.randrange(256) for _ in range(11)) + bytes([crc >> 24])
        payload = _PkwareEncrypter(password).encrypt(header + body)
        fname = name.encode()
        offset = len(local)
        # version 2.0, flag bit 0 = encrypted, method 8 = deflate, date 1980-01-01
        local += struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", 20, 1, 8, 0, 0x21, crc,
                             len(payload), len(data), len(fname), 0) + fname + payload
        central += struct.pack("<4sHHHHHHLLLHHHHHLL", b"PK\x01\x02", 20, 20, 1, 8, 0, 0x21, crc,
                               len(payload), len(data), len(fname), 0, 0, 0, 0, 0,
                               offset) + fname
    end = struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, len(files), len(files), len(central),
                      len(local), 0)
    path.write_bytes(bytes(local + central + end))


def write_zip(path: Path, files: dict[str, bytes], mode: str, password: str = PASSWORD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "plain":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    elif mode == "aes":
        with pyzipper.AESZipFile(path, "w", compression=pyzipper.ZIP_DEFLATED,
                                 encryption=pyzipper.WZ_AES) as zf:
            zf.setpassword(password.encode())
            for name, data in files.items():
                zf.writestr(name, data)
    elif mode == "zipcrypto":
        write_zipcrypto(path, files, password.encode())
    else:
        raise AssertionError(mode)
    return path


SAMPLE = {"a/one.txt": b"first file\n" * 50, "a/b/two.bin": bytes(range(256)) * 8,
          "three.txt": b"3"}


def assert_tree(dest: Path, files: dict[str, bytes]) -> None:
    got = {p.relative_to(dest).as_posix(): p.read_bytes()
           for p in dest.rglob("*") if p.is_file()}
    assert got == files


# ------------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_UNZIP, reason="needs the unzip program")
def test_zipcrypto_test_helper_writes_what_unzip_reads(tmp_path):
    z = write_zip(tmp_path / "c.zip", SAMPLE, "zipcrypto")
    ok = subprocess.run(["unzip", "-t", "-P", PASSWORD, str(z)], capture_output=True)
    bad = subprocess.run(["unzip", "-t", "-P", "nope", str(z)], capture_output=True)
    assert ok.returncode == 0, ok.stdout
    assert bad.returncode != 0


@pytest.mark.parametrize("mode", ["plain", "aes", "zipcrypto"])
def test_extract_each_kind_of_zip(tmp_path, mode):
    z = write_zip(tmp_path / "x.zip", SAMPLE, mode)
    with zipfile.ZipFile(z) as zf:  # the encryption really is what the name says
        flags = {i.flag_bits & 1 for i in zf.infolist()}
        methods = {i.compress_type for i in zf.infolist()}
    assert flags == ({0} if mode == "plain" else {1})
    assert (99 in methods) == (mode == "aes")
    res = dl.extract_archive(z, tmp_path / "out", progress=False, engine="python")
    assert_tree(tmp_path / "out", SAMPLE)
    assert (res.extracted, res.skipped, res.nested) == (3, 0, [])


@pytest.mark.skipif(not HAS_UNZIP, reason="needs the unzip program")
@pytest.mark.parametrize("engine", ["unzip", "auto"])
def test_extract_zipcrypto_with_unzip_program(tmp_path, monkeypatch, engine):
    z = write_zip(tmp_path / "x.zip", SAMPLE, "zipcrypto")
    res = dl.extract_archive(z, tmp_path / "out", progress=False, engine=engine)
    assert_tree(tmp_path / "out", SAMPLE)  # staging folder gone, no leftovers
    assert res.extracted == 3 and res.by_program == 3  # the unzip program wrote every member


@pytest.mark.parametrize("mode,engine", [("aes", "python"), ("zipcrypto", "python")]
                         + ([("zipcrypto", "unzip")] if HAS_UNZIP else []))
def test_wrong_password_names_the_readme_password(tmp_path, monkeypatch, mode, engine):
    z = write_zip(tmp_path / "x.zip", SAMPLE, mode)
    with pytest.raises(dl.DownloadError) as err:
        dl.extract_archive(z, tmp_path / "out", password="not-it", progress=False, engine=engine)
    msg = str(err.value)
    assert PASSWORD in msg and "--password" in msg and "x.zip" in msg
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert leftovers == []  # no partial or temporary file


def test_encrypted_zip_without_password(tmp_path):
    z = write_zip(tmp_path / "x.zip", SAMPLE, "aes")
    with pytest.raises(dl.DownloadError, match="no password"):
        dl.extract_archive(z, tmp_path / "out", password=None, progress=False)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(dl.DownloadError, match="not a readable zip"):
        dl.extract_archive(bad, tmp_path / "out", progress=False)


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "a/../../evil.txt", "C:/evil.txt",
                                  "..\\evil.txt"])
def test_members_outside_dest_are_refused(tmp_path, name):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.txt", b"fine")  # listed first: must not be written either
        zf.writestr(zipfile.ZipInfo(name), b"gotcha")
    dest = tmp_path / "x" / "out"
    with pytest.raises(dl.DownloadError) as err:
        dl.extract_archive(z, dest, progress=False)
    assert repr(name) in str(err.value) and "outside" in str(err.value)
    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.txt")) and not list(tmp_path.rglob("abs.txt"))


def test_symlink_member_is_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../../etc/passwd")
    with pytest.raises(dl.DownloadError, match="'data/link' is a symbolic link"):
        dl.extract_archive(z, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "data" / "link").exists()


def test_extraction_resumes(tmp_path, monkeypatch):
    z = write_zip(tmp_path / "x.zip", SAMPLE, "aes")
    dest = tmp_path / "out"
    # an interruption after the first member: only complete files carry their final name

    def interrupt(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dl.extract_archive(z, dest, progress=False, on_member=interrupt)
    written = [p for p in dest.rglob("*") if p.is_file()]
    assert len(written) == 1 and written[0].read_bytes() == SAMPLE[written[0].relative_to(dest)
                                                                  .as_posix()]
    res = dl.extract_archive(z, dest, progress=False)
    assert (res.extracted, res.skipped) == (2, 1)
    assert_tree(dest, SAMPLE)

    # a damaged file (wrong size) is redone; the others are left alone
    keep = (dest / "a" / "one.txt").stat().st_mtime_ns
    (dest / "three.txt").write_bytes(b"")
    res = dl.extract_archive(z, dest, progress=False)
    assert (res.extracted, res.skipped) == (1, 2)
    assert_tree(dest, SAMPLE)
    assert (dest / "a" / "one.txt").stat().st_mtime_ns == keep


def test_nested_zip_is_extracted_too(tmp_path):
    inner = write_zip(tmp_path / "inner.zip", SAMPLE, "aes").read_bytes()
    outer = write_zip(tmp_path / "outer.zip", {"pack/inner.zip": inner, "readme.txt": b"hi"},
                      "zipcrypto")
    res = dl.extract_archive(outer, tmp_path / "out", progress=False, engine="python")
    assert res.nested == [tmp_path / "out" / "pack" / "inner.zip"]
    assert_tree(tmp_path / "out" / "pack" / "inner", SAMPLE)
    assert (tmp_path / "out" / "readme.txt").read_bytes() == b"hi"


def test_zip_cut_into_numbered_pieces(tmp_path):
    whole = write_zip(tmp_path / "whole.zip", SAMPLE, "aes").read_bytes()
    cut = [0, 700, 1500, len(whole)]
    for k in range(3):
        (tmp_path / f"data.zip.{k + 1:03d}").write_bytes(whole[cut[k]: cut[k + 1]])
    res = dl.extract_archive(tmp_path / "data.zip.001", tmp_path / "out", progress=False)
    assert res.extracted == 3
    assert_tree(tmp_path / "out", SAMPLE)


@pytest.mark.skipif(not HAS_ZIP, reason="needs the zip program to make a spanned archive")
def test_spanned_archive(tmp_path):
    src = tmp_path / "src"
    rng = random.Random(0)
    files = {f"d/f{k}.bin": bytes(rng.randrange(256) for _ in range(40_000)) for k in range(4)}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    subprocess.run(["zip", "-q", "-s", "64k", "-P", PASSWORD, "-r", str(tmp_path / "s.zip"), "d"],
                   cwd=src, check=True)
    assert (tmp_path / "s.z01").exists() and (tmp_path / "s.z02").exists()
    res = dl.extract_archive(tmp_path / "s.z01", tmp_path / "out", progress=False)
    assert_tree(tmp_path / "out", files)
    assert res.extracted == 4


# ------------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------------
def test_normalise_from_a_nested_layout(tmp_path):
    ref = make_dataset(tmp_path / "ref")
    ex = tmp_path / "ex"
    (ex / "OralXrays-9" / "annotations").mkdir(parents=True)
    shutil.copy(ref / "annotations" / "instances_train2017.json",
                ex / "OralXrays-9" / "annotations" / "instances_train2017.json")
    shutil.copytree(ref / "train2017", ex / "OralXrays-9" / "images" / "train2017")
    (ex / "extra" / "val").mkdir(parents=True)
    shutil.copy(ref / "annotations" / "instances_val2017.json",
                ex / "extra" / "val" / "_annotations.coco.json")  # split from the folder
    shutil.copytree(ref / "val2017", ex / "extra" / "pictures")
    # a same-named file in the train folder must not be taken for a val image
    decoy = ex / "OralXrays-9" / "images" / "train2017" / "val_0101.jpg"
    decoy.write_bytes(b"decoy")
    (ex / "__MACOSX").mkdir()
    (ex / "__MACOSX" / "train.json").write_text("{}")

    out = dl.normalise_layout(ex, tmp_path / "root", progress=False)
    for split in ("train", "val"):
        assert (out / "annotations" / f"instances_{split}2017.json").read_bytes() == (
            ref / "annotations" / f"instances_{split}2017.json").read_bytes()
        for p in (ref / f"{split}2017").iterdir():
            assert (out / f"{split}2017" / p.name).read_bytes() == p.read_bytes()
    # hard links: nothing stored twice
    src = ex / "extra" / "pictures" / "val_0101.jpg"
    assert os.stat(src).st_ino == os.stat(out / "val2017" / "val_0101.jpg").st_ino
    assert dl.verify_dataset(out, expected=None, progress=False).ok
    dl.normalise_layout(ex, out, progress=False)  # again: nothing to do, still fine
    assert os.stat(src).st_ino == os.stat(out / "val2017" / "val_0101.jpg").st_ino


def test_normalise_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(dl.DownloadError, match="No COCO annotation file"):
        dl.normalise_layout(tmp_path / "empty", tmp_path / "out", progress=False)
    two = tmp_path / "two"
    write_split(two / "a", "train", TRAIN)
    write_split(two / "b", "train", TRAIN)
    with pytest.raises(dl.DownloadError, match="Several annotation files look like the train"):
        dl.normalise_layout(two, tmp_path / "out", progress=False)
    odd = tmp_path / "odd"
    write_split(odd, "train", TRAIN)
    os.replace(odd / "annotations" / "instances_train2017.json", odd / "labels.json")
    with pytest.raises(dl.DownloadError, match="Cannot tell which split"):
        dl.normalise_layout(odd, tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------------
def test_verify_counts_by_hand(tmp_path):
    root = make_dataset(tmp_path / "d")
    rep = dl.verify_dataset(root, progress=False)
    assert rep.ok, rep.problems
    assert (rep.splits["train"].images, rep.splits["train"].boxes) == (4, 6)
    assert (rep.splits["val"].images, rep.splits["val"].boxes) == (10, 9)
    assert rep.totals == {"images": 14, "boxes": 15}
    per_class = rep.per_class_total()
    assert per_class["Decay"] == 3 + 3 and per_class["Implant"] == 2
    assert per_class["Wisdom Tooth"] == per_class["Ceramic Bridge"] == 1
    assert sum(per_class.values()) == 15
    assert rep.splits["train"].image_sizes == {(64, 48): 4}
    assert rep.missing_splits == ["test"]
    # no test split and totals far from the paper's: warnings only
    assert any("no test split" in w for w in rep.warnings)
    assert any("12,688" in w and "may be expected" in w for w in rep.warnings)
    s = rep.summary()
    assert "(missing)" in s and "result: OK" in s and "Decay 6" in s
    json.dumps(rep.to_dict())
    # the loader reads what verify passed
    assert len(OralXrays9(root, "train")) == 4


def test_verify_totals_against_expected(tmp_path):
    root = make_dataset(tmp_path / "d", test=[["Decay"], ["Implant", "Implant"]])
    rep = dl.verify_dataset(root, expected={"images": 16, "boxes": 18}, progress=False)
    assert rep.ok and not rep.warnings and rep.totals == {"images": 16, "boxes": 18}
    rep = dl.verify_dataset(root, progress=False)  # all splits there: a mismatch is a problem
    assert not rep.ok and "12,688" in rep.problems[0]
    assert dl.verify_dataset(root, expected=None, progress=False).ok


def test_verify_finds_problems(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train2017" / "train_0002.jpg").unlink()
    (root / "train2017" / "train_0003.jpg").write_bytes(b"not an image at all")
    good = (root / "val2017" / "val_0101.jpg").read_bytes()
    (root / "val2017" / "val_0101.jpg").write_bytes(good[: len(good) // 2])
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["categories"][0]["name"] = "Gum Disease"
    data["annotations"].append({"id": 900, "image_id": 1, "category_id": 999,
                                "bbox": [1, 1, 5, 5]})
    data["annotations"].append({"id": 901, "image_id": 1, "category_id": 104,
                                "bbox": [1, 2, "x", 4]})
    data["annotations"].append({"id": 902, "image_id": 77, "category_id": 104,
                                "bbox": [1, 2, 3, 4]})
    data["annotations"].append({"id": 903, "image_id": 1, "category_id": 104,
                                "bbox": [1, 2, 0.5, 4]})
    data["annotations"].append({"id": 904, "image_id": 1, "category_id": 104,
                                "bbox": [50, 40, 30, 30]})
    ann.write_text(json.dumps(data))

    rep = dl.verify_dataset(root, progress=False)
    text = "\n".join(rep.problems)
    assert not rep.ok
    assert "missing from" in text and "train_0002.jpg" in text
    assert "cannot be decoded" in text and "train_0003.jpg" in text and "val_0101.jpg" in text
    assert "'Gum Disease'" in text and f"{CLASSES[8]!r}" in text  # unknown and absent name
    assert "category_id not in 'categories'" in text and "999" in text
    assert "no finite [x, y, w, h]" in text and "901" in text
    assert "image id not in 'images'" in text and "902" in text
    warn = "\n".join(rep.warnings)
    assert "w < 1 or h < 1" in warn and "903" in warn
    assert "outside their image" in warn and "904" in warn

    quick = dl.verify_dataset(root, check_images=False, progress=False)
    qtext = "\n".join(quick.problems)
    assert "train_0002.jpg" in qtext and "cannot be decoded" not in qtext


def test_verify_relaxed_names_and_unreadable_json(tmp_path):
    names = [n.lower().replace(" ", "_") for n in CLASSES]  # the loader's rule accepts these
    root = tmp_path / "d"
    write_split(root, "train", TRAIN, names=names)
    write_split(root, "val", VAL, first_id=101)
    assert dl.verify_dataset(root, expected=None, progress=False).ok
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    rep = dl.verify_dataset(root, expected=None, progress=False)
    assert not rep.ok and "not valid JSON" in rep.problems[0]
    assert "(unreadable)" in rep.summary()
    with pytest.raises(DatasetError, match="not found"):
        dl.verify_dataset(tmp_path / "nowhere", progress=False)


# ------------------------------------------------------------------------------------------------
# test split
# ------------------------------------------------------------------------------------------------
def _ids(path: Path) -> list[int]:
    return sorted(im["id"] for im in json.loads(path.read_text())["images"])


def test_split_sizes_determinism_and_refusal(tmp_path):
    root = make_dataset(tmp_path / "d")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ann = root / "annotations"
    original = (ann / "instances_val2017.json").read_text()

    counts = dl.split_dataset(root, progress=False)
    order = list(range(101, 111))
    random.Random(0).shuffle(order)  # the documented rule, done by hand
    test_boxes = sum(len(VAL[i - 101]) for i in order[:3])
    assert counts == {"val": {"images": 7, "boxes": 9 - test_boxes},
                      "test": {"images": 3, "boxes": test_boxes}}
    assert _ids(ann / "instances_test2017.json") == sorted(order[:3])
    assert _ids(ann / "instances_val2017.json") == sorted(order[3:])
    val, test = (json.loads((ann / f"instances_{s}2017.json").read_text()) for s in ("val", "test"))
    assert counts["val"]["boxes"] == len(val["annotations"])
    assert counts["test"]["boxes"] == len(test["annotations"])
    assert len(val["annotations"]) + len(test["annotations"]) == 9
    assert {a["image_id"] for a in test["annotations"]} <= set(order[:3])
    assert test["categories"] == val["categories"] and test["info"] == {"description": "test"}
    assert (ann / "instances_val2017.orig.json").read_text() == original
    for im in test["images"]:
        moved = root / "test2017" / im["file_name"]
        assert os.stat(moved).st_ino == os.stat(root / "val2017" / im["file_name"]).st_ino
    assert dl.verify_dataset(root, expected=None, progress=False).ok

    dl.split_dataset(copy, progress=False)  # same seed, another copy: the same split
    assert _ids(copy / "annotations" / "instances_test2017.json") == sorted(order[:3])

    with pytest.raises(DatasetError, match="--force"):
        dl.split_dataset(root, progress=False)
    counts = dl.split_dataset(root, fraction=0.5, seed=3, force=True, progress=False)
    assert counts["val"]["images"] == counts["test"]["images"] == 5  # from the backup, 10 images
    new_test = {im["file_name"] for im in json.loads(
        (ann / "instances_test2017.json").read_text())["images"]}
    assert {p.name for p in (root / "test2017").iterdir()} == new_test
    assert len(list((root / "val2017").iterdir())) == 10


def test_split_seed_changes_the_split(tmp_path):
    picks = set()
    for seed in range(4):
        root = make_dataset(tmp_path / f"d{seed}")
        dl.split_dataset(root, seed=seed, progress=False)
        picks.add(tuple(_ids(root / "annotations" / "instances_test2017.json")))
    assert len(picks) > 1


def test_split_refuses_bad_requests(tmp_path):
    root = make_dataset(tmp_path / "d", test=[["Decay"]])
    with pytest.raises(DatasetError, match="already has a test split"):
        dl.split_dataset(root, force=True, progress=False)
    with pytest.raises(ConfigError, match="fraction"):
        dl.split_dataset(root, fraction=1.5, progress=False)
    with pytest.raises(ConfigError, match="two different splits"):
        dl.split_dataset(root, source="val", out_split="val", progress=False)


# ------------------------------------------------------------------------------------------------
# the whole path
# ------------------------------------------------------------------------------------------------
def release_archives(tmp_path: Path, *, drop: str | None = None) -> Path:
    """A 'Drive folder' with two zips: annotations (ZipCrypto) and images (AES)."""
    src = make_dataset(tmp_path / "src")
    if drop:
        (src / drop).unlink()
    files = tree_files(src, prefix="OralXrays-9/")
    drive = tmp_path / "drive"
    write_zip(drive / "OralXrays-9-annotations.zip",
              {k: v for k, v in files.items() if k.endswith(".json")}, "zipcrypto")
    write_zip(drive / "OralXrays-9-images.zip",
              {k: v for k, v in files.items() if k.endswith(".jpg")}, "aes")
    return drive


def test_prepare_from_a_folder_of_zips(tmp_path, monkeypatch):
    drive = release_archives(tmp_path)
    out = dl.prepare_oralxrays9(tmp_path / "data", from_archive=drive, progress=False)
    assert out == tmp_path / "data"
    state = json.loads((out / dl.STATE_FILE).read_text())
    assert state["done"] == ["extract", "normalise", "verify"]
    assert dl.verify_dataset(out, expected=None, progress=False).ok
    ds = OralXrays9(out, "val")
    assert len(ds) == 10 and sum(len(ds.record(i)["labels"]) for i in range(10)) == 9

    def boom(*a, **k):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(whole_path, "extract_archive", boom)
    monkeypatch.setattr(whole_path, "normalise_layout", boom)
    monkeypatch.setattr(whole_path, "verify_dataset", boom)
    assert dl.prepare_oralxrays9(out, from_archive=drive, progress=False) == out


def test_prepare_from_one_zip_and_from_an_extracted_folder(tmp_path):
    src = make_dataset(tmp_path / "src")
    z = write_zip(tmp_path / "all.zip", tree_files(src, prefix="OralXrays-9/"), "aes")
    out = dl.prepare_oralxrays9(tmp_path / "a", from_archive=z, progress=False)
    assert dl.verify_dataset(out, expected=None, progress=False).ok
    out = dl.prepare_oralxrays9(tmp_path / "b", from_archive=src, progress=False)
    assert dl.verify_dataset(out, expected=None, progress=False).ok
    assert len(list((src / "val2017").iterdir())) == 10  # the user's folder is left intact


def test_prepare_reports_problems_and_resumes(tmp_path):
    drive = release_archives(tmp_path, drop="val2017/val_0105.jpg")
    with pytest.raises(DatasetError, match="val_0105.jpg"):
        dl.prepare_oralxrays9(tmp_path / "data", from_archive=drive, progress=False)
    state = json.loads((tmp_path / "data" / dl.STATE_FILE).read_text())
    assert state["done"] == ["extract", "normalise"]


def test_prepare_downloads_when_no_archive_is_given(tmp_path, monkeypatch):
    drive = release_archives(tmp_path)
    calls = []

    def fake_download(url, dest, *, quiet=False):
        calls.append(url)
        shutil.copytree(drive, dest, dirs_exist_ok=True)
        return sorted(Path(dest).iterdir())

    monkeypatch.setattr(whole_path, "download_folder", fake_download)
    out = dl.prepare_oralxrays9(tmp_path / "data", url="https://drive.example/x", progress=False)
    assert calls == ["https://drive.example/x"]
    assert json.loads((out / dl.STATE_FILE).read_text())["done"] == [
        "download", "extract", "normalise", "verify"]


# ------------------------------------------------------------------------------------------------
# download_folder with gdown replaced (no network)
# ------------------------------------------------------------------------------------------------
gdown = pytest.importorskip("gdown")


class _Item:
    def __init__(self, id, path, local_path):
        self.id, self.path, self.local_path = id, path, local_path


def test_download_folder_lists_then_resumes_each_file(tmp_path, monkeypatch):
    calls = []

    def fake_folder(url=None, id=None, output=None, quiet=False, skip_download=False, **kw):
        assert skip_download and output == str(tmp_path / "dl")
        return [_Item("id1", "a.zip", os.path.join(output, "a.zip")),
                _Item("id2", "sub/b.zip", os.path.join(output, "sub", "b.zip"))]

    def fake_download(url=None, output=None, quiet=False, id=None, resume=False, **kw):
        calls.append((id, resume))
        Path(output).write_bytes(id.encode())
        return output

    monkeypatch.setattr(gdown, "download_folder", fake_folder)
    monkeypatch.setattr(gdown, "download", fake_download)
    got = dl.download_folder("https://drive.google.com/drive/folders/X", tmp_path / "dl",
                             quiet=True)
    assert got == [tmp_path / "dl" / "a.zip", tmp_path / "dl" / "sub" / "b.zip"]
    assert calls == [("id1", True), ("id2", True)]
    assert (tmp_path / "dl" / "sub" / "b.zip").read_bytes() == b"id2"


QUOTA = gdown.exceptions.FileURLRetrievalError(
    "Too many users have viewed or downloaded this file recently. Please try accessing the file "
    "again later.")
PRIVATE = gdown.exceptions.FileURLRetrievalError(
    "Cannot retrieve the public link of the file. You may need to change the permission to "
    "'Anyone with the link', or have had many accesses.")


def _offline():
    import requests

    return requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='drive.google.com', port=443): Max retries exceeded "
        "(NameResolutionError: Failed to resolve 'drive.google.com')")


def _forbidden():
    import requests

    return requests.exceptions.HTTPError("403 Client Error: Forbidden for url")


@pytest.mark.parametrize("where", ["listing", "file"])
@pytest.mark.parametrize("make_exc,expect", [
    (lambda: QUOTA, ["quota", "Retry in a few hours", "--from-archive"]),
    (lambda: PRIVATE, ["not public", "--url", "--from-archive"]),
    (_offline, ["offline", "run again", "--from-archive"]),
    (_forbidden, ["not public", "--from-archive"]),
    (lambda: ValueError("something new"), ["something new", "--from-archive"]),
])
def test_download_folder_maps_failures(tmp_path, monkeypatch, where, make_exc, expect):
    def fake_folder(url=None, output=None, quiet=False, skip_download=False, **kw):
        if where == "listing":
            raise make_exc()
        return [_Item("id1", "a.zip", os.path.join(output, "a.zip"))]

    def fake_download(**kw):
        raise make_exc()

    monkeypatch.setattr(gdown, "download_folder", fake_folder)
    monkeypatch.setattr(gdown, "download", fake_download)
    with pytest.raises(dl.DownloadError) as err:
        dl.download_folder("https://drive.google.com/drive/folders/X", tmp_path, quiet=True)
    assert isinstance(err.value, RuntimeError)
    for word in expect:
        assert word in str(err.value)
    if where == "file":
        assert "'a.zip'" in str(err.value)


def test_download_folder_with_an_older_gdown(tmp_path, monkeypatch):
    def old_folder(url=None, id=None, output=None, quiet=False, resume=False):
        assert resume
        return [os.path.join(output, "a.zip")] if url.endswith("full") else None

    monkeypatch.setattr(gdown, "download_folder", old_folder)
    assert dl.download_folder("u/full", tmp_path, quiet=True) == [tmp_path / "a.zip"]
    with pytest.raises(dl.DownloadError, match="returned nothing"):
        dl.download_folder("u/empty", tmp_path, quiet=True)


def test_download_folder_without_gdown(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)
    with pytest.raises(dl.DownloadError, match=r"pip install"):
        dl.download_folder("https://drive.google.com/drive/folders/X", tmp_path)


# ------------------------------------------------------------------------------------------------
# command lines
# ------------------------------------------------------------------------------------------------
def test_cli_exit_codes(tmp_path, capsys):
    drive = release_archives(tmp_path)
    out = tmp_path / "data"
    assert dl.download_main(["--out", str(out), "--from-archive", str(drive), "--quiet"]) == 0
    assert "dataset ready" in capsys.readouterr().out
    assert dl.download_main(["--out", str(tmp_path / "x"), "--from-archive",
                             str(tmp_path / "nope"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err

    report = tmp_path / "report.json"
    assert dl.verify_main([str(out), "--quiet", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["ok"] is True
    assert dl.verify_main([str(out), "--quiet", "--no-paper-counts", "--no-images"]) == 0
    assert dl.split_main([str(out), "--quiet"]) == 0
    assert "test: 3 images" in capsys.readouterr().out
    assert dl.split_main([str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert dl.split_main([str(out), "--quiet", "--force", "--fraction", "0.2"]) == 0
    assert dl.split_main([str(out), "--quiet", "--force", "--fraction", "2"]) == 2
    (out / "test2017" / next(iter(os.listdir(out / "test2017")))).unlink()
    assert dl.verify_main([str(out), "--quiet"]) == 1
    assert "problem" in capsys.readouterr().out
    assert dl.verify_main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow  # two fresh interpreters importing torch: ~8 s
def test_scripts_run_from_the_repo_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "data_scripts/verify_dataset.py",
                           str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "data_scripts/split_dataset.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "--fraction" in proc.stdout
