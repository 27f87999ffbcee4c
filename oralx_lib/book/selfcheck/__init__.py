"""Self-checks for the book's exercises.

Call ``selfcheck.check_<something>(your_answer)``: it prints one line when the answer agrees with
the library on hand-made and random cases, or raises ``AssertionError`` with a hint. The checks
live in one module per chapter (``data``, ``basics``, ``rpn``, ``di_rpn``, ``cb_scr``,
``evaluation``, ``moqam``); this package finds a check by name in whichever module has it.
"""

from __future__ import annotations

import importlib

_CHAPTER_MODULES = ("data", "basics", "rpn", "di_rpn", "cb_scr", "evaluation", "moqam")


def _modules():
    for name in _CHAPTER_MODULES:
        try:
            yield importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


def __getattr__(name: str):
    if name.startswith("check_"):
        for module in _modules():
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({n for m in _modules() for n in dir(m) if n.startswith("check_")})
