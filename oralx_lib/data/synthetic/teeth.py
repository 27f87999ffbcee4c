"""Teeth and anomalies, drawn patch by patch at full resolution: one function per tooth state
(missing, implant, pontic, natural tooth with its restorations and lesions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import _Frame, _ToothShape, _blob_mask, _make_frame, _soft, _tooth_shape
from .scene import _Scene, _Slot


@dataclass
class _Tooth:
    """One slot being drawn: its frame, the patch of ``A`` it adds to (a view), the bone
    coverage under the patch, its sizes in pixels and where its annotations go."""

    sc: _Scene
    slot: _Slot
    fr: _Frame
    patch: np.ndarray
    bone: np.ndarray
    W: int
    H: int
    ps: float
    half: float
    hc: float
    hr: float
    anns: list
    bridge_boxes: dict

    def add(self, cat: str, box) -> None:
        if box is not None:
            self.anns.append({"category": cat, "bbox": box})

    def add_bridge_part(self, box) -> None:
        if box is not None:
            self.bridge_boxes.setdefault(self.slot.bridge, []).append(box)


def _draw_teeth(sc: _Scene, A: np.ndarray, W: int, H: int, bone: np.ndarray) -> list[dict]:
    """Add every tooth, restoration and lesion to ``A`` in place; return the annotations.

    Each slot is drawn by the function of its state (:data:`_DRAW_STATE`): a missing tooth, an
    implant, a bridge's pontic, or a natural tooth with its restorations and lesions. The
    bridges' boxes are joined at the end (one box per bridge, over its abutments and pontics).
    """
    anns: list[dict] = []
    bridge_boxes: dict[int, list] = {}
    ps = max(W / 1024.0, 0.5)  # pixel scale of thin anatomical lines
    for slot in sc.slots:
        if slot.state == "absent":
            continue
        tooth = _tooth_patch(sc, slot, A, W, H, bone, ps, anns, bridge_boxes)
        if tooth is not None:
            _DRAW_STATE.get(slot.state, _draw_natural)(tooth)
    for boxes in bridge_boxes.values():
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[0] + b[2] for b in boxes)
        y1 = max(b[1] + b[3] for b in boxes)
        anns.append({"category": "Ceramic Bridge", "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return anns


def _tooth_patch(sc: _Scene, slot: _Slot, A: np.ndarray, W: int, H: int, bone: np.ndarray,
                 ps: float, anns: list, bridge_boxes: dict) -> _Tooth | None:
    """The frame and patch of one slot (``None`` when it falls outside the image)."""
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
        return None
    patch = fr.region(A)
    h, w = fr.s.shape  # bone coverage is at half resolution: nearest sample
    rows = np.minimum((np.arange(fr.y0, fr.y0 + h) * bone.shape[0]) // H, bone.shape[0] - 1)
    cols = np.minimum((np.arange(fr.x0, fr.x0 + w) * bone.shape[1]) // W, bone.shape[1] - 1)
    return _Tooth(sc=sc, slot=slot, fr=fr, patch=patch, bone=bone[np.ix_(rows, cols)], W=W, H=H,
                  ps=ps, half=half, hc=hc, hr=hr, anns=anns, bridge_boxes=bridge_boxes)


def _draw_missing(t: _Tooth) -> None:
    """A gap in the row; with a fresh extraction, a root-shaped socket lined by lamina dura."""
    fr, slot, hc, ps = t.fr, t.slot, t.hc, t.ps
    gap = _soft(np.minimum(0.47 * slot.w * t.W - np.abs(fr.s), np.minimum(fr.t, hc * 1.05 - fr.t)))
    if slot.socket:  # root-shaped hole in the bone lined by lamina dura
        shape = _tooth_shape(fr, slot, t.W, t.H)
        hole = shape.roots * np.clip((fr.t - hc) / (0.15 * hc), 0.0, 1.0)
        lam = np.exp(-(((shape.ring + 1.5 * ps) / (1.0 * ps)) ** 2))
        t.patch += t.bone * (0.08 * lam * (1.0 - shape.roots) - 0.55 * t.sc.anatomy["bone"] * hole)
        gap = np.maximum(gap, hole)
    t.add("Missing Tooth", fr.box(gap))


def _draw_implant(t: _Tooth) -> None:
    """A threaded screw with its abutment, under a crown or a healing cap."""
    fr, slot, hc, hr = t.fr, t.slot, t.hc, t.hr
    im = slot.implant
    r0 = im["r"] * slot.w * t.W
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
    t.patch += 2.6 * body
    t.add("Implant", fr.box(body))
    if im["crown"]:
        cap = _cap(fr, slot, t.W, t.H, extend=0.0)
        cap = cap * _soft(0.8 * hc - fr.t)
        t.patch += 1.8 * cap * (1.0 - body)
        t.add("Porcelain Crown", fr.box(cap))
    else:
        heal = _soft(np.minimum(0.75 * r0 - np.abs(fr.s), np.minimum(fr.t - 0.72 * hc, hc - fr.t)))
        t.patch += 2.2 * heal


def _draw_pontic(t: _Tooth) -> None:
    """A bridge's false tooth: a cap without roots, part of its bridge's box."""
    cap = _cap(t.fr, t.slot, t.W, t.H, extend=0.16)
    cap = cap * _soft(0.85 * t.hc - t.fr.t)
    t.patch += 1.9 * cap
    t.add_bridge_part(t.fr.box(cap))


def _draw_natural(t: _Tooth) -> None:
    """A natural tooth (crown, roots, pulp, ligament) with its decay, fillings, root canal
    filling, porcelain crown or bridge abutment, apical lesion, and the wisdom-tooth box."""
    fr, slot, sc, hc, ps, half = t.fr, t.slot, t.sc, t.hc, t.ps, t.half
    lk = sc.look
    dist = float(slot.side)
    shape = _tooth_shape(fr, slot, t.W, t.H)
    dens = slot.density * (lk["dentine"] * (shape.body - 0.45 * shape.pulp) + lk["enamel"] * shape.enamel)
    for b in slot.decay:
        spot = _blob_mask(fr, b, half, hc, sign=dist) * shape.crown
        dens = dens * (1.0 - 0.9 * spot)
        t.add("Decay", fr.box(spot))
    # periodontal ligament (dark) and lamina dura (bright) around the roots, inside bone
    in_bone = np.clip((fr.t - hc * 1.05) / (0.1 * hc), 0.0, 1.0) * t.bone
    ring = shape.ring
    pdl = np.exp(-(((ring + 0.9 * ps) / (0.7 * ps)) ** 2))
    lam = np.exp(-(((ring + 2.3 * ps) / (0.8 * ps)) ** 2))
    dens = dens + in_bone * (0.09 * lam - 0.12 * pdl) * (1.0 - shape.roots)
    dens = dens - 0.5 * sc.anatomy["bone"] * t.bone * shape.roots  # roots displace bone
    t.patch += dens
    if slot.fillings:
        fill = np.maximum.reduce([_blob_mask(fr, b, half, hc, sign=dist) for b in slot.fillings])
        fill = fill * shape.crown
        t.patch += 2.4 * fill
        t.add("Dental Filling", fr.box(fill))
    if slot.rct:
        lines = shape.canals * _soft(fr.t - hc * 0.95)
        t.patch += 2.4 * lines
        t.add("Root Canal Filling", fr.box(lines))
    if slot.porcelain:
        cap = _cap(fr, slot, t.W, t.H, extend=0.0)
        t.patch += 1.9 * cap
        t.add("Porcelain Crown", fr.box(cap))
    if slot.bridge >= 0:
        cap = _cap(fr, slot, t.W, t.H, extend=0.16)
        t.patch += 1.9 * cap
        t.add_bridge_part(fr.box(cap))
    if slot.apical is not None and shape.apices:
        _draw_apical(t, shape)
    if slot.pos == 8:
        t.add("Wisdom Tooth", fr.box(shape.body))


def _draw_apical(t: _Tooth, shape: _ToothShape) -> None:
    """Apical periodontitis: a dark halo around one root's apex, sometimes with a bright rim."""
    fr, ps = t.fr, t.ps
    ap = t.slot.apical
    s_a, t_a = shape.apices[min(ap["root"], len(shape.apices) - 1)]
    R = ap["r"] * t.slot.w * t.W
    blob = dict(ap["blob"], cs=0.0, ct=0.0, rs=1.0, rt=0.9)
    halo = _blob_mask(fr, blob, R, R, s_origin=s_a, t_origin=t_a + 0.25 * R, edge=2.5 * ps)
    depth = 0.42 * t.sc.anatomy["bone"]
    t.patch -= depth * halo * (1.0 - 0.85 * shape.roots) * np.maximum(t.bone, 0.3)
    if ap["rim"]:
        rim = _blob_mask(fr, blob, R * 1.25, R * 1.25, s_origin=s_a, t_origin=t_a + 0.25 * R)
        t.patch += 0.08 * (rim - halo) * (1.0 - shape.roots)
    t.add("Apical Periodontitis", fr.box(halo))


#: How a slot of each state is drawn (any other state: a natural tooth).
_DRAW_STATE = {"missing": _draw_missing, "implant": _draw_implant, "pontic": _draw_pontic}


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
