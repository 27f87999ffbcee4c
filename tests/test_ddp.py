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


# ------------------------------------------------------------------------------------------------
# Every parameter gets a gradient in every step (DDP without find_unused_parameters)
# ------------------------------------------------------------------------------------------------
MODELS = ("faster_rcnn", "di_rpn", "cb_scr", "moqam_rcnn", "moqam")


def _tiny_model(name):
    from oralx_lib.engine import make_config
    from oralx_lib.engine.inference import build_from_config

    config = make_config("tiny", model=name, model_overrides={"min_size": 96, "max_size": 128})
    return build_from_config(config).train()


def _no_boxes():
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


BATCHES = {
    "no boxes": lambda: [_no_boxes(), _no_boxes()],
    # a 1.5 px box holds no anchor centre: ATSS has no positive while the RoI head has (its GT
    # is appended to the proposals), and the other image is empty
    "one branch without positives": lambda: [
        {"boxes": torch.tensor([[50.0, 40.0, 51.5, 41.5]]), "labels": torch.tensor([3])},
        _no_boxes(),
    ],
}


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("name", MODELS)
def test_every_trainable_parameter_gets_a_gradient(name, batch):
    torch.manual_seed(0)
    model = _tiny_model(name)
    images = [torch.rand(3, 96, 128), torch.rand(3, 90, 120)]
    losses = model(images, BATCHES[batch]())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], f"{name}, {batch}: no gradient for {missing}"


def _drop_boxes_of_some_images(root, split="train", every=2):
    """Remove every annotation of images 1, 1 + every, ... (the real data has such images)."""
    import json

    path = root / "annotations" / f"instances_{split}2017.json"
    data = json.loads(path.read_text())
    empty = {img["id"] for img in data["images"][::every]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in empty]
    path.write_text(json.dumps(data))
    return empty


@pytest.mark.slow
def test_two_gloo_processes_train_moqam_on_images_without_boxes(tmp_path):
    """torchrun-like DDP on CPU: MOQAM (tiny) for 3 steps, batch 1 per process, half of the
    training images without boxes (before the fix the second step failed in DDP's reducer)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    root = make_tiny_set(tmp_path / "data", n_train=6, n_val=2)
    _drop_boxes_of_some_images(root)
    out = tmp_path / "ddp_moqam"
    config = tiny_config(root, out, model="moqam", backbone="resnet18", epochs=1, batch_size=1,
                         max_iters_per_epoch=3, val_split=None,
                         model_overrides={"min_size": 96, "max_size": 128})
    assert not config.find_unused_parameters
    summary = train_local_ddp(config, nproc=2)
    assert summary["steps"] == 3
