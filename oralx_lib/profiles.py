"""What "fast", "tiny", "colab" and "full" mean: every profile of the project in one place.

Two names for the same choices:

- the **book profile**, ``ORALX_PROFILE`` (:data:`BOOK_PROFILES`): ``fast`` (default; CPU,
  minutes: the site build and CI) or ``full`` (a GPU, the released recipe);
- the **engine profile** of :func:`oralx_lib.engine.make_config` (:data:`ENGINE_PROFILES`):
  ``tiny`` (what ``fast`` runs; alias ``fast``, :data:`PROFILE_ALIASES`), ``release_scale``
  (``tiny``'s model and schedule with objects at the release's pixel size: random crops for
  training, whole images for evaluation), ``colab`` (the released recipe scaled to one 16 GB
  T4) and ``full`` (the release).

What each engine profile sets:

- :data:`ENGINE_PROFILES`: the training fields of :class:`~oralx_lib.engine.TrainConfig`;
- :data:`TWO_STAGE_TINY`: what ``tiny`` adds for the two-stage models (fewer proposals and RoIs);
- :data:`MOQAM_PROFILES`: the query-based MOQAM's sizes per profile (``build_moqam`` keywords);
- :data:`BOOK_FAST`: what the book's ``fast`` profile changes on top of ``tiny`` (the chapters'
  shared training schedule, :func:`oralx_lib.book.experiments.run_experiment`).
"""

from __future__ import annotations

import copy
import os
from typing import Any

from .errors import ConfigError

# ------------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------------
#: What ``ORALX_PROFILE`` accepts.
BOOK_PROFILES = ("fast", "full")

#: Other spellings of engine profiles: ``ORALX_PROFILE`` calls the CPU profile ``fast``.
PROFILE_ALIASES = {"fast": "tiny"}


def book_profile() -> str:
    """The run profile from ``$ORALX_PROFILE``: ``fast`` (default) or ``full``."""
    value = os.environ.get("ORALX_PROFILE", "fast").strip().lower() or "fast"
    if value not in BOOK_PROFILES:
        raise ConfigError(
            f"ORALX_PROFILE={value!r} is not a profile; use one of {BOOK_PROFILES} "
            "(fast: CPU, minutes; full: a GPU, the released recipe)."
        )
    return value


def engine_profile(profile: str | None = None) -> str:
    """A profile name (``fast``/``tiny``/``colab``/``full``; default ``$ORALX_PROFILE``) as the
    engine spells it (``tiny``/``colab``/``full``). Unknown names raise :class:`ConfigError`."""
    name = str(profile if profile is not None else book_profile()).strip().lower()
    name = PROFILE_ALIASES.get(name, name)
    if name not in ENGINE_PROFILES:
        raise ConfigError(
            f"profile {profile!r} does not exist; use one of {sorted(ENGINE_PROFILES)} "
            f"(or an alias: {PROFILE_ALIASES})."
        )
    return name


# ------------------------------------------------------------------------------------------------
# Training profiles (fields of TrainConfig)
# ------------------------------------------------------------------------------------------------
#: Released multi-scale training sizes (short side 480..800, step 32).
RELEASED_TRAIN_SIZES: tuple[int, ...] = tuple(range(480, 801, 32))

