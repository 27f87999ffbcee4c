"""The student edition: solution removal from notebooks, the derived configuration, and the
Sphinx extension that hides gated solutions (a one-page Sphinx build, not the whole book)."""

import copy
import subprocess
import sys
import textwrap

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from oralx_lib.errors import ConfigError
from booktools.bookbuild import tools_env
from booktools.student import (
    EXTENSION,
    SolutionMarkupError,
    remove_solutions,
    student_config,
    student_notebook,
    write_student_notebooks,
)

START = "```{solution-start} ex-one\n:class: dropdown\n```\n"
END = "```{solution-end}\n```\n"


def _notebook():
    """intro, setup code (with an output), exercise, solution over four cells, a later cell."""
    cells = [
        new_markdown_cell("# A chapter\n\nSome text."),
        new_code_cell("x = 1\nprint(x)", outputs=[new_output("stream", name="stdout", text="1\n")],
                      execution_count=1, metadata={"tags": ["keep-me"]}),
        new_markdown_cell("```{exercise-start}\n:label: ex-one\n```\n\nWrite `f`.\n\n"
                          "```{exercise-end}\n```"),
        new_markdown_cell("Before the solution.\n\n" + START + "The idea is SECRET-IDEA."),
        new_code_cell("def f():\n    return 'SECRET-CODE'", execution_count=2),
        new_markdown_cell("More SECRET-TEXT."),
        new_code_cell("f()", outputs=[new_output("execute_result", data={"text/plain": "1"},
                                                 execution_count=3)], execution_count=3),
        new_markdown_cell("Last words of the SECRET-END solution.\n" + END + "\n## Summary\n\nDone."),
        new_code_cell("y = 2", execution_count=4),
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3",
                                                              "display_name": "Python 3",
                                                              "language": "python"}})


def _text(nb):
    return "\n".join(c.source for c in nb.cells)


def test_solution_cells_are_removed_and_everything_else_is_kept():
    nb = _notebook()
    original = copy.deepcopy(nb)
    out = remove_solutions(nb, name="ch.ipynb")
    assert nb == original, "the input notebook must not be modified"
    assert "SECRET" not in _text(out)
    sources = [c.source for c in out.cells]
    # untouched cells: identical, outputs and metadata included
    assert out.cells[0] == nb.cells[0]
    assert out.cells[1] == nb.cells[1]
    assert out.cells[2] == nb.cells[2]  # the exercise
    assert out.cells[-1] == nb.cells[-1]
    # the start and end cells keep their text outside the solution
    assert sources[3] == "Before the solution."
    assert sources[4] == "## Summary\n\nDone."
    assert len(out.cells) == 6


