"""Backbones: torchvision ResNets (and a MobileNetV3) with one rule for what is frozen.

**The freezing rule** (:func:`freeze_rule`), the same for every detector of the book:

- started from ImageNet weights (``pretrained=True``), the release's rule: the stem and the
  first stage keep their weights (ResNet ``conv1``/``bn1`` and ``layer1``: 3 of 5 parts train)
  and every BatchNorm is a ``FrozenBatchNorm2d`` (its statistics and affine terms fixed);
- from scratch (random weights), nothing is frozen: every layer trains, with ordinary
  BatchNorm (there is nothing to keep).

``trainable_backbone_layers`` (0..5 for a ResNet, counting ``layer4, layer3, layer2, layer1,
stem``; 0..6 for the MobileNet) and ``freeze_batchnorm`` override either half.

Two shapes of backbone:

- :func:`fpn_backbone`: torchvision's FPN on top (256 channels, a max-pooled extra level),
  for the two-stage detectors; strides in :data:`BACKBONE_STRIDES`;
- :func:`resnet_backbone`: the plain ``C2..C5`` maps, for MOQAM (its own channel mapper).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from ..errors import ConfigError, PretrainedWeightsError

#: ImageNet's per-channel mean and standard deviation (RGB, images in [0, 1]): every detector
#: normalises its input with them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: FPN backbones of the two-stage detectors.
BACKBONES = ("resnet50", "resnet18", "mobilenet_v3")

#: Feature strides of each FPN backbone's levels (the last one is the max-pooled extra level).
BACKBONE_STRIDES: dict[str, tuple[int, ...]] = {
    "resnet50": (4, 8, 16, 32, 64),
    "resnet18": (4, 8, 16, 32, 64),
    "mobilenet_v3": (8, 16, 32, 64),
}

#: ResNets with ``C2..C5`` outputs: constructor, ImageNet weights, channels of C2..C5.
RESNETS = {
    "resnet18": (resnet.resnet18, resnet.ResNet18_Weights.IMAGENET1K_V1, (64, 128, 256, 512)),
    "resnet34": (resnet.resnet34, resnet.ResNet34_Weights.IMAGENET1K_V1, (64, 128, 256, 512)),
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048)),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1,
                  (256, 512, 1024, 2048)),
}

#: Trainable parts of a ResNet, from the top: ``trainable_layers=n`` trains the first ``n``.
RESNET_PARTS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_rule(pretrained: bool, trainable_layers: int | None, freeze_batchnorm: bool | None,
                *, all_layers: int = 5, release_layers: int = 3) -> tuple[int, bool]:
    """``(trainable layers, frozen BatchNorm)`` for a backbone (see the module docstring).

    ``None`` takes the rule: with ImageNet weights ``release_layers`` train and BatchNorm is
    frozen; from scratch all ``all_layers`` train with ordinary BatchNorm.
    """
    layers = (release_layers if pretrained else all_layers) if trainable_layers is None \
        else int(trainable_layers)
    frozen_bn = pretrained if freeze_batchnorm is None else bool(freeze_batchnorm)
    return layers, frozen_bn


def _weights_error(name: str, err: Exception) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"pretrained_backbone=True: torchvision's ImageNet weights for {name!r} could not be "
        f"loaded ({type(err).__name__}: {err}). They are downloaded on first use (internet "
        "needed, e.g. on Colab) and cached in ~/.cache/torch/hub/checkpoints. Connect and retry, "
        "copy the file there, or train from scratch with pretrained_backbone=False."
    )


def fpn_backbone(backbone: str, pretrained: bool, trainable_layers: int | None = None,
                 freeze_batchnorm: bool | None = None) -> nn.Module:
    """An FPN backbone with 256 output channels, frozen by :func:`freeze_rule`."""
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone={backbone!r} is not available; use one of {BACKBONES}.")
    try:
        if backbone in ("resnet50", "resnet18"):
            layers, frozen_bn = freeze_rule(pretrained, trainable_layers, freeze_batchnorm)
            return resnet_fpn_backbone(
                backbone_name=backbone,
                weights=RESNETS[backbone][1] if pretrained else None,
                norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
                trainable_layers=layers,
            )
        layers, frozen_bn = freeze_rule(pretrained, trainable_layers, freeze_batchnorm,
                                        all_layers=6, release_layers=4)
        return mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained else None,
            fpn=True,
            norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
            trainable_layers=layers,
            returned_layers=[2, 3, 5],  # strides 8, 16, 32 (+ max-pooled 64)
        )
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise _weights_error(backbone, err) from err
    except ValueError as err:
        raise ConfigError(
            f"trainable_backbone_layers={trainable_layers} is invalid for {backbone!r}: {err}"
        ) from err


def resnet_backbone(name: str = "resnet50", pretrained: bool = False,
                    trainable_layers: int | None = None,
                    freeze_batchnorm: bool | None = None) -> tuple[nn.Module, list[int]]:
    """A torchvision ResNet returning ``C2..C5`` as ``{"0": C2, ..., "3": C5}``, frozen by
    :func:`freeze_rule` (the release, from ImageNet weights: ``layer2..layer4`` train).

    Returns:
        ``(body, [channels of C2..C5])``.
    """
    if name not in RESNETS:
        raise ConfigError(
            f"backbone={name!r} is not supported by build_moqam; use one of {sorted(RESNETS)}."
        )
    layers, frozen_bn = freeze_rule(pretrained, trainable_layers, freeze_batchnorm)
    if not 0 <= layers <= len(RESNET_PARTS):
        raise ConfigError(
            f"trainable_backbone_layers={layers} must be in 0..{len(RESNET_PARTS)} "
            f"(counting {', '.join(RESNET_PARTS)})."
        )
    ctor, weights, channels = RESNETS[name]
    try:
        net = ctor(weights=weights if pretrained else None,
                   norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        raise _weights_error(name, err) from err
    trainable = list(RESNET_PARTS[:layers])
    if "conv1" in trainable:
        trainable.append("bn1")
    for pname, param in net.named_parameters():
        if not any(pname.startswith(part) for part in trainable):
            param.requires_grad_(False)
    body = IntermediateLayerGetter(
        net, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    )
    return body, list(channels)


__all__ = [
    "BACKBONES",
    "BACKBONE_STRIDES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNETS",
    "fpn_backbone",
    "freeze_rule",
    "resnet_backbone",
]
