"""The synthetic set's defaults, file names and version (what :func:`ensure_synthetic` compares).
"""

from __future__ import annotations

import re


#: The book's default synthetic set (see the module docstring for the choice).
DEFAULTS: dict[str, int] = {
    "train": 160,
    "val": 40,
    "test": 40,
    "width": 1024,
    "height": 580,
    "seed": 0,
}

#: Written at the root, last, with the parameters: its absence means "incomplete".
MARKER = "SYNTHETIC.json"

#: Bumped whenever the drawing changes, so :func:`ensure_synthetic` regenerates old sets.
GENERATOR_VERSION = 1

#: ``info.description`` of every JSON this module writes (tells a synthetic set from a real one).
DESCRIPTION = "OralXrays-9-like synthetic panoramic X-rays (oralx_lib.data.synthetic)"

_JPEG_QUALITY = 92
_MIN_SIZE = (64, 40)
_FILE_RE = re.compile(r"^\d{6}\.jpg$")
