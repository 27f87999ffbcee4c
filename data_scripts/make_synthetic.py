#!/usr/bin/env python
"""Write the OralXrays-9-like synthetic set (see :mod:`oralx_lib.data.synthetic`).

    python data_scripts/make_synthetic.py --out data/synthetic [--train 160 --val 40 --test 40]
                                          [--seed 0] [--width 1024 --height 580] [--if-needed]

Without ``--out`` the set goes to ``$ORALX_DATA`` or the embedded ``data/synthetic``.
``--if-needed`` skips the work when the folder already holds this exact set.
``--rare-eval`` (or ``--rare-eval N``) adds images to the validation and test splits until every
class has at least 50 (N) boxes there; the training split keeps the long tail:

    python data_scripts/make_synthetic.py --out data/synthetic-rare-eval --rare-eval
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
