"""The colours of every figure: safe for colour-blind readers, and never the only cue.

- :data:`OKABE_ITO`: Okabe and Ito's eight colours, distinguishable with any of the three
  common colour-vision deficiencies; :data:`CYCLE` is the order in which plots use them.
- :data:`CLASS_COLORS`: one colour per OralXrays-9 class, chosen from the Okabe-Ito and Paul
  Tol palettes so that every pair stays apart under protanopia, deuteranopia and tritanopia
  (:func:`simulate`), and bright enough to read on a dark radiograph. Boxes also carry the
  class name.
- :data:`STATUS_STYLES`: how to draw a box or line whose *meaning* is a verdict (correct or
  background detection, positive or ignored anchor): a colour **and** a line style, so that no
  verdict depends on telling two colours apart.

:func:`use` makes :data:`CYCLE` matplotlib's default colour cycle; the chapters call it once.
"""

from __future__ import annotations

import numpy as np

from . import CLASSES

#: Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO: dict[str, str] = {
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "black": "#000000",
}

#: The default order of colours in a plot (yellow last: it is faint on white).
CYCLE: tuple[str, ...] = tuple(OKABE_ITO[k] for k in (
    "blue", "orange", "bluish green", "vermillion", "reddish purple", "sky blue", "black",
    "yellow"))

#: Line styles to pair with :data:`CYCLE` when lines must differ by more than their colour.
LINESTYLES: tuple = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)),
                     (0, (5, 5)))

#: One colour per class, in the released class order (Okabe-Ito and Paul Tol's "bright",
#: "muted" and "light" schemes).
CLASS_COLORS: dict[str, str] = dict(zip(CLASSES, (
    "#D55E00",  # Apical Periodontitis: vermillion
    "#0072B2",  # Decay: blue
    "#44BB99",  # Wisdom Tooth: mint
    "#EEDD88",  # Missing Tooth: sand
    "#AA3377",  # Dental Filling: wine
    "#77AADD",  # Root Canal Filling: light blue
    "#BBCC33",  # Implant: pear
    "#99DDFF",  # Porcelain Crown: pale cyan
    "#999933",  # Ceramic Bridge: olive
)))

#: Verdicts drawn as boxes or lines: colour and line style (both differ between any two).
STATUS_STYLES: dict[str, dict] = {
    # detections by error kind (the error analysis)
    "correct": {"color": OKABE_ITO["blue"], "linestyle": "-"},
    "duplicate": {"color": OKABE_ITO["sky blue"], "linestyle": (0, (1, 1))},
    "class": {"color": OKABE_ITO["orange"], "linestyle": "-."},
    "localisation": {"color": OKABE_ITO["reddish purple"], "linestyle": (0, (5, 2))},
    "background": {"color": OKABE_ITO["vermillion"], "linestyle": ":"},
    "missed": {"color": OKABE_ITO["yellow"], "linestyle": (0, (8, 3))},
    # anchor labels and matches
    "positive": {"color": OKABE_ITO["yellow"], "linestyle": "-"},
    "ignored": {"color": OKABE_ITO["reddish purple"], "linestyle": "--"},
    "negative": {"color": OKABE_ITO["vermillion"], "linestyle": ":"},
    # a ground truth against a prediction
    "ground truth": {"color": OKABE_ITO["bluish green"], "linestyle": "-"},
    "prediction": {"color": OKABE_ITO["orange"], "linestyle": "--"},
}


def class_color(label: int) -> str:
    """The colour of torchvision-style label ``label`` (1..9)."""
    return CLASS_COLORS[CLASSES[int(label) - 1]]


def _linear(rgb: np.ndarray) -> np.ndarray:
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def rgb(color: str) -> np.ndarray:
    """``"#RRGGBB"`` (or any matplotlib colour) -> sRGB floats in [0, 1]."""
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(color), dtype=float)


def luminance(color: str) -> float:
    """Relative luminance (WCAG) of a colour, 0 for black to 1 for white."""
    lin = _linear(rgb(color))
    return float(0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2])


def text_color(background: str) -> str:
    """Black or white, whichever reads better on ``background``."""
    return "black" if luminance(background) > 0.3 else "white"


#: Machado, Oliveira & Fernandes (2009) simulation matrices at full severity, on linear RGB.
CVD_MATRICES: dict[str, np.ndarray] = {
    "protanopia": np.array([[0.152286, 1.052583, -0.204868],
                            [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968],
                              [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779],
                            [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}


def simulate(color: str, vision: str) -> np.ndarray:
    """How ``color`` looks (sRGB in [0, 1]) with ``vision``: ``"normal"`` or a key of
    :data:`CVD_MATRICES`."""
    if vision == "normal":
        return rgb(color)
    return _srgb(CVD_MATRICES[vision] @ _linear(rgb(color)))


def min_distance(colors, visions=("normal", *CVD_MATRICES)) -> float:
    """The smallest sRGB distance between two of ``colors`` under any of ``visions``."""
    colors = list(colors)
    best = float("inf")
    for vision in visions:
        seen = [simulate(c, vision) for c in colors]
        for i in range(len(seen)):
            for j in range(i + 1, len(seen)):
                best = min(best, float(np.linalg.norm(seen[i] - seen[j])))
    return best


def use() -> None:
    """Make :data:`CYCLE` matplotlib's default colour cycle (idempotent)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams["axes.prop_cycle"] = cycler(color=list(CYCLE))


__all__ = ["CLASS_COLORS", "CVD_MATRICES", "CYCLE", "LINESTYLES", "OKABE_ITO", "STATUS_STYLES",
           "class_color", "luminance", "min_distance", "rgb", "simulate", "text_color", "use"]
