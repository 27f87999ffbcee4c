"""Shared test settings (one torch thread: CI has 2 cores; deterministic seeds) and fixtures."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """Two synthetic training images at 256 x 160, as an ``OralXrays9`` split."""
    from oralx_lib.data import OralXrays9
    from oralx_lib.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("syn"), train=2, val=0, test=0, seed=0,
                            width=256, height=160, progress=False)
    return OralXrays9(root, "train")


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: the module ``benchmarks/<name>.py``, imported as the scripts
    import each other (``benchmarks/`` on ``sys.path``, the module registered under its name)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "benchmarks"

    def load(name: str):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load
