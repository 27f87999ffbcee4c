"""The book builder: cache keys, the staged configuration, and the stall watchdog."""

from __future__ import annotations

import time

import nbformat
import pytest
import yaml

from booktools import bookbuild


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_notebook_key_follows_cells_and_environment(tmp_path):
    a = _notebook(tmp_path / "a.ipynb", "x = 1", "print(x)")
    key = bookbuild.notebook_key(a, "env")
    assert bookbuild.notebook_key(a, "env") == key
    assert bookbuild.notebook_key(a, "other env") != key
    _notebook(a, "x = 2", "print(x)")
    assert bookbuild.notebook_key(a, "env") != key


def test_notebook_key_follows_a_figure_caption(tmp_path):
    # the site shows the executed copy, so a new caption or alt text must re-stage it
    a = _notebook(tmp_path / "a.ipynb", "x = 1")
    key = bookbuild.notebook_key(a, "env")
    nb = nbformat.read(a, as_version=4)
    nb.cells[0].metadata["mystnb"] = {"image": {"alt": "a plot of x"}}
    nbformat.write(nb, a)
    assert bookbuild.notebook_key(a, "env") != key
    nb.cells[0].metadata["tags"] = ["hide-input"]
    nbformat.write(nb, a)
    with_tag = bookbuild.notebook_key(a, "env")
    nb.cells[0].metadata["tags"] = []
    nbformat.write(nb, a)
    assert bookbuild.notebook_key(a, "env") == with_tag  # other metadata does not count


def test_environment_key_follows_the_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path))
    monkeypatch.setenv("ORALX_PROFILE", "fast")
    fast = bookbuild.environment_key(tmp_path)
    monkeypatch.setenv("ORALX_PROFILE", "full")
    assert bookbuild.environment_key(tmp_path) != fast


def test_cached_key_of_missing_or_damaged_copies(tmp_path):
    assert bookbuild.cached_key(tmp_path / "missing.ipynb") is None
    (tmp_path / "bad.ipynb").write_text("{not json")
    assert bookbuild.cached_key(tmp_path / "bad.ipynb") is None


def _book(root):
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text(yaml.safe_dump(
        {"title": "T", "execute": {"execute_notebooks": "cache", "timeout": 10},
         "sphinx": {"extra_extensions": ["sphinx_exercise"]}}))
    (root / "_toc.yml").write_text(yaml.safe_dump(
        {"format": "jb-book", "root": "book/intro",
         "parts": [{"caption": "C", "chapters": [{"file": "book/ch"}]}]}))
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "book" / "refs.bib").write_text("")
    return root


def test_stage_sources_turns_execution_off(tmp_path):
    root = _book(tmp_path / "root")
    stage = bookbuild.stage_sources(root, tmp_path / "stage")
    config = yaml.safe_load((stage / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["execute"]["timeout"] == 10
    assert (stage / "book" / "intro.md").read_text() == "# Intro\n"
    assert (stage / "book" / "refs.bib").is_file()
    student = bookbuild.stage_sources(root, tmp_path / "student", student=True)
    config = yaml.safe_load((student / "_config.yml").read_text())
    assert config["sphinx"]["config"]["hide_solutions"] is True
    assert "booktools.student" in config["sphinx"]["extra_extensions"]
    assert config["execute"]["execute_notebooks"] == "off"


def test_stage_sources_without_config(tmp_path):
    with pytest.raises(bookbuild.ConfigError, match="_config.yml"):
        bookbuild.stage_sources(tmp_path, tmp_path / "stage")


@pytest.mark.slow
def test_execute_chapters_executes_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "no-data"))
    root = _book(tmp_path / "root")
    _notebook(root / "book" / "ch.ipynb", "import os\nprint(os.getcwd())", "6 * 7")
    stage = tmp_path / "stage"
    report = bookbuild.execute_chapters(root, stage, cell_timeout=60, stall=60, retries=0)
    assert report["book/ch.ipynb"].endswith(" s")
    done = nbformat.read(stage / "book" / "ch.ipynb", as_version=4)
    assert done.cells[0].outputs[0]["text"].strip() == str(root / "book")  # runs in its folder
    assert done.cells[1].outputs[0]["data"]["text/plain"] == "42"
    again = bookbuild.execute_chapters(root, stage, cell_timeout=60, stall=60, retries=0)
    assert again == {"book/ch.ipynb": "cached"}


