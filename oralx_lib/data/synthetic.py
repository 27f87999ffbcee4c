"""A procedural generator of OralXrays-9-like panoramic X-rays, in the released COCO layout.

The real archive cannot be downloaded everywhere (it is a password-protected Google Drive folder),
so the book, the tests and CI run on a synthetic set that this module writes in the same layout::

    out/annotations/instances_{train,val,test}2017.json   COCO, boxes [x, y, w, h] in pixels
    out/{train,val,test}2017/000001.jpg ...               8-bit grayscale JPEG
    out/SYNTHETIC.json                                    the generator's parameters (written last)

What an image holds
-------------------
A panoramic radiograph is a curved tomogram of both jaws unrolled onto a plane. Each image draws,
in an *attenuation* map ``A`` (arbitrary units; brighter = denser):

- soft tissue of the head, darker corners, the ghosts of the cervical spine at both edges and its
  double image in the midline;
- the mandible (U-shaped lower border with a bright cortex, rami and condyles, the mandibular
  canal), the maxilla with the hard palate, both maxillary sinuses, the nasal cavity with its
  septum, the zygomatic arches and the dark palatoglossal air space; band-pass noise inside bone
  gives the trabecular texture;
- 32 tooth positions along a smile-shaped occlusal curve
  ``y_occ(x) = y0 - c ((x - cx) / 0.3 W)^2``; upper teeth point their roots up, lower teeth down.
  A tooth is drawn in its own frame ``(s, t)`` (``s`` across the tooth, ``t`` from the occlusal
  surface to the apex): crown ``|s| <= w/2 (1 - k (t/h_c)^2)`` below an occlusal profile with
  cusps, enamel (the brightest natural tissue) as the outer shell of the crown, dentine, a darker
  pulp chamber and canals, 1-3 tapering roots ``r(tau) = r0 sqrt(1 - tau^3) (1 - 0.3 tau)``
  with a dark periodontal ligament and a bright lamina dura around them.

The image is ``I = 1 - exp(-k A)`` with a random exposure ``k``, an unsharp mask (the edge
enhancement of clinical software), a random gamma, blur and grain.

The nine anomalies (names from :data:`oralx_lib.CLASSES`) each have their own signature, and each
box is the tight box of the drawn mask (pixels with coverage >= 0.5), never of nominal parameters:

=====================  ==========================================================================
Apical Periodontitis   a dark, irregular halo around one root apex (bone removed, root kept)
Decay                  a dark irregular spot in a crown, proximal (60 %) or occlusal (40 %)
Wisdom Tooth           a third molar (position 8), often tilted and partly erupted; box = tooth
Missing Tooth          a gap in the row, the alveolar crest dips; box = the empty crown space
Dental Filling         a very bright irregular blob in a crown (occlusal, class II or cervical)
Root Canal Filling     very bright thin lines along the root canals; box = the lines
Implant                a bright threaded screw with an abutment and no root; box = screw+abutment
Porcelain Crown        a bright cap over a crown (also on implants); box = the cap
Ceramic Bridge         bright caps over 3-4 teeth joined over pontics without roots; box = caps
=====================  ==========================================================================

Frequencies follow a long tail like the real set (per image on average, measured on 300 images
at 512 x 290: 1.78 fillings, 1.21 decay, 1.07 wisdom teeth, 1.06 missing teeth, 0.71 root canal
fillings, 0.44 porcelain crowns, 0.36 apical lesions, 0.11 implants, 0.057 bridges: 6.8 boxes
per image, 1 % of images without any; head/tail 31). Sizes span small lesions to bridges: the
5th and 95th percentiles of ``sqrt(w h)`` are 6 and 73 px at 1024 x 580 (12x). A per-image
"dental condition" ``c ~ Gamma(3, 1/3)`` scales the disease and treatment rates, so some mouths
are clean and some heavily restored.

Determinism and independence
----------------------------
Image ``i`` (0-based) of split ``s`` is drawn from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(split_index, i)))``: the same seed gives
byte-identical files, an image does not depend on the split sizes, and images can be generated
in any order. The scene (anatomy and anomalies) is drawn in resolution-independent units before
any pixel, so the same seed at another size gives the same mouth at another resolution.

Defaults (:data:`DEFAULTS`)
---------------------------
``1024 x 580`` keeps the real images' aspect ratio (about 1991 x 1127, 1.77:1) at a size where a
tooth is 25-50 px wide, small lesions are 8-15 px, and a tiny detector trains on a CPU.
``train=160, val=40, test=40`` (240 images) generates in about 20 s on one free core
(``benchmarks/bench_synthetic.py``: ~13 images/s rendered and written at this size, ~4.4 at
1991 x 1127), "well under a minute" for the book build and CI, yet it holds ~1,100 training
boxes, enough for each chapter's tiny model to see every signature. ``seed=0``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .. import CLASSES
from ..errors import ConfigError, DatasetError
from ..files import write_bytes_atomic
from ..paths import default_data_root

#: The book's default synthetic set (see the module docstring for the choice).
DEFAULTS: dict[str, int] = {
    "train": 160,
    "val": 40,
    "test": 40,
    "width": 1024,
    "height": 580,
    "seed": 0,
}

#: Splits in the released layout, and their index in each image's seed.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Written at the root, last, with the parameters: its absence means "incomplete".
MARKER = "SYNTHETIC.json"

#: Bumped whenever the drawing changes, so :func:`ensure_synthetic` regenerates old sets.
GENERATOR_VERSION = 1

#: ``info.description`` of every JSON this module writes (tells a synthetic set from a real one).
DESCRIPTION = "OralXrays-9-like synthetic panoramic X-rays (oralx_lib.data.synthetic)"

_JPEG_QUALITY = 92
_MIN_SIZE = (64, 40)
_FILE_RE = re.compile(r"^\d{6}\.jpg$")

# --------------------------------------------------------------------------------------------
# Tooth templates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """One tooth position: its kind, width (fraction of the image width), crown height and root
    length (fractions of the image height) and roots ``(offset, width, lean, length)``:
    ``offset`` in cervical half-widths (negative = mesial), ``width`` in cervical half-widths,
    ``lean`` the distal drift of the apex in root lengths, ``length`` in root lengths."""

    kind: str
    width: float
    crown: float
    root: float
    roots: tuple[tuple[float, float, float, float], ...]
    trunk: float = 0.0  # root trunk length (root lengths) before multi-roots split


_SINGLE = ((0.0, 0.9, 0.0, 1.0),)
_UPPER = (
    _Template("incisor", 0.034, 0.086, 0.125, _SINGLE),
    _Template("incisor", 0.028, 0.076, 0.115, ((0.0, 0.9, 0.03, 1.0),)),
    _Template("canine", 0.032, 0.086, 0.165, ((0.0, 0.92, 0.03, 1.0),)),
    _Template("premolar", 0.030, 0.072, 0.125, ((-0.3, 0.55, 0.0, 1.0), (0.3, 0.55, 0.03, 0.96)), 0.45),
    _Template("premolar", 0.029, 0.068, 0.125, ((0.0, 0.88, 0.05, 1.0),)),
    _Template("molar", 0.046, 0.063, 0.110,
              ((-0.58, 0.42, -0.06, 0.95), (0.58, 0.42, 0.08, 1.0), (0.0, 0.38, 0.0, 0.88)), 0.3),
    _Template("molar", 0.043, 0.061, 0.105, ((-0.5, 0.45, 0.0, 0.95), (0.52, 0.45, 0.1, 1.0)), 0.3),
    _Template("molar", 0.040, 0.058, 0.085, ((-0.32, 0.55, 0.05, 0.9), (0.36, 0.5, 0.12, 1.0)), 0.4),
)
_LOWER = (
    _Template("incisor", 0.023, 0.072, 0.115, _SINGLE),
    _Template("incisor", 0.025, 0.072, 0.120, ((0.0, 0.9, 0.02, 1.0),)),
    _Template("canine", 0.030, 0.086, 0.150, ((0.0, 0.92, 0.03, 1.0),)),
    _Template("premolar", 0.031, 0.072, 0.130, ((0.0, 0.86, 0.04, 1.0),)),
    _Template("premolar", 0.032, 0.070, 0.135, ((0.0, 0.86, 0.05, 1.0),)),
    _Template("molar", 0.049, 0.064, 0.120, ((-0.6, 0.44, -0.03, 1.0), (0.6, 0.44, 0.1, 0.95)), 0.3),
    _Template("molar", 0.046, 0.062, 0.115, ((-0.55, 0.45, 0.02, 1.0), (0.55, 0.45, 0.12, 0.95)), 0.3),
    _Template("molar", 0.044, 0.060, 0.095, ((-0.4, 0.5, 0.08, 1.0), (0.4, 0.5, 0.16, 0.9)), 0.4),
)
# crown narrowing towards the neck, enamel thickness (tooth widths), pulp chamber (half-width
# fraction, start in crown heights)
_KIND = {
    "incisor": dict(narrow=0.34, enamel=0.15, pulp_w=0.16, pulp_t=0.45),
    "canine": dict(narrow=0.30, enamel=0.16, pulp_w=0.17, pulp_t=0.45),
    "premolar": dict(narrow=0.24, enamel=0.16, pulp_w=0.22, pulp_t=0.5),
    "molar": dict(narrow=0.14, enamel=0.15, pulp_w=0.3, pulp_t=0.52),
}
# per-tooth rates at condition c = 1
_FILL = {"incisor": 0.02, "canine": 0.015, "premolar": 0.055, "molar": 0.11}
_DECAY = {"incisor": 0.015, "canine": 0.012, "premolar": 0.05, "molar": 0.085}
_MISSING = (0.01, 0.015, 0.008, 0.035, 0.04, 0.09, 0.06)  # positions 1..7


# --------------------------------------------------------------------------------------------
# The scene: everything random about one image, in resolution-independent units
# --------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One of the 32 tooth positions. Lengths: ``x``, ``w`` in image widths; ``y``, ``hc``,
    ``hr`` in image heights; ``angle`` in radians (tangent of the curve plus the tooth's tilt)."""

    arch: str  # "upper" | "lower"
    side: int  # -1 image left, +1 image right; distal is +side in the tooth frame
    pos: int  # 1 (central incisor) .. 8 (wisdom tooth)
    tpl: _Template
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    hc: float = 0.0
    hr: float = 0.0
    angle: float = 0.0
    density: float = 1.0
    state: str = "natural"  # natural | missing | implant | pontic | absent
    roots_len: float = 1.0  # fraction of the full root length (developing wisdom teeth)
    socket: bool = False  # a missing tooth whose empty socket still shows
    porcelain: bool = False
    bridge: int = -1  # bridge id, -1 for none
    rct: bool = False
    decay: list = field(default_factory=list)
    fillings: list = field(default_factory=list)
    apical: dict | None = None
    implant: dict | None = None


