#!/usr/bin/env python
"""Check an OralXrays-9 dataset root and print counts and problems (exit 1 on problems).

Run from the repository root: `python data_scripts/verify_dataset.py --help`. The logic lives in
:mod:`oralx_lib.data.real` (`verify_main`).
"""

import sys
from pathlib import Path

try:
    import oralx_lib  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oralx_lib.data.real import verify_main

if __name__ == "__main__":
    sys.exit(verify_main())
