"""The released MOQAM checkpoint's state-dict keys and shapes, derived from its configuration.

The authors' checkpoints could not be opened here (no network), so the list of what they hold
is *derived*: every key an MMDetection 2.x ``CoDETR`` model built from the released
``configs/MOQAM.py`` registers, with its shape, computed from the configuration's sizes
(:data:`RELEASE_CONFIG`) and the module definitions of the released code (see
``oralx_lib/release/README.md`` for file by file how each name and shape follows).

:func:`release_manifest` builds the ordered ``{key: shape}``; ``manifest.json`` next to this file
is its output, committed so that the list is data anyone can read::

    python -m oralx_lib.release.manifest --write   # regenerate manifest.json
    python -m oralx_lib.release.manifest --check   # exit 1 if manifest.json is out of date

A test checks that the committed file equals what the generator builds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
MANIFEST_VERSION = 1

#: The released configuration's sizes (``configs/MOQAM.py`` of the release, plus the defaults of
#: the modules it names where the config does not set them; each default is named).
RELEASE_CONFIG: dict[str, dict[str, Any]] = {
    "backbone": {  # ResNet(depth=50, num_stages=4, style='pytorch'); Bottleneck expansion 4
        "stage_blocks": [3, 4, 6, 3],
        "stem_channels": 64,
        "base_channels": 64,
        "expansion": 4,
    },
    "neck": {  # ChannelMapper(in_channels, kernel_size=1, out_channels=256, GN, num_outs=5)
        "in_channels": [256, 512, 1024, 2048],
        "out_channels": 256,
        "kernel_size": 1,
        "num_outs": 5,
    },
    "rpn_head": {  # RPNHead(in_channels=256, feat_channels=256); 3 ratios x 3 scales per octave
        "in_channels": 256,
        "feat_channels": 256,
        "num_ratios": 3,
        "scales_per_octave": 3,
    },
    "query_head": {  # CoDINOHead + CoDinoTransformer
        "num_classes": 9,
        "num_query": 900,
        "embed_dims": 256,
        "num_feature_levels": 5,
        "num_heads": 8,           # mmcv MultiScaleDeformableAttention / MultiheadAttention
        "num_points": 4,          # mmcv MultiScaleDeformableAttention default
        "feedforward_channels": 2048,
        "num_encoder_layers": 6,
        "num_decoder_layers": 6,
        "num_reg_fcs": 2,         # DETRHead default
        "num_co_heads": 2,
        "with_coord_feat": False,
    },
    "roi_head": {  # FIRoIHead + Shared2FCBBoxHead (+ the CB-SCR projections feature_fc/centure_fc)
        "num_classes": 9,
        "in_channels": 256,
        "roi_feat_size": 7,
        "fc_out_channels": 1024,
        "num_shared_fcs": 2,
        "reg_class_agnostic": False,
        "projection_hidden": 512,   # nn.Linear(1024, 1024 // 2)
    },
    "bbox_head": {  # CoATSSHead(stacked_convs=1, feat_channels=256), one anchor, 6 strides
        "num_classes": 9,
        "in_channels": 256,
        "feat_channels": 256,
        "stacked_convs": 1,
        "num_anchors": 1,
        "num_levels": 6,
    },
}

Shape = tuple[int, ...]


class _Keys:
    """An ordered ``{key: shape}`` being filled module by module."""

    def __init__(self) -> None:
        self.items: OrderedDict[str, Shape] = OrderedDict()

    def add(self, key: str, *shape: int) -> None:
        if key in self.items:
            raise ValueError(f"duplicate key {key!r} in the release manifest")
        self.items[key] = tuple(int(s) for s in shape)

    def linear(self, prefix: str, n_in: int, n_out: int, bias: bool = True) -> None:
        self.add(f"{prefix}.weight", n_out, n_in)
        if bias:
            self.add(f"{prefix}.bias", n_out)

    def conv(self, prefix: str, n_in: int, n_out: int, k: int, bias: bool = True) -> None:
        self.add(f"{prefix}.weight", n_out, n_in, k, k)
        if bias:
            self.add(f"{prefix}.bias", n_out)

    def affine(self, prefix: str, n: int) -> None:
        """LayerNorm / GroupNorm: weight and bias."""
        self.add(f"{prefix}.weight", n)
        self.add(f"{prefix}.bias", n)

    def batchnorm(self, prefix: str, n: int) -> None:
        """nn.BatchNorm*d: weight, bias and the three buffers."""
        self.affine(prefix, n)
        self.add(f"{prefix}.running_mean", n)
        self.add(f"{prefix}.running_var", n)
        self.add(f"{prefix}.num_batches_tracked")


def _backbone(k: _Keys, c: dict) -> None:
    # mmdet ResNet: conv1 + norm "bn1", stages layer1..4 of Bottleneck blocks with conv1..3 /
    # bn1..3 and, in the first block of a stage, downsample = Sequential(conv 1x1, BN).
    stem = c["stem_channels"]
    k.conv("backbone.conv1", 3, stem, 7, bias=False)
    k.batchnorm("backbone.bn1", stem)
    inplanes = stem
    for stage, blocks in enumerate(c["stage_blocks"]):
        planes = c["base_channels"] * 2 ** stage
        for b in range(blocks):
            p = f"backbone.layer{stage + 1}.{b}"
            k.conv(f"{p}.conv1", inplanes, planes, 1, bias=False)
            k.batchnorm(f"{p}.bn1", planes)
            k.conv(f"{p}.conv2", planes, planes, 3, bias=False)
            k.batchnorm(f"{p}.bn2", planes)
            k.conv(f"{p}.conv3", planes, planes * c["expansion"], 1, bias=False)
            k.batchnorm(f"{p}.bn3", planes * c["expansion"])
            if b == 0:
                k.conv(f"{p}.downsample.0", inplanes, planes * c["expansion"], 1, bias=False)
                k.batchnorm(f"{p}.downsample.1", planes * c["expansion"])
            inplanes = planes * c["expansion"]


def _neck(k: _Keys, c: dict) -> None:
    # ChannelMapper: convs[i] = ConvModule(conv without bias (a norm follows), norm "gn"),
    # extra_convs[j] = ConvModule(3x3 stride 2); the first extra conv reads the last input.
    out = c["out_channels"]
    for i, n_in in enumerate(c["in_channels"]):
        k.conv(f"neck.convs.{i}.conv", n_in, out, c["kernel_size"], bias=False)
        k.affine(f"neck.convs.{i}.gn", out)
    for j in range(c["num_outs"] - len(c["in_channels"])):
        n_in = c["in_channels"][-1] if j == 0 else out
        k.conv(f"neck.extra_convs.{j}.conv", n_in, out, 3, bias=False)
        k.affine(f"neck.extra_convs.{j}.gn", out)


def _deformable_attention(k: _Keys, p: str, c: dict) -> None:
    d, h, lv, pt = c["embed_dims"], c["num_heads"], c["num_feature_levels"], c["num_points"]
    k.linear(f"{p}.sampling_offsets", d, h * lv * pt * 2)
    k.linear(f"{p}.attention_weights", d, h * lv * pt)
    k.linear(f"{p}.value_proj", d, d)
    k.linear(f"{p}.output_proj", d, d)


def _ffn(k: _Keys, p: str, c: dict) -> None:
    # mmcv FFN(num_fcs=2): layers = Sequential(Sequential(Linear, act, Dropout), Linear, Dropout)
    d, f = c["embed_dims"], c["feedforward_channels"]
    k.linear(f"{p}.layers.0.0", d, f)
    k.linear(f"{p}.layers.1", f, d)


def _query_head(k: _Keys, c: dict) -> None:
    d, n_cls = c["embed_dims"], c["num_classes"]
    t = "query_head.transformer"
    # CoDinoTransformer.init_layers (own parameter first, then children in order)
    k.add(f"{t}.level_embeds", c["num_feature_levels"], d)
    # encoder: DetrTransformerEncoder of BaseTransformerLayer(self_attn, norm, ffn, norm);
    # post_norm is None (post-norm layers). with_cp wraps layers in place: names unchanged.
    for i in range(c["num_encoder_layers"]):
        p = f"{t}.encoder.layers.{i}"
        _deformable_attention(k, f"{p}.attentions.0", c)
        _ffn(k, f"{p}.ffns.0", c)
        k.affine(f"{p}.norms.0", d)
        k.affine(f"{p}.norms.1", d)
    # decoder: DinoTransformerDecoder of DetrTransformerDecoderLayer(self_attn, norm,
    # cross_attn, norm, ffn, norm); self_attn = mmcv MultiheadAttention wrapping
    # nn.MultiheadAttention as `.attn` (packed q/k/v in_proj).
    for i in range(c["num_decoder_layers"]):
        p = f"{t}.decoder.layers.{i}"
        k.add(f"{p}.attentions.0.attn.in_proj_weight", 3 * d, d)
        k.add(f"{p}.attentions.0.attn.in_proj_bias", 3 * d)
        k.linear(f"{p}.attentions.0.attn.out_proj", d, d)
        _deformable_attention(k, f"{p}.attentions.1", c)
        _ffn(k, f"{p}.ffns.0", c)
        for n in range(3):
            k.affine(f"{p}.norms.{n}", d)
    # DinoTransformerDecoder._init_layers: ref_point_head = MLP(2d -> d -> d), final norm
    k.linear(f"{t}.decoder.ref_point_head.0", 2 * d, d)
    k.linear(f"{t}.decoder.ref_point_head.2", d, d)
    k.affine(f"{t}.decoder.norm", d)
    k.linear(f"{t}.enc_output", d, d)
    k.affine(f"{t}.enc_output_norm", d)
    k.add(f"{t}.query_embed.weight", c["num_query"], d)
    # CoDinoTransformer._init_layers: one projection of the 2d-wide box sine embedding per
    # collaborative head (the customised positive queries' content); pos_feats_* stay empty
    # because with_coord_feat is False.
    for h in range(c["num_co_heads"]):
        k.linear(f"{t}.aux_pos_trans.{h}", 2 * d, d)
    for h in range(c["num_co_heads"]):
        k.affine(f"{t}.aux_pos_trans_norm.{h}", d)
    if c["with_coord_feat"]:
        for h in range(c["num_co_heads"]):
            k.linear(f"{t}.pos_feats_trans.{h}", d, d)
        for h in range(c["num_co_heads"]):
            k.affine(f"{t}.pos_feats_norm.{h}", d)
    # CoDeformDETRHead._init_layers: downsample, cls_branches, reg_branches (decoder layers + 1
    # for the two-stage encoder proposals); CoDINOHead drops query_embedding and adds
    # label_embedding (cls_out_channels = num_classes with a sigmoid classifier).
    k.conv("query_head.downsample.0", d, d, 3)
    k.affine("query_head.downsample.1", d)
    num_pred = c["num_decoder_layers"] + 1
    for i in range(num_pred):
        k.linear(f"query_head.cls_branches.{i}", d, n_cls)
    for i in range(num_pred):
        idx = 0
        for _ in range(c["num_reg_fcs"]):
            k.linear(f"query_head.reg_branches.{i}.{idx}", d, d)
            idx += 2  # Linear, ReLU
        k.linear(f"query_head.reg_branches.{i}.{idx}", d, 4)
    k.add("query_head.label_embedding.weight", n_cls, d)


def _rpn_head(k: _Keys, c: dict) -> None:
    anchors = c["num_ratios"] * c["scales_per_octave"]
    k.conv("rpn_head.rpn_conv", c["in_channels"], c["feat_channels"], 3)
    k.conv("rpn_head.rpn_cls", c["feat_channels"], anchors * 1, 1)  # sigmoid: 1 channel
    k.conv("rpn_head.rpn_reg", c["feat_channels"], anchors * 4, 1)


def _roi_head(k: _Keys, c: dict) -> None:
    p = "roi_head.0"
    fc, n_cls = c["fc_out_channels"], c["num_classes"]
    # BBoxHead registers fc_cls / fc_reg first; ConvFCBBoxHead then adds shared_fcs and
    # re-creates fc_cls / fc_reg in place (their position in the dict stays first).
    k.linear(f"{p}.bbox_head.fc_cls", fc, n_cls + 1)  # softmax: classes then background
    k.linear(f"{p}.bbox_head.fc_reg", fc, 4 if c["reg_class_agnostic"] else 4 * n_cls)
    n_in = c["in_channels"] * c["roi_feat_size"] ** 2
    for i in range(c["num_shared_fcs"]):
        k.linear(f"{p}.bbox_head.shared_fcs.{i}", n_in if i == 0 else fc, fc)
    # FIRoIHead.__init__: the CB-SCR projections, Linear -> BatchNorm1d -> ReLU -> Linear
    hidden = c["projection_hidden"]
    for name in ("feature_fc", "centure_fc"):
        k.linear(f"{p}.{name}.0", fc, hidden)
        k.batchnorm(f"{p}.{name}.1", hidden)
        k.linear(f"{p}.{name}.3", hidden, fc)


def _bbox_head(k: _Keys, c: dict) -> None:
    p = "bbox_head.0"
    for tower in ("cls_convs", "reg_convs"):
        for i in range(c["stacked_convs"]):
            n_in = c["in_channels"] if i == 0 else c["feat_channels"]
            k.conv(f"{p}.{tower}.{i}.conv", n_in, c["feat_channels"], 3, bias=False)
            k.affine(f"{p}.{tower}.{i}.gn", c["feat_channels"])
    a = c["num_anchors"]
    k.conv(f"{p}.atss_cls", c["feat_channels"], a * c["num_classes"], 3)
    k.conv(f"{p}.atss_reg", c["feat_channels"], a * 4, 3)
    k.conv(f"{p}.atss_centerness", c["feat_channels"], a, 3)
    for level in range(c["num_levels"]):
        k.add(f"{p}.scales.{level}.scale")  # mmcv Scale: a 0-d parameter


def release_manifest(config: dict[str, dict[str, Any]] | None = None) -> OrderedDict[str, Shape]:
    """Every state-dict key of the released MOQAM checkpoint with its shape, in module order.

    Args:
        config: sizes in the form of :data:`RELEASE_CONFIG` (default: the release's).

    Returns:
        ``{key: shape}`` (``()`` for 0-d tensors), ordered as ``CoDETR`` registers its parts:
        backbone, neck, query_head, rpn_head, roi_head, bbox_head.
    """
    c = copy.deepcopy(RELEASE_CONFIG if config is None else config)
    k = _Keys()
    _backbone(k, c["backbone"])
    _neck(k, c["neck"])
    _query_head(k, c["query_head"])
    _rpn_head(k, c["rpn_head"])
    _roi_head(k, c["roi_head"])
    _bbox_head(k, c["bbox_head"])
    return k.items


def manifest_document(config: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What ``manifest.json`` holds: the sizes, the derivation, the counts and the keys."""
    keys = release_manifest(config)
    values = 0
    for shape in keys.values():
        n = 1
        for s in shape:
            n *= s
        values += n
    return {
        "manifest_version": MANIFEST_VERSION,
        "describes": "state_dict of the released MOQAM checkpoint (MMDetection 2.x CoDETR, "
                     "configs/MOQAM.py of the release)",
        "derived_from": "oralx_lib/release/README.md (files and config values); generated by "
                        "python -m oralx_lib.release.manifest --write",
        "observed": False,
        "config": copy.deepcopy(RELEASE_CONFIG if config is None else config),
        "num_keys": len(keys),
        "num_values": values,
        "keys": {name: list(shape) for name, shape in keys.items()},
    }


def load_manifest(path: str | Path = MANIFEST_PATH) -> OrderedDict[str, Shape]:
    """The committed manifest as ``{key: shape}`` (ordered as in the file)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return OrderedDict((k, tuple(v)) for k, v in data["keys"].items())


def _text(document: dict[str, Any]) -> str:
    """JSON with one key per line (``"name": [shape]``), the rest indented."""
    head = {k: v for k, v in document.items() if k != "keys"}
    lines = json.dumps(head, indent=1).rstrip("}").rstrip().rstrip(",")
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in document["keys"].items())
    return f"{lines},\n \"keys\": {{\n{body}\n }}\n}}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oralx_lib.release.manifest",
        description="Build the released MOQAM checkpoint's key manifest from its configuration.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {MANIFEST_PATH.name}")
    group.add_argument("--check", action="store_true",
                       help=f"exit 1 when {MANIFEST_PATH.name} differs from the generator")
    args = parser.parse_args(argv)
    text = _text(manifest_document())
    if args.write:
        MANIFEST_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {MANIFEST_PATH} ({len(release_manifest())} keys)")
        return 0
    if args.check:
        current = MANIFEST_PATH.read_text(encoding="utf-8") if MANIFEST_PATH.is_file() else ""
        if current != text:
            print(f"{MANIFEST_PATH} is out of date: run python -m oralx_lib.release.manifest "
                  "--write", file=sys.stderr)
            return 1
        print(f"{MANIFEST_PATH} is up to date")
        return 0
    doc = manifest_document()
    print(f"{doc['num_keys']} keys, {doc['num_values']:,} values")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["MANIFEST_PATH", "RELEASE_CONFIG", "load_manifest", "manifest_document", "main",
           "release_manifest"]
