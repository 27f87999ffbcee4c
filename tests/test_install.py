"""Installing the library as a Colab user does: declared ranges and a simulated Colab install.

Colab ships its own PyTorch and moves to each new release. The install cell of every chapter
(``pip install "oralx-lib[download] @ git+..."``) must keep that PyTorch: the declared ranges of
torch and torchvision have lower bounds only, and installing the project into an environment that
already holds torch does not reinstall it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(names=None) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs if names is None or r.name in names}


@pytest.mark.parametrize("name,versions", [
    ("torch", ["2.3.0", "2.14.1", "2.15.0", "2.20.1", "3.0.0"]),
    ("torchvision", ["0.18.0", "0.29.1", "0.30.0", "0.35.2", "1.0.0"]),
])
def test_declared_ranges_accept_a_newer_torch(name, versions):
    req = _requirements()[name]
    # lower bound only: no cap, no pin, no compatible-release operator
    assert [s.operator for s in req.specifier] == [">="], str(req)
    for v in versions:
        assert req.specifier.contains(v), f"{req} rejects {v}"
    installed = md.version(name).split("+")[0]
    assert req.specifier.contains(installed), f"{req} rejects the installed {installed}"
    assert not req.specifier.contains("1.13.0" if name == "torch" else "0.14.0")


def test_no_dependency_caps_torch_and_transformers_is_benchmark_only():
    project = _pyproject()["project"]
    deps = _requirements()
    assert "transformers" not in deps
    extras = project["optional-dependencies"]
    assert any(Requirement(r).name == "transformers" for r in extras["peer"])
    for extra, reqs in extras.items():
        for r in map(Requirement, reqs):
            if r.name in ("torch", "torchvision"):
                assert all(s.operator == ">=" for s in r.specifier), (extra, str(r))
    # the library itself never imports transformers
    for path in (ROOT / "oralx_lib").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+transformers\b", path.read_text(), re.M), path


# ---------------------------------------------------------------------- a simulated Colab
_PREINSTALLED = ("torch", "torchvision", "numpy", "scipy", "pillow", "matplotlib", "seaborn",
                 "ipywidgets", "tqdm", "pycocotools", "gdown")


def _closure(names) -> list[md.Distribution]:
    """The installed distributions ``names`` need, recursively, extras included (a requirement
    ``pkg[a,b]`` pulls the dependencies ``pkg`` declares for ``a`` and ``b``)."""
    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(n, "") for n in names]
    while todo:
        raw, extra = todo.pop()
        name = canonicalize_name(raw)
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = seen.get(name) or md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({"extra": extra}):
                todo.append((r.name, ""))
                todo.extend((r.name, e) for e in r.extras)
    return list(seen.values())


def _link_distributions(dists, target: Path) -> None:
    """Symlink each distribution's top-level files and packages into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        base = Path(dist.locate_file(""))
        for f in dist.files or []:
            top = Path(f).parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            src, dst = base / top, target / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src, target_is_directory=src.is_dir())


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _torch_fingerprint(python: Path, env) -> dict:
    code = ("import json, importlib.metadata as m, torch, torchvision; print(json.dumps("
            "{'torch': torch.__file__, 'version': torch.__version__, "
            "'tv': torchvision.__version__, 'dist': str(m.distribution('torch')._path)}))")
    out = _run([str(python), "-c", code], env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_colab_install_keeps_torch_and_a_chapter_imports(tmp_path):
    """A fresh virtual environment that already has torch and torchvision (as Colab does:
    linked in through a ``.pth`` file from this environment), ``pip install`` of the project
    with the ``download`` extra from a local clone: torch is neither reinstalled nor touched,
    and the import cell of the first chapter runs with the installed package."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to clone the repository")
    colab_site = tmp_path / "colab-site"
    _link_distributions(_closure(_PREINSTALLED), colab_site)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     check=True).stdout.strip())
    (site / "colab_preinstalled.pth").write_text(f"{colab_site}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # one setuptools, as on Colab: the venv's bundled one would shadow the torch stack's
    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], env=env)

    before = _torch_fingerprint(python, env)
    assert before["torch"].startswith(str(colab_site)), before

    clone = tmp_path / "oralx-book"
    _run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    spec = f"oralx-lib[download] @ {clone.as_uri()}"
    pip = [str(python), "-m", "pip", "install", spec]  # what the Colab cell runs
    result = _run(pip, env=env, timeout=900)
    offline = ("Could not find a version" in result.stderr or "NewConnectionError" in result.stderr
               or "No matching distribution" in result.stderr)
    if result.returncode != 0 and offline:
        # No package index: what pip would download (pyzipper, the build backend) comes from
        # this environment instead.
        _link_distributions(_closure(["pyzipper", "gdown", "setuptools"]), colab_site)
        result = _run(pip + ["--no-index", "--no-build-isolation"], env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    installed = re.search(r"Successfully installed (.*)", log)
    assert installed and re.search(r"oralx[-_]lib", installed.group(1)), log[-3000:]
    names = {canonicalize_name(re.sub(r"-\d[^-]*$", "", w)) for w in installed.group(1).split()}
    torch_stack = {canonicalize_name(d.metadata["Name"]) for d in _closure(["torch", "torchvision"])}
    assert not names & torch_stack, f"pip installed part of the torch stack: {names & torch_stack}"
    assert not re.search(r"(Collecting|Downloading|Uninstalling) torch(vision)?\b", log), log
    assert not (site / "torch").exists() and not list(site.glob("torch-*.dist-info"))

    after = _torch_fingerprint(python, env)
    assert after == before

    nb = json.loads((ROOT / "book" / "01_data.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"][:2]
    script = tmp_path / "first_cells.py"
    script.write_text("\n\n".join(cells) + "\nprint('FIRST-CELLS-OK', oralx_lib.__file__)\n")
    env["ORALX_DATA"] = str(tmp_path / "data")  # the cell only names it (no generation)
    env["MPLBACKEND"] = "Agg"
    out = _run([str(python), str(script)], env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    marker = out.stdout.strip().splitlines()[-1]
    assert marker.startswith("FIRST-CELLS-OK") and str(site) in marker, marker
