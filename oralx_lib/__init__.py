"""oralx_lib: the library behind the OralX Book.

A small, tested PyTorch re-implementation of MOQAM (CVPR 2025) for detecting nine oral
anomalies on panoramic dental X-rays (the OralXrays-9 benchmark).

Conventions (torchvision's): images are float tensors ``(3, H, W)`` in ``[0, 1]``; targets are
``{"boxes": (N, 4) xyxy float32 pixels, "labels": (N,) int64 in 1..9}``; label 0 is background.
"""

__version__ = "0.1.0"

#: The nine OralXrays-9 classes in the released label order (index 0..8). A torchvision-style
#: model uses ``CLASSES.index(name) + 1`` as the label, with 0 for background.
CLASSES: tuple[str, ...] = (
    "Apical Periodontitis",
    "Decay",
    "Wisdom Tooth",
    "Missing Tooth",
    "Dental Filling",
    "Root Canal Filling",
    "Implant",
    "Porcelain Crown",
    "Ceramic Bridge",
)
NUM_CLASSES: int = len(CLASSES)

__all__ = ["CLASSES", "NUM_CLASSES", "__version__"]
