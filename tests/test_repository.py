"""Repository hygiene that a reader of the site or a student on Colab relies on."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((ROOT / "book").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        with_outputs = [i for i, c in enumerate(nb["cells"]) if c.get("outputs")]
        assert not with_outputs, f"{nb_path.name}: cells {with_outputs} have outputs; run make strip"
        assert nb["metadata"]["kernelspec"]["name"] == "python3", nb_path.name


def test_every_chapter_in_the_toc_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    for f in files:
        assert any((ROOT / f"{f}{ext}").is_file() for ext in (".md", ".ipynb")), f
    from booktools.notebooks import toc_notebooks

    listed = toc_notebooks(ROOT / "_toc.yml")
    assert [p.stem for p in listed] == [f.split("/")[-1] for f in files
                                        if (ROOT / f"{f}.ipynb").is_file()]
    assert ROOT / "book" / "01_data.ipynb" in listed


def test_every_notebook_installs_the_library_on_colab_only():
    for nb_path in sorted((ROOT / "book").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and '"google.colab" in sys.modules' in code[0], nb_path.name
        assert "torch" not in re.sub(r"#.*", "", code[0]), (
            f"{nb_path.name}: the Colab cell must not reinstall torch")


def test_pyproject_keeps_ranges_for_torch():
    # lower bounds only (tests/test_install.py checks that a newer torch is accepted)
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch>=[\d.]+"', text) and "torch==" not in text


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.M))
    cited = {}
    for path in sorted((ROOT / "book").glob("*")):
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
        elif path.suffix == ".md":
            text = path.read_text()
        else:
            continue
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            for key in group.split(","):
                cited.setdefault(key.strip(), path.name)
    missing = {k: v for k, v in cited.items() if k not in keys}
    assert cited and not missing, f"cited but not in book/references.bib: {missing}"
