"""The student edition of the book: the same chapters with every exercise's solution removed.

``make student`` (``python -m booktools.bookbuild --student``, :mod:`booktools.bookbuild`)
writes, from the same executed chapters as ``make book``:

- ``_build/student/html/``: the site rendered with sphinx-exercise's ``hide_solutions: True``
  (the configuration of :func:`student_config`, derived from ``_config.yml``);
- ``_build/student/notebooks/``: every notebook of ``book/`` without its solutions and without
  outputs (:func:`write_student_notebooks`), ready to hand out.

What counts as a solution
-------------------------
Chapters mark solutions with sphinx-exercise's *gated* directives, each directive in its own
markdown cell and the solution's code cells between them::

    ```{solution-start} data-ex-small        <- markdown cell
    :class: dropdown
    ```
    text of the solution ...
    (code cells of the solution)
    ... ```{solution-end}                    <- markdown cell
    ```

Everything from the ``solution-start`` fence through the ``solution-end`` fence is removed: the
cells in between, the text after ``solution-start`` in its cell and the text before
``solution-end`` in its cell. Text *before* ``solution-start`` and *after* ``solution-end`` in
the same cells is kept (a chapter may continue with its summary in the ``solution-end`` cell).
One-piece ``{solution}`` directives inside a markdown cell are removed as well.

Two details of the HTML build
-----------------------------
- sphinx-exercise 1.x drops a hidden ``solution-start`` but leaves its content and the
  ``solution-end`` node, which no HTML writer can render. The build therefore also loads this
  module as a Sphinx extension (:func:`setup`): under ``hide_solutions`` it turns
  ``solution-start`` into a marker and removes the marker, everything after it and the
  ``solution-end`` node from the page, outputs of the solution's code cells included.
- Nothing is executed for the student edition: the build renders the notebooks
  :mod:`booktools.bookbuild` executed (and cached) for the main site, so both editions show the
  same results.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
from tqdm.auto import tqdm

from oralx_lib.errors import ConfigError, OralXError

from . import notebooks as _notebooks

#: The Sphinx extension module that the student build adds (this module, see :func:`setup`).
EXTENSION = "booktools.student"

_OPEN = re.compile(r"^\s{0,3}(?P<fence>`{3,}|:{3,})\{(?P<name>solution-start|solution-end|solution)\}")
_CLOSE_CHARS = {"`", ":"}


class SolutionMarkupError(OralXError, ValueError):
    """A notebook's solution directives are unbalanced (a ``solution-start`` without its
    ``solution-end``, or the reverse, or a directive fence that is never closed)."""


# ------------------------------------------------------------------------ notebooks

def _closing_line(lines: list[str], start: int, fence: str) -> int | None:
    """Index of the line after ``start`` that closes a directive opened with ``fence``."""
    char, n = fence[0], len(fence)
    for j in range(start + 1, len(lines)):
        s = lines[j].strip()
        if len(s) >= n and set(s) == {char}:
            return j
    return None


def _cut_markdown(text: str, inside: bool, *, where: str) -> tuple[str, bool, bool]:
    """Remove the solution parts of one markdown cell's ``text``.

    Args:
        text: the cell's source.
        inside: whether a ``solution-start`` before this cell is still open.
        where: ``"NOTEBOOK, cell K"`` for error messages.

    Returns:
        ``(kept_text, inside_after, changed)``.
    """
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    changed = False
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            if not inside:
                kept.append(lines[i])
            i += 1
            continue
        changed = True
        name, fence = m["name"], m["fence"]
        close = _closing_line(lines, i, fence)
        if close is None:
            raise SolutionMarkupError(
                f"{where}: the {{{name}}} directive opened with {fence} is never closed; end it "
                f"with a line holding only {fence} (in the same markdown cell).")
        if name == "solution-start":
            if inside:
                raise SolutionMarkupError(
                    f"{where}: a solution-start inside another solution; add the missing "
                    "```{solution-end}``` cell before it.")
            inside = True
        elif name == "solution-end":
            if not inside:
                raise SolutionMarkupError(
                    f"{where}: a solution-end without a solution-start before it; add the "
                    "```{solution-start} LABEL``` cell or remove this one.")
            inside = False
        i = close + 1
    return "".join(kept).strip("\n"), inside, changed


def remove_solutions(nb: nbformat.NotebookNode, *, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of ``nb`` without its solutions (see the module docstring for the rule).

    Cells outside every solution are kept as they are (same source, metadata and outputs);
    markdown cells that held a directive keep only their text outside the solution, and are
    dropped when nothing is left.

    Args:
        nb: a notebook (nbformat 4).
        name: the notebook's name, for error messages.

    Raises:
        SolutionMarkupError: unbalanced or unclosed solution directives.
    """
    out = copy.deepcopy(nb)
    cells = []
    inside = False
    start_cell = None
    for k, cell in enumerate(out.cells):
        if cell.cell_type == "markdown":
            was_inside = inside
            text, inside, changed = _cut_markdown(cell.source, inside, where=f"{name}, cell {k}")
            if inside and not was_inside:
                start_cell = k
            if not changed:
                if not inside:
                    cells.append(cell)
                continue
            if text.strip():
                cell.source = text
                cells.append(cell)
        elif not inside:
            cells.append(cell)
    if inside:
        raise SolutionMarkupError(
            f"{name}, cell {start_cell}: this solution-start has no solution-end; add a markdown "
            "cell with ```{solution-end}``` (and a closing ```) after the solution's last cell.")
    out.cells = cells
    return out


