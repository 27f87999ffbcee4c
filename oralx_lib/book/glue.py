"""Results quoted in a chapter's prose: :func:`glue` stores a value under a key, and the markdown
quotes it with myst-nb's roles (``{glue:text}`ch01_share:.0%```), so the page's text shows
what the page computed instead of a number typed by hand.

Keys are unique across the book and start with the chapter's number (``ch01_``, ``ch02_``...).
Outside a book build (Colab, a plain Jupyter session without myst-nb) :func:`glue` only
returns the value.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

#: What a key looks like: the page's prefix (``chNN`` for chapter NN, three letters for a page of
#: the back matter, e.g. ``rep`` for the reproduction page), then lower-case words joined by ``_``.
KEY = re.compile(r"^(ch\d\d|[a-z]{3})_[a-z0-9_]+$")


def plain(value: Any) -> Any:
    """``value`` as a plain Python object: NumPy and PyTorch scalars become ``int``, ``float``
    or ``bool`` (myst-nb formats ``{glue:text}`key:.1f``` from the value's ``repr``, and
    ``np.float64(0.5)`` is no number to it); strings and other objects are returned as they
    are."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a 0-d tensor or array
        return value.item()
    return value


def glue(key: str, value: Any, display: bool = False) -> Any:
    """Store ``value`` under ``key`` for the chapter's markdown (myst-nb's ``glue``, nothing
    displayed unless ``display``); return the plain value.

    Raises:
        ValueError: ``key`` is not of the form ``chNN_words``.
    """
    if not KEY.match(key):
        raise ValueError(f"glue key {key!r}: use 'chNN_' and lower-case words (e.g. "
                         "'ch01_small_share'), unique across the book.")
    value = plain(value)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab or a plain Jupyter session: nothing to glue into
        return value
    myst_glue(key, value, display=display)
    return value
