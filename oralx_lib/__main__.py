"""``python -m oralx_lib ...``: see :mod:`oralx_lib.cli`."""

from oralx_lib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
