"""Drawing helpers: a tooth's local frame, soft masks, tooth outlines, noise and resizing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .scene import _KIND, _Slot


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