@dataclass
class _Scene:
    cx: float
    y0: float
    curv: float
    asym: float
    gap0: float
    gap_ant: float
    slots: list
    anatomy: dict
    look: dict


def _occlusal_y(sc: _Scene, x: np.ndarray | float) -> np.ndarray | float:
    """``y_occ(x) = y0 - c u^2 + a u`` with ``u = (x - cx) / 0.3``, in image fractions."""
    u = (np.asarray(x) - sc.cx) / 0.3
    return sc.y0 - sc.curv * u * u + sc.asym * u


def _occlusal_slope(sc: _Scene, x: float) -> float:
    """``d y_occ / d x`` in image-fraction units (multiply by H / W for pixels)."""
    u = (x - sc.cx) / 0.3
    return (-2.0 * sc.curv * u + sc.asym) / 0.3


def _gap(sc: _Scene, x: float) -> float:
    """Vertical opening between the arches at ``x`` (bite block in front)."""
    return sc.gap0 + sc.gap_ant * math.exp(-(((x - sc.cx) / 0.07) ** 2))


def _blob(rng: np.random.Generator, cs: float, ct: float, rs: float, rt: float, irr: float) -> dict:
    """An irregular ellipse in tooth units: centre ``(cs, ct)``, radii ``(rs, rt)``, boundary
    ``1 + sum_k a_k sin(k theta + phi_k)`` for k = 2, 3, 5."""
    return dict(
        cs=cs, ct=ct, rs=rs, rt=rt,
        harm=[(k, float(rng.uniform(0, irr)) / k ** 0.5, float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5)],
    )


