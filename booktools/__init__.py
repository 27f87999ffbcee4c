"""The book's site tooling, outside the shipped library: executing and rendering the chapters
(:mod:`~booktools.bookbuild`), the student edition (:mod:`~booktools.student`), notebook
housekeeping (:mod:`~booktools.notebooks`), the kernel-client guard
(:mod:`~booktools.kernelclient`) and the map of the house (:mod:`~booktools.import_map`).

It imports the library (``oralx_lib``); the library never imports it. Run it from the
repository root (``python -m booktools.bookbuild``, what ``make book`` does).
"""
