#!/usr/bin/env python
"""Carve a deterministic test split out of val (the release may ship only train and val).

Run from the repository root: `python data_scripts/split_dataset.py --help`. The logic lives in
:mod:`oralx_lib.data.real` (`split_main`).
"""

import sys
from pathlib import Path

try:
    import oralx_lib  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oralx_lib.data.real import split_main

if __name__ == "__main__":
    sys.exit(split_main())
