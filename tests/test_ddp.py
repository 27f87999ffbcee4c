"""DDP smoke test: two gloo processes on CPU train a couple of steps and evaluate sharded."""

import pytest
import torch
from test_engine import make_tiny_set, tiny_config

from oralx_lib.engine import evaluate_model, load_checkpoint, load_model, train_local_ddp


@pytest.mark.slow
def test_two_gloo_processes_train_and_evaluate(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    root = make_tiny_set(tmp_path / "data", n_train=6, n_val=3)
    out = tmp_path / "ddp"
    config = tiny_config(root, out, epochs=1, batch_size=1, max_iters_per_epoch=2,
                         val_split="val", eval_max_dets=20, eval_batch_size=1)
    summary = train_local_ddp(config, nproc=2)

    assert summary["steps"] == 2 and summary["epochs_completed"] == 1
    state = load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # one RNG state per rank
    # Each rank has its own random stream (seeded with seed + rank) and it is kept per rank.
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    records = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert len(records) == 3  # 2 steps + 1 epoch line: only rank 0 writes

    # Rank 0 merged the two shards of val (images 0, 2 and 1): the same AP as one process.
    from oralx_lib.data import OralXrays9

    metrics, _ = evaluate_model(load_model(out / "best.pt"), OralXrays9(root, "val"),
                                progress=False, max_dets=20)
    assert summary["history"][0]["val_num_images"] == 3
    assert summary["history"][0]["val_AP"] == pytest.approx(metrics["AP"], abs=1e-9)
