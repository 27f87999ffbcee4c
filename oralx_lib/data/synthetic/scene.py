"""The scene of one image, in resolution-independent units: tooth templates, the 32 slots and
their states (present, missing, implant, pontic, ...), restorations and lesions, the look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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


def _scene_classes(sc: _Scene) -> set[str]:
    """The classes a scene may hold a box of (drawn boxes can still be lost at the image edge):
    a cheap test on the scene alone, before any pixel (``generate_dataset``'s rare-class
    enrichment renders only the scenes that may help)."""
    found: set[str] = set()
    for s in sc.slots:
        if s.state == "absent":
            continue
        if s.state == "missing":
            found.add("Missing Tooth")
        elif s.state == "implant":
            found.add("Implant")
            if s.implant and s.implant.get("crown"):
                found.add("Porcelain Crown")
        if s.bridge >= 0:
            found.add("Ceramic Bridge")
        if s.state != "natural":
            continue
        if s.pos == 8:
            found.add("Wisdom Tooth")
        if s.decay:
            found.add("Decay")
        if s.fillings:
            found.add("Dental Filling")
        if s.rct:
            found.add("Root Canal Filling")
        if s.porcelain:
            found.add("Porcelain Crown")
        if s.apical is not None:
            found.add("Apical Periodontitis")
    return found