@pytest.mark.slow
def test_chapters_side_by_side_each_on_its_share_of_the_cores(tmp_path, monkeypatch):
    import json
    import os

    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "no-data"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    root = _book(tmp_path / "root")
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    toc["parts"][0]["chapters"].append({"file": "book/other"})
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    for name in ("ch", "other"):
        _notebook(root / "book" / f"{name}.ipynb",
                  "import os, time\nstart = time.time()\ntime.sleep(3)",
                  "print(os.environ.get('OMP_NUM_THREADS'), start, time.time())")
    stage = tmp_path / "stage"
    report = bookbuild.execute_chapters(root, stage, cell_timeout=60, stall=60, retries=0,
                                        jobs=2)
    assert set(report) == {"book/ch.ipynb", "book/other.ipynb"}
    spans = []
    for name in ("ch", "other"):
        threads, start, end = nbformat.read(stage / "book" / f"{name}.ipynb", as_version=4
                                            ).cells[1].outputs[0]["text"].split()
        assert threads == str(max(1, (os.cpu_count() or 1) // 2))
        spans.append((float(start), float(end)))
    (s1, e1), (s2, e2) = spans
    assert max(s1, s2) < min(e1, e2)  # the two chapters overlapped in time
    seconds = json.loads((root / bookbuild.SECONDS_FILE).read_text())
    assert set(seconds) == {"book/ch.ipynb", "book/other.ipynb"}


def _two_chapters(root):
    """Chapter ``ch`` asks for the shared run faster_rcnn (a call the scheduler reads, never
    executed here); chapter ``other`` asks for none. Each prints when it started."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    toc["parts"][0]["chapters"].append({"file": "book/other"})
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    _notebook(root / "book" / "ch.ipynb",
              "import time\nif False:\n    run_experiment('faster_rcnn')\nprint(time.time())")
    _notebook(root / "book" / "other.ipynb", "import time\nprint(time.time())")


def _started(stage, name):
    nb = nbformat.read(stage / "book" / f"{name}.ipynb", as_version=4)
    return float(nb.cells[0].outputs[0]["text"])


@pytest.mark.slow
def test_a_chapter_starts_after_its_shared_run_and_a_free_slot_takes_another(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "no-data"))
    root = _book(tmp_path / "root")
    _two_chapters(root)
    assert bookbuild.chapter_runs(root / "book" / "ch.ipynb") == [("faster_rcnn", [])]
    trained = {}

    def fake_train(model):  # long enough for the other chapter's kernel to start
        time.sleep(15)
        trained[model] = time.time()
        return 15.0

    monkeypatch.setattr(bookbuild, "_train_run", fake_train)
    stage = tmp_path / "stage"
    report = bookbuild.execute_chapters(root, stage, cell_timeout=60, stall=60, retries=0,
                                        jobs=2)
    assert set(report) == {"book/ch.ipynb", "book/other.ipynb"} and list(trained) == [
        "faster_rcnn"]
    assert _started(stage, "ch") >= trained["faster_rcnn"]  # after its run
    assert _started(stage, "other") < trained["faster_rcnn"]  # beside the run


@pytest.mark.slow
def test_a_failed_shared_run_fails_its_chapters_only(tmp_path, monkeypatch):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "no-data"))
    root = _book(tmp_path / "root")
    _two_chapters(root)

    def broken(model):
        raise bookbuild.BookBuildError(f"the shared run {model!r} failed to train")

    monkeypatch.setattr(bookbuild, "_train_run", broken)
    stage = tmp_path / "stage"
    with pytest.raises(bookbuild.BookBuildError) as info:
        bookbuild.execute_chapters(root, stage, cell_timeout=60, stall=60, retries=0, jobs=2)
    assert "'faster_rcnn' failed to train" in str(info.value)
    assert "book/ch.ipynb: not executed" in str(info.value)
    assert not (stage / "book" / "ch.ipynb").exists()
    assert (stage / "book" / "other.ipynb").is_file()


@pytest.mark.slow
def test_a_failing_cell_fails_the_build_and_leaves_no_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("ORALX_DATA", str(tmp_path / "no-data"))
    root = _book(tmp_path / "root")
    _notebook(root / "book" / "ch.ipynb", "raise ValueError('broken chapter')")
    with pytest.raises(bookbuild.BookBuildError, match="ch.ipynb: a cell failed"):
        bookbuild.execute_chapters(root, tmp_path / "stage", cell_timeout=60, stall=60,
                                   retries=0)
    assert not (tmp_path / "stage" / "book" / "ch.ipynb").exists()


@pytest.mark.slow
def test_a_stalled_chapter_is_restarted_then_reported(tmp_path, capfd):
    # a cell that sleeps looks, to the watchdog, exactly like a lost kernel reply: no CPU used
    src = _notebook(tmp_path / "sleepy.ipynb", "import time\ntime.sleep(600)")
    with pytest.raises(bookbuild.BookBuildError, match="stalled on all 2 tries"):
        bookbuild.run_watched(src, tmp_path / "out.ipynb", key="k", cell_timeout=600,
                              stall=6, retries=1)
    assert "restarting it (try 2 of 2)" in capfd.readouterr().err
    assert not (tmp_path / "out.ipynb").exists()


def test_kernelclient_waits_in_slices_until_the_callers_timeout(monkeypatch):
    import asyncio
    from queue import Empty

    from booktools import kernelclient

    calls = []

    async def fake_get_msg(self, timeout=None):
        calls.append(timeout)
        if len(calls) < 3:  # as if the first two polls missed the wake-up
            raise Empty
        return {"msg": "reply"}

    monkeypatch.setattr(kernelclient, "_ORIGINAL", fake_get_msg)
    monkeypatch.setattr(kernelclient, "SLICE", 0.01)
    assert asyncio.run(kernelclient._sliced_get_msg(None, timeout=None)) == {"msg": "reply"}
    assert calls == [0.01, 0.01, 0.01]

    async def never(self, timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    monkeypatch.setattr(kernelclient, "_ORIGINAL", never)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(kernelclient._sliced_get_msg(None, timeout=0.05))
    assert 0.04 < time.monotonic() - start < 1.0


def test_kernelclient_install_is_idempotent():
    from jupyter_client.channels import AsyncZMQSocketChannel

    from booktools import kernelclient

    kernelclient.install()
    assert kernelclient.installed()
    assert AsyncZMQSocketChannel.get_msg is kernelclient._sliced_get_msg
    assert kernelclient.install() is False
