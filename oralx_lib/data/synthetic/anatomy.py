"""The anatomy of a panoramic X-ray (soft tissue, spine, jaws, sinuses, ...), drawn at half
resolution and upsampled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .geometry import _band_noise, _lowres_resize
from .scene import _Scene, _occlusal_y


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
