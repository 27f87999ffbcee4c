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