def _sample_scene(rng: np.random.Generator) -> _Scene:
    """Draw one mouth: arch shape, anatomy, look, and the state of each of the 32 slots."""
    sc = _Scene(
        cx=0.5 + rng.normal(0, 0.012),
        y0=0.515 + rng.normal(0, 0.015),
        curv=rng.uniform(0.045, 0.11),
        asym=rng.normal(0, 0.008),
        gap0=rng.uniform(-0.004, 0.01),
        gap_ant=rng.uniform(0.0, 0.02),
        slots=[],
        anatomy={},
        look={},
    )
    wscale = rng.uniform(0.93, 1.06)
    hscale = rng.uniform(1.0, 1.18)
    condition = rng.gamma(3.0, 1.0 / 3.0)

    for arch, tpls in (("upper", _UPPER), ("lower", _LOWER)):
        for side in (-1, 1):
            cum = 0.0
            for p, tpl in enumerate(tpls, start=1):
                w = tpl.width * wscale * rng.uniform(0.96, 1.04)
                x = sc.cx + side * (cum + w / 2)
                cum += w * rng.uniform(0.97, 1.0)  # contacts overlap a little
                slot = _Slot(arch=arch, side=side, pos=p, tpl=tpl, x=x, w=w)
                slot.hc = tpl.crown * hscale * rng.uniform(0.95, 1.05)
                slot.hr = 0.88 * tpl.root * hscale * rng.uniform(0.92, 1.08)
                g = _gap(sc, x) / 2
                slot.y = float(_occlusal_y(sc, x)) + (-g if arch == "upper" else g) + rng.normal(0, 0.003)
                slot.angle = math.atan(_occlusal_slope(sc, x) * 0.566) + rng.normal(0, 0.04)
                slot.density = rng.uniform(0.94, 1.06)
                sc.slots.append(slot)

    def find(arch, side, pos):
        return sc.slots[(0 if arch == "upper" else 16) + (0 if side < 0 else 8) + pos - 1]

    # wisdom teeth: present ~27 %, lower ones tilt mesially and sit deep, upper ones distally
    for s in sc.slots:
        if s.pos != 8:
            continue
        if rng.random() > 0.27:
            s.state = "absent"
            continue
        r = rng.random()
        if s.arch == "lower":
            tilt = 0.0 if r < 0.3 else (rng.uniform(0.25, 0.8) if r < 0.9 else rng.uniform(1.1, 1.5))
            s.angle += -s.side * tilt  # crown tips towards the midline
            depth = rng.uniform(0.0, 0.9) * s.hc
            s.y += depth
            s.x -= s.side * 0.3 * s.w * min(tilt, 1.0)  # the crown leans on the second molar
        else:
            tilt = rng.uniform(0.0, 0.45)
            s.angle += -s.side * tilt  # crown tips distally
            s.y -= rng.uniform(0.0, 0.7) * s.hc
            s.x += s.side * 0.1 * s.w
        s.roots_len = rng.uniform(0.6, 1.0)

    # missing teeth
    for s in sc.slots:
        if s.pos <= 7 and rng.random() < _MISSING[s.pos - 1] * condition:
            s.state = "missing"
            s.socket = bool(rng.random() < 0.3)  # a recent extraction: the empty socket shows
    # implants: in 7 % of mouths, 1-2 of the premolars/molars
    if rng.random() < 0.07 * condition ** 0.5:
        cand = [s for s in sc.slots if 4 <= s.pos <= 7]
        for i in rng.choice(len(cand), size=1 + int(rng.random() < 0.3), replace=False):
            s = cand[i]
            s.state = "implant"
            s.implant = dict(
                r=rng.uniform(0.17, 0.22), length=rng.uniform(0.7, 0.9),
                threads=int(rng.integers(7, 11)), crown=bool(rng.random() < 0.75),
            )
    # bridges: in 6.5 % of mouths, 3-4 consecutive teeth, pontics in the middle
    if rng.random() < 0.065 * condition ** 0.5:
        arch = "upper" if rng.random() < 0.5 else "lower"
        side = -1 if rng.random() < 0.5 else 1
        n = 3 if rng.random() < 0.7 else 4
        start = int(rng.integers(3, 8 - n + 1))
        for k, p in enumerate(range(start, start + n)):
            s = find(arch, side, p)
            s.bridge = 0
            s.state = "natural" if k in (0, n - 1) else "pontic"
            s.implant = None
    # restorations and disease on natural teeth
    for s in sc.slots:
        if s.state != "natural":
            continue
        kind = s.tpl.kind
        wisdom = s.pos == 8
        if s.bridge < 0 and not wisdom and rng.random() < 0.014 * condition:
            s.porcelain = True
        if not wisdom and rng.random() < 0.018 * condition + (0.45 if (s.porcelain or s.bridge >= 0) else 0.0):
            s.rct = True
        if not (s.porcelain or s.bridge >= 0):
            p_fill = (0.01 if wisdom else _FILL[kind]) * condition + (0.6 if s.rct else 0.0)
            if rng.random() < p_fill:
                r = rng.random()
                side = -1.0 if rng.random() < 0.5 else 1.0
                if r < 0.15:  # a small pit filling
                    q = rng.uniform(0.1, 0.2)
                    blobs = [_blob(rng, rng.uniform(-0.3, 0.3), rng.uniform(0.04, 0.1), q, 0.6 * q, 0.2)]
                elif r < 0.55:  # occlusal
                    blobs = [_blob(rng, rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.15),
                                   rng.uniform(0.3, 0.5), rng.uniform(0.18, 0.35), 0.25)]
                elif r < 0.9:  # class II: occlusal + proximal box
                    blobs = [_blob(rng, side * rng.uniform(0.0, 0.3), rng.uniform(0.05, 0.15),
                                   rng.uniform(0.3, 0.45), rng.uniform(0.18, 0.3), 0.2),
                             _blob(rng, side * rng.uniform(0.65, 0.85), rng.uniform(0.25, 0.45),
                                   rng.uniform(0.2, 0.32), rng.uniform(0.22, 0.4), 0.2)]
                else:  # cervical
                    blobs = [_blob(rng, side * rng.uniform(0.5, 0.8), rng.uniform(0.6, 0.85),
                                   rng.uniform(0.2, 0.3), rng.uniform(0.1, 0.18), 0.2)]
                s.fillings = blobs
            if rng.random() < (0.05 if wisdom else _DECAY[kind]) * condition:
                side = -1.0 if rng.random() < 0.5 else 1.0
                # radius in crown half-widths; 0.6 converts it to crown heights (round spots)
                r = math.exp(rng.uniform(math.log(0.1), math.log(0.55)))
                if rng.random() < 0.6:  # proximal: a notch under the contact point
                    cs, ct = side * rng.uniform(0.6, 0.8), rng.uniform(0.2, 0.45)
                else:  # occlusal: under the fissure, spreading in dentine
                    cs, ct = rng.uniform(-0.3, 0.3), rng.uniform(0.12, 0.3)
                s.decay = [_blob(rng, cs, ct, r * rng.uniform(0.85, 1.2), 0.6 * r * rng.uniform(0.85, 1.2), 0.35)]
        p_ap = 0.006 * condition + (0.12 if s.decay else 0.0) + (0.12 if s.rct else 0.0)
        if not wisdom and rng.random() < p_ap:
            s.apical = dict(root=int(rng.integers(0, len(s.tpl.roots))),
                            r=math.exp(rng.uniform(math.log(0.14), math.log(0.45))),
                            blob=_blob(rng, 0.0, 0.0, 1.0, 1.0, 0.3), rim=bool(rng.random() < 0.5))
    # neighbours of a gap lean into it. A larger angle tips a lower crown towards +x and an
    # upper crown towards -x (see _make_frame), hence the arch sign.
    for s in sc.slots:
        if s.state != "missing":
            continue
        for dp in (-1, 1):
            if 1 <= s.pos + dp <= 7:
                nb = find(s.arch, s.side, s.pos + dp)
                if nb.state == "natural":
                    toward = -dp * s.side  # image-x direction of the gap seen from the neighbour
                    sgn = 1.0 if s.arch == "lower" else -1.0
                    nb.angle += sgn * toward * rng.uniform(0.0, 0.12)

    an = sc.anatomy
    an["ment"] = rng.uniform(0.92, 0.975)
    an["ang_x"] = rng.uniform(0.365, 0.405)
    an["ang_y"] = rng.uniform(0.69, 0.77)
    an["cond_y"] = rng.uniform(0.17, 0.25)
    an["ramus_w"] = rng.uniform(0.085, 0.11)
    an["cortex"] = rng.uniform(0.014, 0.022)
    an["bone"] = rng.uniform(0.30, 0.42)
    an["maxilla"] = rng.uniform(0.2, 0.3)
    an["palate_y"] = rng.uniform(0.03, 0.05)  # above the upper apices
    an["sinus"] = [(rng.uniform(0.16, 0.2), rng.uniform(0.085, 0.115), rng.uniform(0.07, 0.09),
                    rng.uniform(0.0, 2 * np.pi)) for _ in range(2)]
    an["spine_x"] = [rng.uniform(0.44, 0.5) for _ in range(2)]
    an["canal_y"] = rng.uniform(0.02, 0.04)
    an["air"] = rng.uniform(0.04, 0.12)
    an["texture"] = rng.uniform(0.035, 0.07)
    an["lowfreq"] = rng.uniform(0.02, 0.06)
    an["mottle"] = rng.uniform(0.02, 0.04)

    lk = sc.look
    lk["k"] = rng.uniform(1.15, 1.6)
    lk["gamma"] = rng.uniform(0.8, 1.25)
    lk["contrast"] = rng.uniform(0.85, 1.1)
    lk["offset"] = rng.uniform(-0.04, 0.05)
    lk["unsharp"] = rng.uniform(0.3, 0.8)
    lk["blur"] = rng.uniform(0.9, 1.5)
    lk["noise"] = rng.uniform(0.015, 0.035)
    lk["enamel"] = rng.uniform(0.32, 0.42)
    lk["dentine"] = rng.uniform(0.36, 0.46)
    return sc


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """A tooth's local frame over an axis-aligned image patch ``[y0:y0+h, x0:x0+w]``.

    ``s``: (h, w) coordinate across the tooth (pixels, towards the image's right at zero tilt);
    ``t``: (h, w) coordinate from the occlusal anchor towards the apex (pixels)."""

    x0: int
    y0: int
    s: np.ndarray
    t: np.ndarray

    def region(self, canvas: np.ndarray) -> np.ndarray:
        return canvas[self.y0 : self.y0 + self.s.shape[0], self.x0 : self.x0 + self.s.shape[1]]

    def box(self, mask: np.ndarray) -> list[float] | None:
        """Tight ``[x, y, w, h]`` of the pixels where ``mask >= 0.5``; ``None`` if empty."""
        m = mask >= 0.5
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(m.any(axis=0))
        return [float(self.x0 + cols[0]), float(self.y0 + rows[0]),
                float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _make_frame(ax: float, ay: float, angle: float, upper: bool, s_lo: float, s_hi: float,
                t_lo: float, t_hi: float, width: int, height: int) -> _Frame | None:
    """Pixel grid of the patch covering ``s in [s_lo, s_hi], t in [t_lo, t_hi]`` around the
    anchor ``(ax, ay)``; ``e_s = (cos a, sin a)``, ``e_t = +-(-sin a, cos a)`` (down for lower
    teeth, up for upper teeth). ``None`` when the patch is outside the image."""
    c, sn = math.cos(angle), math.sin(angle)
    es = (c, sn)
    et = (-sn, c) if not upper else (sn, -c)
    xs = [ax + s * es[0] + t * et[0] for s in (s_lo, s_hi) for t in (t_lo, t_hi)]
    ys = [ay + s * es[1] + t * et[1] for s in (s_lo, s_hi) for t in (t_lo, t_hi)]
    x0, x1 = max(0, int(math.floor(min(xs)))), min(width, int(math.ceil(max(xs))) + 1)
    y0, y1 = max(0, int(math.floor(min(ys)))), min(height, int(math.ceil(max(ys))) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - ax)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - ay)[:, None]
    return _Frame(x0, y0, dx * es[0] + dy * es[1], dx * et[0] + dy * et[1])


