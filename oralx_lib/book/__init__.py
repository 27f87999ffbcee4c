"""What the book's chapters use to measure, draw and explore, and the exercises' self-checks.

This package is part of the library (Colab users install it with the rest), but nothing in
``oralx_lib`` outside it imports it: the book uses the library, never the reverse.

- ``experiments``: the chapters' shared training runs (:func:`~.experiments.run_experiment`);
- ``*_stats``: measurements (tables and tensors, no drawing): ``rpn_stats``, ``eval_stats``,
  ``moqam_stats``;
- ``figures`` and ``*_figures``: drawings on matplotlib axes: ``figures`` (X-rays with boxes,
  galleries, dataset statistics), ``rpn_figures``, ``eval_figures``, ``moqam_figures``;
- ``explorers``: the ipywidgets explorers (each calls a drawing function a static page uses);
- ``selfcheck``: ``selfcheck.check_<something>(your_answer)`` for the exercises.
"""
