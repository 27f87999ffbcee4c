#!/usr/bin/env python
"""Write the OralXrays-9-like synthetic set (see :mod:`oralx_lib.data.synthetic`).

    python data_scripts/make_synthetic.py --out data/synthetic [--train 160 --val 40 --test 40]
                                          [--seed 0] [--width 1024 --height 580] [--if-needed]

Without ``--out`` the set goes to ``$ORALX_DATA`` or the embedded ``data/synthetic``.
``--if-needed`` skips the work when the folder already holds this exact set.
"""

import sys
from pathlib import Path

try:
    import oralx_lib  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oralx_lib.data.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