def _soft(d: np.ndarray) -> np.ndarray:
    """Coverage of a pixel whose centre is ``d`` pixels inside an edge: ``clip(d + 1/2, 0, 1)``."""
    return np.clip(d + 0.5, 0.0, 1.0)


def _blob_mask(fr: _Frame, b: dict, s_unit: float, t_unit: float, s_origin: float = 0.0,
               t_origin: float = 0.0, sign: float = 1.0, edge: float = 1.0) -> np.ndarray:
    """Soft mask of an irregular ellipse given in tooth units (``s_unit``, ``t_unit`` pixels per
    unit); ``sign`` mirrors ``s`` so that "distal" follows the slot's side; the border ramps
    from 0 to 1 over ``edge`` pixels (coverage 0.5 on the nominal boundary)."""
    rs, rt = b["rs"] * s_unit, b["rt"] * t_unit
    u = (fr.s - (s_origin + sign * b["cs"] * s_unit)) / rs
    v = (fr.t - (t_origin + b["ct"] * t_unit)) / rt
    r = np.sqrt(u * u + v * v)
    th = np.arctan2(v, u)
    bound = 1.0
    for k, a, ph in b["harm"]:
        bound = bound + a * np.sin(k * th + ph)
    return np.clip((bound - r) * min(rs, rt) / edge + 0.5, 0.0, 1.0)


@dataclass
class _ToothShape:
    body: np.ndarray  # crown or root coverage
    crown: np.ndarray
    enamel: np.ndarray
    pulp: np.ndarray
    canals: np.ndarray  # root canals only (for root canal fillings)
    ring: np.ndarray  # signed distance to the nearest root surface (px, inside > 0)
    roots: np.ndarray
    apices: list  # (s, t) of each root apex, pixels


def _tooth_shape(fr: _Frame, slot: _Slot, W: int, H: int) -> _ToothShape:
    """Crown, enamel, pulp and roots of a natural tooth in its frame (see the module docstring).

    Crown half-width ``w/2 (1 - k tau_c^2)``, ``tau_c = t / h_c``; occlusal profile
    ``top(sigma)`` per kind (flat incisal edge, pointed canine, cusped premolars and molars);
    roots ``r(tau) = r0 sqrt(1 - tau^3) (1 - 0.3 tau)`` around centre lines that drift
    distally by ``lean * h_r * tau^1.5``."""
    s, t = fr.s, fr.t
    tpl, kp = slot.tpl, _KIND[slot.tpl.kind]
    half = slot.w * W / 2
    hc = slot.hc * H
    hr = slot.hr * H * slot.roots_len
    dist = float(slot.side)
    sig = np.clip(s / half, -1.5, 1.5)
    sig2 = sig * sig
    sig8 = sig2 * sig2
    sig8 *= sig8
    if tpl.kind == "incisor":
        top = 0.03 + 0.3 * sig8
    elif tpl.kind == "canine":
        a = np.abs(sig)
        top = 0.26 * a * np.sqrt(a)
    elif tpl.kind == "premolar":
        top = 0.16 * sig2 + 0.25 * sig8
    else:
        top = 0.06 * np.cos(np.pi * sig) ** 2 + 0.25 * sig8
    top *= hc
    tc = np.clip(t / hc, 0.0, 1.0)
    hw = half * (1.0 - kp["narrow"] * tc * tc)
    d_side = hw - np.abs(s)
    d_top = t - top
    crown_d = np.minimum(np.minimum(d_side, d_top), hc * 1.02 - t)
    crown = _soft(crown_d)
    e = kp["enamel"] * 2 * half * np.sqrt(1.0 - tc)
    enamel = crown * _soft(e - np.minimum(d_side, d_top))

    hwc = half * (1.0 - kp["narrow"])
    ring = np.full(s.shape, -1e3, dtype=np.float32)
    canal_d = np.full(s.shape, -1e3, dtype=np.float32)
    apices = []
    parts = list(tpl.roots)
    if tpl.trunk > 0:
        parts = [(0.0, 0.95, 0.0, tpl.trunk)] + parts
    for i, (off, wid, lean, length) in enumerate(parts):
        L = hr * length
        tau = (t - hc * 0.92) / L
        tau_c = np.clip(tau, 0.0, 1.0)
        centre = (dist * lean * hr) * (tau_c * np.sqrt(tau_c)) + dist * off * hwc
        r = (wid * hwc) * np.sqrt(1.0 - tau_c * tau_c * tau_c) * (1.0 - 0.3 * tau_c)
        off_c = np.abs(s - centre)
        # inside the root: across its width, above the apex; it starts inside the crown
        d = np.minimum(np.minimum(r - off_c, (1.0 - tau) * L), tau * L + 4.0)
        np.maximum(ring, d, out=ring)
        is_trunk = tpl.trunk > 0 and i == 0
        if not is_trunk:
            cd = np.minimum(np.minimum(0.14 * r + 0.4 - off_c, (0.93 - tau) * L), (tau + 0.05) * L)
            np.maximum(canal_d, cd, out=canal_d)
            apices.append((dist * (off * hwc + lean * hr), hc * 0.92 + L))
    roots = _soft(ring)
    ct = np.clip((t - kp["pulp_t"] * hc) / (0.25 * hc), 0.0, 1.0)
    chamber_d = np.minimum(kp["pulp_w"] * hw * np.sqrt(ct) - np.abs(s), hc + 0.12 * hr - t)
    canals = _soft(canal_d)
    pulp = np.maximum(_soft(chamber_d), canals)
    body = np.maximum(crown, roots)
    return _ToothShape(body, crown, enamel, pulp * body, canals * roots, ring, roots, apices)