def student_notebook(nb: nbformat.NotebookNode, *, name: str = "notebook") -> nbformat.NotebookNode:
    """``nb`` as handed to students: solutions removed (:func:`remove_solutions`), outputs and
    execution counts stripped, the ``python3`` kernel set (:func:`booktools.notebooks.strip`)."""
    out = remove_solutions(nb, name=name)
    _notebooks.strip(out)
    return out


def write_student_notebooks(book_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write :func:`student_notebook` of every notebook under ``book_dir`` to ``out_dir`` (same
    relative paths); return the written paths."""
    book_dir, out_dir = Path(book_dir), Path(out_dir)
    if not book_dir.is_dir():
        raise ConfigError(f"{book_dir}: no such folder; pass --book-dir, the folder with the "
                          "chapters' .ipynb files.")
    written = []
    for path in tqdm(_notebooks.notebooks([book_dir]), desc="student notebooks", unit="nb"):
        nb = nbformat.read(path, as_version=4)
        target = out_dir / path.relative_to(book_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student_notebook(nb, name=str(path)), target)
        written.append(target)
    return written


# ----------------------------------------------------------------------------- site

def student_config(config: dict) -> dict:
    """The student build's Jupyter Book configuration: a copy of ``config`` (the parsed
    ``_config.yml``) with ``sphinx.config.hide_solutions: True``, this module added to
    ``sphinx.extra_extensions`` (after ``sphinx_exercise``) and "(student edition)" appended to
    the title."""
    cfg = copy.deepcopy(config) if config else {}
    sphinx = cfg.setdefault("sphinx", {}) or {}
    cfg["sphinx"] = sphinx
    sphinx_config = sphinx.setdefault("config", {}) or {}
    sphinx["config"] = sphinx_config
    sphinx_config["hide_solutions"] = True
    extensions = list(sphinx.get("extra_extensions") or [])
    if "sphinx_exercise" not in extensions:
        extensions.append("sphinx_exercise")
    if EXTENSION not in extensions:
        extensions.append(EXTENSION)
    sphinx["extra_extensions"] = extensions
    cfg["title"] = f"{cfg.get('title', 'Book')} (student edition)"
    return cfg


# ------------------------------------------------------------------ Sphinx extension

def setup(app):
    """Sphinx extension of the student build: remove gated solutions under ``hide_solutions``.

    ``solution-start`` becomes a marker node; a transform that runs after sphinx-exercise's
    structure check and before it merges gated solutions removes, in the marker's parent, the
    marker and every node up to and including the next ``solution-end`` node.
    """
    from docutils import nodes
    from sphinx.errors import ExtensionError
    from sphinx.transforms import SphinxTransform

    app.setup_extension("sphinx_exercise")
    from sphinx_exercise.directive import SolutionStartDirective
    from sphinx_exercise.nodes import solution_end_node

    class hidden_solution_start(nodes.General, nodes.Element):
        """Where a hidden gated solution starts (removed before any writer sees it)."""

    class HidingSolutionStart(SolutionStartDirective):
        def run(self):
            result = super().run()
            if not self.config.hide_solutions:
                return result
            marker = hidden_solution_start()
            self.set_source_info(marker)
            return [marker]

    class RemoveHiddenSolutions(SphinxTransform):
        # after sphinx-exercise's CheckGatedDirectives (1), before MergeGatedSolutions (10)
        default_priority = 5

        def apply(self):
            for marker in list(self.document.findall(hidden_solution_start)):
                parent = marker.parent
                start = parent.index(marker)
                end = next((k for k in range(start + 1, len(parent.children))
                            if isinstance(parent.children[k], solution_end_node)), None)
                if end is None:
                    raise ExtensionError(
                        f"{self.env.docname}, line {marker.line}: this solution-start has no "
                        "solution-end in the same section; end the solution before the next "
                        "heading.")
                del parent.children[start:end + 1]

    app.add_node(hidden_solution_start)
    app.add_directive("solution-start", HidingSolutionStart, override=True)
    app.add_transform(RemoveHiddenSolutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