def test_student_notebook_strips_outputs_but_remove_solutions_does_not():
    nb = _notebook()
    assert remove_solutions(nb).cells[1].outputs
    student = student_notebook(nb)
    code = [c for c in student.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["x = 1\nprint(x)", "y = 2"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert student.metadata["kernelspec"]["name"] == "python3"


def test_directives_alone_in_their_cells_drop_those_cells():
    nb = new_notebook(cells=[
        new_markdown_cell("intro"),
        new_markdown_cell(START),
        new_code_cell("answer = 42"),
        new_markdown_cell(END),
        new_code_cell("after = 1"),
    ])
    out = remove_solutions(nb)
    assert [c.source for c in out.cells] == ["intro", "after = 1"]


def test_colon_fences_longer_fences_and_a_solution_within_one_cell():
    nb = new_notebook(cells=[
        new_markdown_cell(":::{solution-start} ex\n:::\nhidden"),
        new_code_cell("hidden = 1"),
        new_markdown_cell("````{solution-end}\n````\nvisible"),
        new_markdown_cell("a\n```{solution-start} ex2\n```\nhidden\n```{solution-end}\n```\nb"),
        new_markdown_cell("c\n\n````{solution} ex3\n:class: dropdown\n"
                          "```python\nhidden()\n```\n````\n\nd"),
    ])
    out = remove_solutions(nb)
    assert [c.source for c in out.cells] == ["visible", "a\nb", "c\n\n\nd"]


def test_a_notebook_without_solutions_comes_back_equal():
    nb = new_notebook(cells=[new_markdown_cell("```python\nprint(1)\n```"), new_code_cell("1")])
    assert remove_solutions(nb) == nb


@pytest.mark.parametrize("cells, message", [
    ([new_markdown_cell(START), new_code_cell("x")], "cell 0: this solution-start has no"),
    ([new_markdown_cell("text"), new_markdown_cell(END)], "cell 1: a solution-end without"),
    ([new_markdown_cell(START), new_markdown_cell(START)], "cell 1: a solution-start inside"),
    ([new_markdown_cell("```{solution-start} ex\n:class: dropdown\n")], "never closed"),
])
def test_unbalanced_solutions_name_the_cell_and_the_fix(cells, message):
    with pytest.raises(SolutionMarkupError, match=message) as err:
        remove_solutions(new_notebook(cells=cells), name="book/ch.ipynb")
    assert "book/ch.ipynb" in str(err.value)


def test_write_student_notebooks(tmp_path):
    book = tmp_path / "book"
    (book / "sub").mkdir(parents=True)
    nbformat.write(_notebook(), book / "ch.ipynb")
    nbformat.write(_notebook(), book / "sub" / "other.ipynb")
    written = write_student_notebooks(book, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "ch.ipynb", "sub/other.ipynb"]
    nb = nbformat.read(tmp_path / "out" / "ch.ipynb", as_version=4)
    assert "SECRET" not in _text(nb) and "Write `f`." in _text(nb)
    with pytest.raises(ConfigError, match="--book-dir"):
        write_student_notebooks(tmp_path / "missing", tmp_path / "out")


def test_student_config_hides_solutions(tmp_path):
    config = {"title": "OralX Book", "execute": {"execute_notebooks": "cache"},
              "sphinx": {"extra_extensions": ["sphinx_exercise"],
                         "config": {"hide_solutions": False, "nb_execution_show_tb": True}}}
    original = copy.deepcopy(config)
    cfg = student_config(config)
    assert config == original
    assert cfg["sphinx"]["config"] == {"hide_solutions": True, "nb_execution_show_tb": True}
    assert cfg["sphinx"]["extra_extensions"] == ["sphinx_exercise", EXTENSION]
    assert cfg["execute"] == {"execute_notebooks": "cache"}
    assert cfg["title"] == "OralX Book (student edition)"
    bare = student_config({})
    assert bare["sphinx"]["extra_extensions"] == ["sphinx_exercise", EXTENSION]
    assert "execute" not in bare


def _sphinx_page(tmp_path, hide: bool) -> str:
    src = tmp_path / ("hidden" if hide else "shown")
    src.mkdir()
    (src / "conf.py").write_text(textwrap.dedent(f"""
        extensions = ["myst_parser", "sphinx_exercise", "{EXTENSION}"]
        hide_solutions = {hide}
        """))
    (src / "index.md").write_text(textwrap.dedent("""
        # Page

        ```{exercise-start}
        :label: ex-a
        ```
        EXERCISE-TEXT
        ```{exercise-end}
        ```

        ```{solution-start} ex-a
        :class: dropdown
        ```
        SOLUTION-TEXT

        ```python
        print("SOLUTION-CODE")
        ```
        ```{solution-end}
        ```

        AFTER-TEXT
        """))
    result = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", str(src),
                             str(src / "_out")], capture_output=True, text=True, timeout=120,
                            env=tools_env())
    assert result.returncode == 0, result.stderr
    return (src / "_out" / "index.html").read_text()


def test_the_sphinx_extension_removes_gated_solutions(tmp_path):
    hidden = _sphinx_page(tmp_path, hide=True)
    assert "EXERCISE-TEXT" in hidden and "AFTER-TEXT" in hidden
    assert "SOLUTION-TEXT" not in hidden and "SOLUTION-CODE" not in hidden
    shown = _sphinx_page(tmp_path, hide=False)
    assert "SOLUTION-TEXT" in shown and "SOLUTION-CODE" in shown and "AFTER-TEXT" in shown