ENGINE_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "backbone": "resnet18",
        "pretrained_backbone": False,
        "model_overrides": {"min_size": 288, "max_size": 512},
        "train_preset": "light",
        "batch_size": 2,
        "workers": 0,
        "epochs": 2,
        "max_iters_per_epoch": 8,
        "lr": 2e-4,
        "weight_decay": 1e-4,
        "backbone_lr_mult": 0.1,
        "clip_grad_norm": 0.1,
        "lr_milestones": [2],
        "warmup_iters": 0,
        "amp": "auto",
        "seed": 42,
        "checkpoint_every": 0,
        "eval_every": 1,
        "eval_batch_size": 2,
        "eval_max_dets": 100,
        "log_every": 1,
    },
    "full": {
        "backbone": "resnet50",
        "pretrained_backbone": True,
        # Training draws a short side from 480..800; torchvision's GeneralizedRCNNTransform
        # tests at the last entry (800) with the long side capped at 1333: the released test
        # scale.
        "model_overrides": {"min_size": list(RELEASED_TRAIN_SIZES), "max_size": 1333},
        "train_preset": "released",
        "batch_size": 1,
        "workers": 4,
        "epochs": 12,
        "max_iters_per_epoch": None,
        "lr": 2e-4,
        "weight_decay": 1e-4,
        "backbone_lr_mult": 0.1,
        "clip_grad_norm": 0.1,
        "lr_milestones": [11],
        "lr_gamma": 0.1,
        "warmup_iters": 0,
        "amp": "auto",
        "seed": 42,
        "checkpoint_every": 2000,
        "eval_every": 1,
        "eval_batch_size": 2,
        "eval_max_dets": 100,
        # COCO numbers at 100 detections per image, and the release's next to them
        "eval_release_protocol": True,
        "log_every": 20,
    },
}
# The release's object scale at CPU cost. A real panorama (about 1991 x 1127) enters the
# released network at 1333 x 754 (test scale 800 / 1333: scale min(800 / 1127, 1333 / 1991) =
# 0.670). The synthetic panorama draws the same mouth at 1024 x 580, so the same rule gives it
# scale min(800 / 580, 1333 / 1024) = 1.302 (RELEASE_SCALE_FACTOR): 1333 x 755, objects of the
# same pixel size as the release's. The tiny profile's 508 x 288 (scale 0.497) makes them 2.62
# times smaller. Training on whole 1333 x 755 images would cost ~7 times a tiny step, so training
# takes a random 384 x 384 crop of the resized image (the low end of the release's own crop
# branch, 384..600; about the pixels of one 508 x 288 image) and the model does not resize it
# again; evaluation runs on whole images at the test scale.
ENGINE_PROFILES["release_scale"] = {
    **ENGINE_PROFILES["tiny"],
    "model_overrides": {"min_size": 800, "max_size": 1333, "resize_in_training": False},
    "train_resize": [800, 1333],
    "train_crop": [384, 384],
}
ENGINE_PROFILES["colab"] = {
    **ENGINE_PROFILES["full"],
    # One 16 GB T4: the released model at smaller sizes (multi-scale training with short side
    # 480..640, long side <= 1066, tested at 640), fp16 AMP ("auto" picks fp16 on a T4, which
    # has no bf16); frequent checkpoints because Colab sessions end without notice.
    "model_overrides": {"min_size": list(range(480, 641, 32)), "max_size": 1066},
    "workers": 2,
    "checkpoint_every": 500,
}
#: Settings of the two-stage models (faster_rcnn, di_rpn, cb_scr, moqam_rcnn) that make the
#: ``tiny`` profile fit a few CPU minutes: fewer proposals and RoIs, a 256-d box head (the
#: release: 2000 proposals, 512 RoIs, 1024-d).
TWO_STAGE_TINY: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
    "box_batch_size_per_image": 128,
    "representation_size": 256,
}


# ------------------------------------------------------------------------------------------------
# Model sizes per profile
# ------------------------------------------------------------------------------------------------
#: Real OralXrays-9 panoramas are about this size (width, height).
REAL_IMAGE_SIZE: tuple[int, int] = (1991, 1127)
#: The released test scale (``min_size``, ``max_size``): a real panorama becomes 1333 x 754.
RELEASED_TEST_SCALE: tuple[int, int] = (800, 1333)


def input_scale(width: float, height: float, min_size: int, max_size: int) -> float:
    """The factor a detector's test-time resize applies to a ``width x height`` image:
    ``min(min_size / short side, max_size / long side)`` (torchvision's
    ``GeneralizedRCNNTransform``)."""
    short, long = min(width, height), max(width, height)
    return min(float(min_size) / short, float(max_size) / long)


def eval_scale(profile: str, model: str = "faster_rcnn") -> tuple[int, int]:
    """``(min_size, max_size)`` a profile's ``model`` is evaluated at (the last entry of a
    multi-scale ``min_size``)."""
    name = engine_profile(profile)
    overrides = {**ENGINE_PROFILES[name].get("model_overrides", {}),
                 **model_profile(name, model)["model_overrides"]}
    min_size = overrides.get("min_size", 800)
    if isinstance(min_size, (list, tuple)):
        min_size = min_size[-1]
    return int(min_size), int(overrides.get("max_size", 1333))


#: How much larger a synthetic panorama's objects are at the release's network input than in
#: the stored 1024 x 580 image: ``input_scale(1024, 580, 800, 1333)`` = 1333 / 1024 = 1.302.
RELEASE_SCALE_FACTOR: float = input_scale(1024, 580, *RELEASED_TEST_SCALE)

