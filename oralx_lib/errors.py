"""Every exception the library raises on purpose, in one place.

A user-caused problem (a setting, a file, a checkpoint) raises a subclass of
:class:`OralXError` whose message names the file or field and the fix, so that
``except OralXError`` catches exactly the project's own errors. Each class also keeps the
built-in base it has always had (``ValueError`` or ``RuntimeError``), so older ``except``
clauses keep working.
"""

from __future__ import annotations


class OralXError(Exception):
    """Base class of the project's exceptions (the message says what to fix)."""


class ConfigError(OralXError, ValueError):
    """A setting the user chose (environment variable, CLI flag, config field) is invalid."""


class PretrainedWeightsError(ConfigError):
    """``pretrained_backbone=True`` but torchvision's ImageNet weights could not be loaded."""


class DatasetError(OralXError, ValueError):
    """The dataset on disk is not what the loader needs; the message names the file and the fix."""


class ImageReadError(DatasetError):
    """An image file cannot be opened or decoded (empty, damaged, not an image, or larger than
    Pillow's pixel limit); the message names the file and, where there is one, the fix."""


class DownloadError(OralXError, RuntimeError):
    """Getting or unpacking the dataset failed; the message says why and what to do next."""


class CheckpointError(OralXError, ValueError):
    """A checkpoint file is missing, corrupt, or holds something a checkpoint may not hold."""


class ReleaseCheckpointError(CheckpointError):
    """A release checkpoint (the authors' MMDetection file) is missing, damaged, not a model
    checkpoint, or asks the unpickler for more than tensors, plain containers and numpy data."""


class ConversionError(ReleaseCheckpointError):
    """The release's weights do not fill ``build_model("moqam")`` exactly; nothing is written.

    Attributes:
        report: the :class:`~oralx_lib.release.convert.ConversionReport` with every problem
            (``None`` when the error is about the arguments).
    """

    def __init__(self, message: str, report=None) -> None:
        super().__init__(message)
        self.report = report


class TrainingError(OralXError, RuntimeError):
    """Training cannot go on (a NaN / inf loss, a model that does not return losses, ...)."""


class EvaluationError(OralXError, ValueError):
    """Ground truth or detections given to the evaluation are unusable (file, field, fix)."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConversionError",
    "DatasetError",
    "DownloadError",
    "EvaluationError",
    "ImageReadError",
    "OralXError",
    "PretrainedWeightsError",
    "ReleaseCheckpointError",
    "TrainingError",
]