def _lowres_resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 array to ``size = (W, H)``."""
    return np.array(Image.fromarray(a.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], s1: float, s2: float) -> np.ndarray:
    """Band-pass noise ``G_s1 * n - G_s2 * n`` scaled to unit standard deviation."""
    n = rng.standard_normal(shape, dtype=np.float32)
    b = ndimage.gaussian_filter(n, s1) - ndimage.gaussian_filter(n, s2)
    return b / (b.std() + 1e-6)


# --------------------------------------------------------------------------------------------
# Anatomy (drawn at half resolution, then upsampled)
# --------------------------------------------------------------------------------------------


def _crest(sc: _Scene, arch: str, xs: np.ndarray) -> np.ndarray:
    """The alveolar crest of ``arch`` at image fractions ``xs``: the cervical line of the teeth
    plus ~1 % H, dipping by a quarter crown over missing teeth and pontics."""
    slots = [s for s in sc.slots if s.arch == arch and s.pos <= 7]
    slots.sort(key=lambda s: s.x)
    cx = np.array([s.x for s in slots])
    sign = 1.0 if arch == "lower" else -1.0
    yc = np.array([s.y + sign * s.hc * 0.95 for s in slots])
    y = np.interp(xs, cx, yc) + sign * 0.012
    for s in slots:
        if s.state in ("missing", "pontic", "implant"):
            extra = 0.25 if s.state != "implant" else 0.05
            y = y + sign * extra * s.hc * np.exp(-(((xs - s.x) / (0.45 * s.w)) ** 4))
    return y


def _anatomy(sc: _Scene, rng: np.random.Generator, W: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation of everything except the teeth, drawn at half resolution and upsampled.

    Returns ``(A, bone)``: the attenuation map ``(H, W)`` and the bone coverage at half resolution in
    ``[0, 1]`` (where periodontal ligaments and apical lesions show)."""
    w2, h2 = max(W // 2, 8), max(H // 2, 8)
    an = sc.anatomy
    X = (np.arange(w2, dtype=np.float32) + 0.5) / w2
    Y = (np.arange(h2, dtype=np.float32) + 0.5) / h2
    XX, YY = X[None, :], Y[:, None]
    dx = XX - np.float32(sc.cx)
    px = w2 / 1024.0 * 2.0  # half-resolution pixels per pixel of the default size

    def layer(polys=(), lines=(), blur=1.0):
        """Polygons and thick lines (image fractions; line width in image heights), blurred by
        ``blur`` default-size pixels (wide blurs are drawn at a quarter of the resolution)."""
        f = 4 if blur * px >= 8 else (2 if blur * px >= 3 else 1)
        wf, hf = max(w2 // f, 4), max(h2 // f, 4)
        im = Image.new("L", (wf, hf), 0)
        dr = ImageDraw.Draw(im)
        for pts in polys:
            dr.polygon([(float(a * wf), float(b * hf)) for a, b in pts], fill=255)
        for pts, wid in lines:
            dr.line([(float(a * wf), float(b * hf)) for a, b in pts], fill=255,
                    width=max(1, int(round(wid * hf))), joint="curve")
        a = np.asarray(im, dtype=np.float32) / 255.0
        a = ndimage.gaussian_filter(a, blur * px / 2.0 / f, truncate=3.0) if blur > 0 else a
        return _lowres_resize(a, (w2, h2)) if f > 1 else a

    def gauss2(x0, y0, rx, ry):
        return np.exp(-(((dx - x0) / rx) ** 2 + ((YY - y0) / ry) ** 2))

    y_occ = _occlusal_y(sc, XX)
    # soft tissue: the head, the tongue and lips across the occlusal plane, darker corners
    A = 0.17 * np.exp(-(((dx / 0.6) ** 2 + ((YY - 0.5) / 0.7) ** 2) ** 2))
    A = A + 0.09 * np.exp(-(((YY - y_occ) / 0.1) ** 2)) * np.exp(-((dx / 0.32) ** 8))
    A = A + an["lowfreq"] * _lowres_resize(rng.standard_normal((5, 9)).astype(np.float32), (w2, h2))

    # mandible: lower border, rami, condyles, coronoids, alveolar crest under the lower teeth
    xs = np.linspace(sc.cx - 0.34, sc.cx + 0.34, 69)
    crest_lo = _crest(sc, "lower", xs)
    crest_up = _crest(sc, "upper", xs)
    halves, cortex_lines, join_x = [], [], {}
    for side in (-1, 1):
        molar = max(s.x * side for s in sc.slots if s.arch == "lower" and s.side == side and s.pos == 7)
        join_x[side] = side * (molar + 0.01)
        gx, gy, cy = sc.cx + side * an["ang_x"], an["ang_y"], an["cond_y"]
        rw = an["ramus_w"]
        u = np.linspace(0.0, 1.0, 28)
        border = [(sc.cx + side * an["ang_x"] * v, an["ment"] - (an["ment"] - gy) * v ** 1.7) for v in u]
        angle = [(gx + side * 0.008, gy - 0.03), (gx + side * 0.012, gy - 0.07)]
        post = [(gx + side * (0.012 + 0.03 * v), gy - 0.07 - (gy - 0.07 - cy - 0.07) * v)
                for v in np.linspace(0, 1, 8)]
        th = np.linspace(-0.2 * np.pi, 1.15 * np.pi, 14)  # condylar head, an ellipse
        condyle = [(gx + side * (0.026 + 0.02 * np.cos(t)), cy + 0.025 - 0.035 * np.sin(t)) for t in th]
        notch = [(gx, cy + 0.08), (gx - side * 0.3 * rw, cy + 0.13), (gx - side * 0.7 * rw, cy + 0.11)]
        coronoid = [(gx - side * (rw - 0.005), cy + 0.08), (gx - side * (rw + 0.008), cy + 0.1),
                    (gx - side * (rw + 0.015), cy + 0.14)]
        cr_y = float(_crest(sc, "lower", np.array([join_x[side]]))[0])
        front = [(gx - side * (rw + 0.025), 0.42), (join_x[side] + side * 0.03, cr_y - 0.04),
                 (join_x[side], cr_y)]
        halves.append(border + angle + post + condyle + notch + coronoid + front)
        cortex_lines.append(border + angle + post[:5])
    sel = (xs > join_x[-1]) & (xs < join_x[1])
    mand_poly = halves[0] + list(zip(xs[sel], crest_lo[sel])) + halves[1][::-1]
    mand = layer(polys=[mand_poly], blur=2.0)
    cortex = layer(lines=[(pts, an["cortex"]) for pts in cortex_lines], blur=2.0)
    # denser towards the lower border
    depth = np.clip((YY - crest_lo.mean()) / 0.25, 0.0, 1.0)
    A = A + mand * an["bone"] * (0.85 + 0.3 * depth) + 0.45 * cortex * mand
    # mandibular canal: from the ramus down under the molar apices to the mental foramen
    canal_lines = []
    for side in (-1, 1):
        gx = sc.cx + side * an["ang_x"]
        apex = max(s.y + s.hc + s.hr for s in sc.slots
                   if s.arch == "lower" and s.side == side and s.pos in (5, 6, 7))
        yb = apex + an["canal_y"]
        canal_lines.append([(gx - side * 0.03, 0.52), (gx - side * 0.07, yb - 0.005),
                            (sc.cx + side * 0.2, yb + 0.01), (sc.cx + side * 0.12, yb - 0.015)])
    canal = layer(lines=[(p, 0.016) for p in canal_lines], blur=1.5)
    canal_wall = layer(lines=[(p, 0.026) for p in canal_lines], blur=1.5)
    A = A + mand * (0.05 * (canal_wall - canal) - 0.1 * canal)

    # maxilla: a trapezoid above the upper crest, fading upwards into the midface
    up_apex = min(s.y - s.hc - s.hr for s in sc.slots if s.arch == "upper" and s.pos <= 7)
    pal_y = up_apex - an["palate_y"]
    max_poly = list(zip(xs, crest_up)) + [(sc.cx + 0.4, 0.06), (sc.cx - 0.4, 0.06)]
    maxilla = layer(polys=[max_poly], blur=10.0)
    alveolar = layer(polys=[list(zip(xs, crest_up)) + [(sc.cx + 0.34, pal_y), (sc.cx - 0.34, pal_y)]], blur=4.0)
    A = A + an["maxilla"] * maxilla + 0.08 * alveolar
    # hard palate: a bright band above the apices, sloping down posteriorly
    pal = [(sc.cx + u, pal_y + 0.05 * (u / 0.3) ** 2) for u in np.linspace(-0.31, 0.31, 25)]
    A = A + 0.2 * layer(lines=[(pal, 0.016)], blur=3.0)
    # maxillary sinuses: darker ovals above the palate with a thin wall; nasal cavity, septum,
    # turbinates; orbits hinted at the top
    for side, (sxo, rx, ry, ph) in zip((-1, 1), an["sinus"]):
        u, v = (dx - side * sxo) / rx, (YY - (pal_y - 0.85 * ry)) / ry
        e = np.sqrt(u * u + v * v) * (1.0 + 0.08 * np.sin(3.0 * np.arctan2(v, u) + ph))
        A = A - 0.08 * np.clip((1.0 - e) * 3.0, 0.0, 1.0) + 0.035 * np.exp(-(((e - 1.0) / 0.06) ** 2))
    nasal = np.clip((1.0 - np.sqrt((dx / 0.07) ** 2 + ((YY - (pal_y - 0.12)) / 0.12) ** 2)) * 4.0, 0.0, 1.0)
    A = A - 0.1 * nasal + 0.08 * nasal * np.exp(-((dx / 0.005) ** 2))
    for side in (-1, 1):
        A = A + 0.05 * gauss2(side * 0.04, pal_y - 0.05, 0.025, 0.03)
        A = A - 0.05 * gauss2(side * 0.2, 0.0, 0.08, 0.06)
    # zygomatic arches
    for side in (-1, 1):
        zy = [(sc.cx + side * u, pal_y - 0.09 + 0.07 * ((u - 0.22) / 0.22)) for u in np.linspace(0.2, 0.48, 12)]
        A = A + 0.13 * layer(lines=[(zy, 0.045)], blur=8.0)
    # palatoglossal air space (dark band over the upper roots) and the pharynx over the rami
    A = A - an["air"] * np.exp(-(((YY - (y_occ - 0.1)) / 0.025) ** 2)) * np.exp(-((dx / 0.33) ** 8))
    for side in (-1, 1):
        A = A - 0.04 * np.exp(-(((dx - side * 0.31) / 0.03) ** 2)) * np.exp(-(((YY - 0.6) / 0.25) ** 4))
    # cervical spine ghosts at both edges, and its double image in the midline
    for side, sx in zip((-1, 1), an["spine_x"]):
        col = np.exp(-(((dx - side * sx) / 0.04) ** 2))
        vert = 0.5 + 0.5 * np.cos(2 * np.pi * (YY - 0.33) / 0.12)
        A = A + (0.09 + 0.025 * vert) * col * np.clip((YY - 0.3) * 8.0, 0.0, 1.0)
    A = A + 0.05 * np.exp(-((dx / 0.05) ** 2)) * np.clip((YY - 0.55) * 4.0, 0.0, 1.0)

    # mid-scale mottling of overlapping soft tissue and bone
    mottle = _band_noise(rng, (max(h2 // 8, 4), max(w2 // 8, 4)), 0.7, 2.5)
    A = A + an["mottle"] * _lowres_resize(mottle, (w2, h2)) * np.clip(A * 4.0, 0.0, 1.0)
    # trabecular texture inside bone: band-pass noise through a soft threshold
    bone = np.clip(mand + 0.8 * maxilla, 0.0, 1.0)
    tex = _band_noise(rng, (h2, w2), 0.7 * px, 2.0 * px)
    A = A + an["texture"] * np.tanh(1.5 * tex) * bone
    return _lowres_resize(A.astype(np.float32), (W, H)), bone.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Teeth and anomalies (full resolution, drawn patch by patch)
# --------------------------------------------------------------------------------------------


def _draw_teeth(sc: _Scene, A: np.ndarray, W: int, H: int, bone: np.ndarray) -> list[dict]:
    """Add every tooth, restoration and lesion to ``A`` in place; return the annotations."""
    lk = sc.look
    anns: list[dict] = []
    bridge_boxes: dict[int, list] = {}
    ps = max(W / 1024.0, 0.5)  # pixel scale of thin anatomical lines

    def add(cat, box):
        if box is not None:
            anns.append({"category": cat, "bbox": box})

    for slot in sc.slots:
        if slot.state == "absent":
            continue
        upper = slot.arch == "upper"
        half = slot.w * W / 2
        hc, hr = slot.hc * H, slot.hr * H
        ax, ay = slot.x * W, slot.y * H
        # room for leaning roots, and for an apical lesion below the apex
        lean = max(abs(r[2]) for r in slot.tpl.roots) * hr
        extra = 1.2 * half if slot.apical is not None else 0.0
        margin = 0.1 * half + lean + extra + 4
        fr = _make_frame(ax, ay, slot.angle, upper, -half - margin, half + margin,
                         -0.35 * hc - 3, hc + hr + extra + 4, W, H)
        if fr is None:
            continue
        patch = fr.region(A)
        h, w = fr.s.shape  # bone coverage is at half resolution: nearest sample
        rows = np.minimum((np.arange(fr.y0, fr.y0 + h) * bone.shape[0]) // H, bone.shape[0] - 1)
        cols = np.minimum((np.arange(fr.x0, fr.x0 + w) * bone.shape[1]) // W, bone.shape[1] - 1)
        bone_patch = bone[np.ix_(rows, cols)]
        dist = float(slot.side)

        if slot.state == "missing":
            gap = _soft(np.minimum(0.47 * slot.w * W - np.abs(fr.s), np.minimum(fr.t, hc * 1.05 - fr.t)))
            if slot.socket:  # root-shaped hole in the bone lined by lamina dura
                shape = _tooth_shape(fr, slot, W, H)
                hole = shape.roots * np.clip((fr.t - hc) / (0.15 * hc), 0.0, 1.0)
                lam = np.exp(-(((shape.ring + 1.5 * ps) / (1.0 * ps)) ** 2))
                patch += bone_patch * (0.08 * lam * (1.0 - shape.roots) - 0.55 * sc.anatomy["bone"] * hole)
                gap = np.maximum(gap, hole)
            add("Missing Tooth", fr.box(gap))
            continue

        if slot.state == "implant":
            im = slot.implant
            r0 = im["r"] * slot.w * W
            L = im["length"] * hr
            tau = (fr.t - hc) / L
            tau_c = np.clip(tau, 0.0, 1.0)
            phase = np.mod(tau * im["threads"], 1.0)
            tip = tau_c * tau_c
            tip *= tip
            rad = r0 * (1.0 - 0.2 * tau_c) * np.sqrt(1.0 - tip * tip) - 0.3 * r0 * np.abs(2.0 * phase - 1.0)
            screw = _soft(np.where(tau >= 0, np.minimum(rad - np.abs(fr.s), (1 - tau) * L), -1e3))
            flare = 0.62 * r0 * (1.0 + 0.3 * np.clip((fr.t - 0.5 * hc) / (0.5 * hc), 0.0, 1.0))
            abut = _soft(np.minimum(np.minimum(flare - np.abs(fr.s), fr.t - 0.5 * hc), hc + 2 - fr.t))
            body = np.maximum(screw, abut)
            patch += 2.6 * body
            add("Implant", fr.box(body))
            if im["crown"]:
                cap = _cap(fr, slot, W, H, extend=0.0)
                cap = cap * _soft(0.8 * hc - fr.t)
                patch += 1.8 * cap * (1.0 - body)
                add("Porcelain Crown", fr.box(cap))
            else:
                heal = _soft(np.minimum(0.75 * r0 - np.abs(fr.s), np.minimum(fr.t - 0.72 * hc, hc - fr.t)))
                patch += 2.2 * heal
            continue

        if slot.state == "pontic":
            cap = _cap(fr, slot, W, H, extend=0.16)
            cap = cap * _soft(0.85 * hc - fr.t)
            patch += 1.9 * cap
            b = fr.box(cap)
            if b is not None:
                bridge_boxes.setdefault(slot.bridge, []).append(b)
            continue

        shape = _tooth_shape(fr, slot, W, H)
        dens = slot.density * (lk["dentine"] * (shape.body - 0.45 * shape.pulp) + lk["enamel"] * shape.enamel)
        for b in slot.decay:
            spot = _blob_mask(fr, b, half, hc, sign=dist) * shape.crown
            dens = dens * (1.0 - 0.9 * spot)
            add("Decay", fr.box(spot))
        # periodontal ligament (dark) and lamina dura (bright) around the roots, inside bone
        in_bone = np.clip((fr.t - hc * 1.05) / (0.1 * hc), 0.0, 1.0) * bone_patch
        ring = shape.ring
        pdl = np.exp(-(((ring + 0.9 * ps) / (0.7 * ps)) ** 2))
        lam = np.exp(-(((ring + 2.3 * ps) / (0.8 * ps)) ** 2))
        dens = dens + in_bone * (0.09 * lam - 0.12 * pdl) * (1.0 - shape.roots)
        dens = dens - 0.5 * sc.anatomy["bone"] * bone_patch * shape.roots  # roots displace bone
        patch += dens
        if slot.fillings:
            fill = np.maximum.reduce([_blob_mask(fr, b, half, hc, sign=dist) for b in slot.fillings])
            fill = fill * shape.crown
            patch += 2.4 * fill
            add("Dental Filling", fr.box(fill))
        if slot.rct:
            lines = shape.canals * _soft(fr.t - hc * 0.95)
            patch += 2.4 * lines
            add("Root Canal Filling", fr.box(lines))
        if slot.porcelain:
            cap = _cap(fr, slot, W, H, extend=0.0)
            patch += 1.9 * cap
            add("Porcelain Crown", fr.box(cap))
        if slot.bridge >= 0:
            cap = _cap(fr, slot, W, H, extend=0.16)
            patch += 1.9 * cap
            b = fr.box(cap)
            if b is not None:
                bridge_boxes.setdefault(slot.bridge, []).append(b)
        if slot.apical is not None and shape.apices:
            ap = slot.apical
            s_a, t_a = shape.apices[min(ap["root"], len(shape.apices) - 1)]
            R = ap["r"] * slot.w * W
            blob = dict(ap["blob"], cs=0.0, ct=0.0, rs=1.0, rt=0.9)
            halo = _blob_mask(fr, blob, R, R, s_origin=s_a, t_origin=t_a + 0.25 * R, edge=2.5 * ps)
            depth = 0.42 * sc.anatomy["bone"]
            patch -= depth * halo * (1.0 - 0.85 * shape.roots) * np.maximum(bone_patch, 0.3)
            if ap["rim"]:
                rim = _blob_mask(fr, blob, R * 1.25, R * 1.25, s_origin=s_a, t_origin=t_a + 0.25 * R)
                patch += 0.08 * (rim - halo) * (1.0 - shape.roots)
            add("Apical Periodontitis", fr.box(halo))
        if slot.pos == 8:
            add("Wisdom Tooth", fr.box(shape.body))

    for boxes in bridge_boxes.values():
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[0] + b[2] for b in boxes)
        y1 = max(b[1] + b[3] for b in boxes)
        anns.append({"category": "Ceramic Bridge", "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return anns


def _cap(fr: _Frame, slot: _Slot, W: int, H: int, extend: float) -> np.ndarray:
    """A prosthetic cap: the crown's outline enlarged by a few percent (``extend`` widens it
    towards the neighbours, for the connectors of a bridge), with a flatter occlusal profile."""
    half = slot.w * W / 2 * (1.04 + extend)
    hc = slot.hc * H
    sig = np.clip(fr.s / half, -1.5, 1.5)
    top = hc * (0.02 + 0.05 * sig ** 2 + 0.25 * sig ** 8)
    tc = np.clip(fr.t / hc, 0.0, 1.0)
    hw = half * (1.0 - 0.2 * tc * tc)
    return _soft(np.minimum(np.minimum(hw - np.abs(fr.s), fr.t - top), hc * 0.98 - fr.t))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def render_panoramic(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[dict]]:
    """Draw one synthetic panoramic radiograph.

    Args:
        rng: the image's random generator (all randomness comes from it).
        width, height: image size in pixels (the real set is about 1991 x 1127).

    Returns:
        ``image``: uint8 ``(height, width)`` grayscale; ``annotations``: a list of
        ``{"category": name in oralx_lib.CLASSES, "bbox": [x, y, w, h]}`` (float pixels, tight
        around the drawn mask, inside the image, ``w, h >= 1``).

    The scene is drawn first (resolution-independent), then the attenuation map ``A``; the
    displayed image is ``I = (offset + contrast (u + a (u - G_8 * u)))^gamma`` with
    ``u = 1 - exp(-k A)``, blurred by ``G_sigma`` with grain added before the blur.
    """
    width, height = _check_size(width, height)
    sc = _sample_scene(rng)
    A, bone = _anatomy(sc, rng, width, height)
    A = np.ascontiguousarray(A, dtype=np.float32)
    anns = _draw_teeth(sc, A, width, height, bone)
    lk = sc.look
    u = 1.0 - np.exp(-lk["k"] * np.maximum(A, 0.0))
    # unsharp mask at quarter resolution (clinical edge enhancement)
    q = (max(width // 4, 4), max(height // 4, 4))
    low = np.asarray(Image.fromarray(u, mode="F").resize(q, Image.BILINEAR))
    low = _lowres_resize(ndimage.gaussian_filter(low, 2.0 * width / 1024.0), (width, height))
    u = u + lk["unsharp"] * (u - low)
    u = lk["offset"] + lk["contrast"] * u
    u += lk["noise"] * rng.standard_normal(u.shape, dtype=np.float32)
    u = ndimage.gaussian_filter(u, lk["blur"] * width / 1024.0)
    # gamma through a 1024-entry look-up table (the same as u ** gamma to within one grey level)
    lut = np.round(255.0 * np.linspace(0.0, 1.0, 1024) ** lk["gamma"]).astype(np.uint8)
    img = lut[(np.clip(u, 0.0, 1.0) * 1023.0 + 0.5).astype(np.intp)]
    anns = [a for a in anns if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
    return img, anns


def _check_size(width: Any, height: Any) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise ConfigError(f"width/height must be integers (got {width!r} x {height!r}).") from None
    if w < _MIN_SIZE[0] or h < _MIN_SIZE[1] or w != width or h != height:
        raise ConfigError(
            f"image size {width!r} x {height!r} is not usable: width and height must be integers "
            f">= {_MIN_SIZE[0]} x {_MIN_SIZE[1]}; the book uses {DEFAULTS['width']} x "
            f"{DEFAULTS['height']} (the real images are about 1991 x 1127)."
        )
    return w, h


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` (0-based) of ``split``:
    ``default_rng(SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split), int(index))))


def _params(train, val, test, seed, width, height) -> dict[str, int]:
    out = {}
    for name, value in (("train", train), ("val", val), ("test", test), ("seed", seed),
                        ("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"synthetic set parameter {name}={value!r} must be an integer.")
        out[name] = int(value)
    for name in ("train", "val", "test"):
        if out[name] < 0:
            raise ConfigError(f"synthetic set parameter {name}={out[name]} must be >= 0 (images in that split).")
    if out["seed"] < 0:
        raise ConfigError(f"synthetic set parameter seed={out['seed']} must be >= 0.")
    _check_size(out["width"], out["height"])
    return out


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8")


def _is_foreign(root: Path) -> Path | None:
    """An annotation file under ``root`` that this module did not write (a real dataset)."""
    for split in SPLITS:
        f = root / "annotations" / f"instances_{split}2017.json"
        if f.is_file():
            try:
                with open(f, encoding="utf-8") as fh:
                    info = json.load(fh).get("info", {})
            except (OSError, ValueError, AttributeError):
                return f
            if not (isinstance(info, dict) and info.get("description") == DESCRIPTION):
                return f
    return None


def _encode_jpeg(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def generate_dataset(out: str | os.PathLike, *, train: int, val: int, test: int, seed: int,
                     width: int, height: int, progress: bool = True) -> Path:
    """Write a synthetic set in the released OralXrays-9 layout under ``out``; return ``out``.

    Writes ``annotations/instances_{split}2017.json`` (complete COCO: ``info``, ``licenses``,
    ``images``, ``annotations`` with ``area = w h`` and ``iscrowd = 0``, ``categories`` with ids
    1..9 in :data:`oralx_lib.CLASSES` order) and ``{split}2017/000001.jpg ...`` for every split
    with at least one image, then :data:`MARKER` with the parameters, last. JSON files and
    images are written atomically (temporary file + rename). Files of an earlier synthetic set
    in ``out`` that the new one does not have (more images, a split now empty) are removed;
    a folder holding a real dataset is refused.

    Raises:
        ConfigError: a parameter is not a usable integer.
        DatasetError: ``out`` holds annotation files this module did not write.
    """
    from tqdm.auto import tqdm

    params = _params(train, val, test, seed, width, height)
    width, height = params["width"], params["height"]
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: the output path is a file, not a folder; choose another --out.")
    foreign = _is_foreign(root)
    if foreign is not None:
        raise DatasetError(
            f"{foreign}: this folder holds annotations that the synthetic generator did not write "
            "(a real OralXrays-9 copy?). Refusing to overwrite it: choose another --out folder."
        )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    marker = root / MARKER
    if marker.exists():
        marker.unlink()  # a set being (re)written is incomplete until the marker is back

    categories = [{"id": i + 1, "name": n, "supercategory": "oral anomaly"} for i, n in enumerate(CLASSES)]
    cat_id = {n: i + 1 for i, n in enumerate(CLASSES)}
    counts = {}
    total = params["train"] + params["val"] + params["test"]
    with tqdm(total=total, desc="synthesize", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            n = params[split]
            img_dir = root / f"{split}2017"
            ann_file = root / "annotations" / f"instances_{split}2017.json"
            keep = {f"{i:06d}.jpg" for i in range(1, n + 1)}
            if img_dir.is_dir():
                for f in img_dir.iterdir():
                    if _FILE_RE.match(f.name) and f.name not in keep:
                        f.unlink()
            if n == 0:
                if ann_file.exists():
                    ann_file.unlink()
                if img_dir.is_dir() and not any(img_dir.iterdir()):
                    img_dir.rmdir()
                counts[split] = {"images": 0, "annotations": 0}
                continue
            images, annotations = [], []
            for i in range(n):
                img, anns = render_panoramic(image_rng(params["seed"], split, i), width, height)
                name = f"{i + 1:06d}.jpg"
                write_bytes_atomic(img_dir / name, _encode_jpeg(img))
                images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
                for a in anns:
                    x, y, w, h = (round(float(v), 2) for v in a["bbox"])
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat_id[a["category"]],
                        "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                    })
                bar.update(1)
            coco = {
                "info": {"description": DESCRIPTION, "version": str(GENERATOR_VERSION), "year": 2025,
                         "contributor": "oralx_lib", "url": "", "date_created": ""},
                "licenses": [{"id": 1, "name": "CC0 1.0 (synthetic data)",
                              "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            write_bytes_atomic(ann_file, _json_bytes(coco))
            counts[split] = {"images": len(images), "annotations": len(annotations)}
    write_bytes_atomic(marker, _json_bytes({"generator": "oralx_lib.data.synthetic", "version": GENERATOR_VERSION,
                                       "params": params, "counts": counts}))
    return root


def _marker_params(root: Path) -> dict | None:
    try:
        with open(root / MARKER, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("version") != GENERATOR_VERSION:
        return None
    return m.get("params")


def ensure_synthetic(root: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Make sure ``root`` holds the synthetic set with the given parameters; return ``root``.

    ``root`` defaults to :func:`oralx_lib.paths.default_data_root` (``$ORALX_DATA`` or the
    embedded ``data/synthetic``). Parameters default to :data:`DEFAULTS`; ``kwargs`` may
    override ``train, val, test, seed, width, height`` and pass ``progress``. The set is
    (re)generated when the marker is missing (never generated, or interrupted), was written by
    another generator version, or records other parameters; otherwise nothing is touched.
    A root that holds a real dataset (annotation files this module did not write, no marker) is
    returned as it is: the notebooks then run on the real data.

    Raises:
        ConfigError: an unknown keyword or a bad parameter value.
    """
    progress = kwargs.pop("progress", True)
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"ensure_synthetic(): unknown parameter(s) {unknown}; "
                          f"use {sorted(DEFAULTS)} or progress.")
    params = _params(**{**DEFAULTS, **kwargs})
    root = Path(root) if root is not None else default_data_root()
    if _marker_params(root) == params:
        return root
    if not (root / MARKER).exists() and _is_foreign(root) is not None:
        return root
    return generate_dataset(root, progress=progress, **params)


def main(argv: list[str] | None = None) -> int:
    """``python -m oralx_lib synthesize`` / ``data_scripts/make_synthetic.py``: write a set."""
    p = argparse.ArgumentParser(
        prog="make_synthetic",
        description="Write an OralXrays-9-like synthetic set of panoramic X-rays in the released COCO layout.",
    )
    p.add_argument("--out", type=Path, default=None,
                   help="dataset root to write (default: $ORALX_DATA or the embedded data/synthetic)")
    for name in ("train", "val", "test"):
        p.add_argument(f"--{name}", type=int, default=DEFAULTS[name],
                       help=f"images in {name} (default {DEFAULTS[name]})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help=f"random seed (default {DEFAULTS['seed']})")
    p.add_argument("--width", type=int, default=DEFAULTS["width"],
                   help=f"image width (default {DEFAULTS['width']})")
    p.add_argument("--height", type=int, default=DEFAULTS["height"],
                   help=f"image height (default {DEFAULTS['height']})")
    p.add_argument("--if-needed", action="store_true",
                   help="only generate when the folder lacks this exact set (what `make` uses)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    params = dict(train=a.train, val=a.val, test=a.test, seed=a.seed, width=a.width, height=a.height)
    out = a.out if a.out is not None else default_data_root()
    try:
        if a.if_needed:
            root = ensure_synthetic(out, progress=not a.quiet, **params)
        else:
            root = generate_dataset(out, progress=not a.quiet, **params)
    except (ConfigError, ValueError) as exc:
        p.exit(2, f"make_synthetic: error: {exc}\n")
    print(f"synthetic set ready at {root}")
    return 0


__all__ = [
    "DEFAULTS",
    "DESCRIPTION",
    "MARKER",
    "SPLITS",
    "ensure_synthetic",
    "generate_dataset",
    "image_rng",
    "main",
    "render_panoramic",
]