#: Build kwargs for ``build_moqam(**MOQAM_PROFILES[name])``.
#:
#: - ``tiny``: CPU minutes (resnet18, 128-d, 2 + 2 layers, 100 queries, short side 256,
#:   lighter RPN / RoI sampling and a 256-d RoI head).
#: - ``colab``: **the released model** (resnet50, 256-d, 6 + 6 layers, 8 heads, 900 queries,
#:   FFN 2048, 300 customised queries per branch, every branch) for one 16 GB T4: smaller
#:   images (short side 480..640 in training, 640 x <= 1066 at test, from the engine profile),
#:   fp16 AMP (a T4 has no bf16) and all 6 encoder layers recomputed in backward (the release
#:   recomputes 4). Memory: estimated on CPU only, by ``benchmarks/bench_moqam.py --memory
#:   colab`` (bytes autograd saves for backward, counted at reduced sizes and extrapolated in
#:   pixels, + weights, gradients and AdamW state); the estimate and its command are in
#:   ``benchmarks/results/moqam_colab_memory_estimate.json``. Not yet measured on a GPU:
#:   ``benchmarks/gpu_check.py`` measures it.
#: - ``full``: the release (resnet50, 900 queries, 6 + 6 layers, FFN 2048, 800 x 1333, 4 of the
#:   6 encoder layers recomputed in backward, as released).
MOQAM_PROFILES: dict[str, dict[str, Any]] = {
    "tiny": dict(backbone="resnet18", embed_dim=128, num_heads=4, num_points=4, ffn_dim=512,
                 num_encoder_layers=2, num_decoder_layers=2, num_queries=100, dn_number=30,
                 num_aux_queries=100, min_size=256, max_size=448,
                 branch_options=dict(rpn_pre_nms_top_n_train=1000, rpn_pre_nms_top_n_test=1000,
                                     rpn_post_nms_top_n_train=300, rpn_post_nms_top_n_test=300,
                                     box_batch_size_per_image=128, representation_size=256)),
    # the sizes come from the engine profile (multi-scale 480..640, long side <= 1066)
    "colab": dict(backbone="resnet50", encoder_checkpoint=6),
    "full": dict(backbone="resnet50", encoder_checkpoint=4),
}
#: ``release_scale``: tiny's sizes at the released test scale, training on crops that the data
#: pipeline already brought to that scale (see ENGINE_PROFILES["release_scale"]).
MOQAM_PROFILES["release_scale"] = {**MOQAM_PROFILES["tiny"], "min_size": 800, "max_size": 1333,
                                   "resize_in_training": False}


# ------------------------------------------------------------------------------------------------
# The book's fast schedule
# ------------------------------------------------------------------------------------------------
#: What the book's fast profile changes in the engine's ``tiny`` profile: 48 steps of batch 2,
#: a couple of CPU minutes per model, so that the whole book builds in under 30 minutes on two
#: cores. That is enough to show every mechanism and the first learning, not enough for a
#: useful detector: the chapters say so, and longer runs come from results files.
#: The learning rate: over 48 steps from scratch, 1e-3 made the baseline's RPN box regression
#: collapse (every proposal a sub-pixel sliver, AP 0); at 3e-4 its proposals keep the objects'
#: order of size (median 6.9 x 9.1 px, recall@0.5 0.13) and DI-RPN's recall is 0.31.
BOOK_FAST: dict[str, Any] = {
    "epochs": 2,
    "max_iters_per_epoch": 24,
    "lr": 3e-4,
    "backbone_lr_mult": 1.0,
    "clip_grad_norm": 10.0,
    "lr_milestones": [2],
    "warmup_iters": 8,
    "val_subset": 12,
    # One torch thread: a run's numbers are the same on any CPU whatever its core count (two
    # threads sum in another order), and the book build trains several runs side by side.
    "num_threads": 1,
}


#: The same schedule for the ``release_scale`` profile (what the book selects when it switches to
#: the release's object scale; the reference runs, ``benchmarks/reference_runs.py``, train
#: longer). Evaluating a 1333 x 755 image costs about 7 times a 508 x 288 one, so the validation
#: subset is smaller.
BOOK_FAST_RELEASE_SCALE: dict[str, Any] = {**BOOK_FAST, "val_subset": 6}

#: The book's schedule per engine profile (profiles not listed keep their own).
BOOK_SCHEDULES: dict[str, dict[str, Any]] = {"tiny": BOOK_FAST,
                                             "release_scale": BOOK_FAST_RELEASE_SCALE}


def model_profile(profile: str, model: str) -> dict[str, Any]:
    """What a profile adds for one model: ``{"backbone": ..., "model_overrides": {...}}``.

    The query-based ``moqam`` takes its sizes from :data:`MOQAM_PROFILES` (same profile
    names); the two-stage models get :data:`TWO_STAGE_TINY` in ``tiny`` and ``release_scale``.
    """
    if model == "moqam":
        sizes = copy.deepcopy(MOQAM_PROFILES.get(profile, {}))
        extra: dict[str, Any] = {"model_overrides": _lists_not_tuples(sizes)}
        if "backbone" in sizes:
            extra["backbone"] = extra["model_overrides"].pop("backbone")
        return extra
    if profile in ("tiny", "release_scale"):
        return {"model_overrides": dict(TWO_STAGE_TINY)}
    return {"model_overrides": {}}


def _lists_not_tuples(value):
    """JSON's view of a value: tuples and ranges become lists (recursively)."""
    if isinstance(value, (tuple, list, range)):
        return [_lists_not_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists_not_tuples(v) for k, v in value.items()}
    return value


__all__ = [
    "BOOK_FAST",
    "BOOK_FAST_RELEASE_SCALE",
    "BOOK_PROFILES",
    "BOOK_SCHEDULES",
    "ENGINE_PROFILES",
    "MOQAM_PROFILES",
    "PROFILE_ALIASES",
    "REAL_IMAGE_SIZE",
    "RELEASED_TEST_SCALE",
    "RELEASED_TRAIN_SIZES",
    "RELEASE_SCALE_FACTOR",
    "TWO_STAGE_TINY",
    "book_profile",
    "engine_profile",
    "input_scale",
    "model_profile",
    "eval_scale",
]
