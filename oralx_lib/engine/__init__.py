"""Training engine: configs and profiles, the training loop (one CPU, one GPU, or torchrun),
atomic checkpoints, evaluation of a model on a split, and predictions on image files.

Typical use::

    from oralx_lib.engine import make_config, train, load_model, evaluate_model
    summary = train(make_config("tiny", model="faster_rcnn", out_dir="runs/demo"))
    model = load_model(summary["best_checkpoint"])
"""

from ..errors import CheckpointError, TrainingError
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import PROFILES, TrainConfig, field_names, make_config
from .distributed import DistContext, setup_distributed
from .history import MetricsLog, plot_history, read_jsonl
from .inference import build_from_config, evaluate_model, load_model, model_detections
from .launch import train_local_ddp
from .predict import draw_detections, predict_images, read_image
from .tiling import TiledDetector
from .train import build_datasets, make_optimizer, make_scheduler, train

__all__ = [
    "PROFILES",
    "CheckpointError",
    "DistContext",
    "MetricsLog",
    "TiledDetector",
    "TrainConfig",
    "TrainingError",
    "build_datasets",
    "build_from_config",
    "capture_rng_state",
    "draw_detections",
    "evaluate_model",
    "field_names",
    "load_checkpoint",
    "load_model",
    "make_config",
    "make_optimizer",
    "make_scheduler",
    "model_detections",
    "plot_history",
    "predict_images",
    "read_image",
    "read_jsonl",
    "restore_rng_state",
    "save_checkpoint",
    "setup_distributed",
    "train",
    "train_local_ddp",
]
