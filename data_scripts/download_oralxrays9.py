#!/usr/bin/env python
"""Download (or take from --from-archive), extract, arrange and verify OralXrays-9.

Run from the repository root: `python data_scripts/download_oralxrays9.py --help`. The logic lives in
:mod:`oralx_lib.data.real` (`download_main`).
"""

import sys
from pathlib import Path

try:
    import oralx_lib  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oralx_lib.data.real import download_main

if __name__ == "__main__":
    sys.exit(download_main())
