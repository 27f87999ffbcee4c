"""Converting the authors' MOQAM checkpoint into an ``oralx_lib`` checkpoint.

``python -m oralx_lib convert-release CKPT --out moqam_release.pt`` opens the release file
safely (:func:`~oralx_lib.release.loading.load_release_checkpoint`), maps every key of its
state dict onto ``build_model("moqam")`` at the released sizes (the ``full`` profile) with
:data:`KEY_MAP`, and writes a normal ``oralx_lib`` checkpoint that ``evaluate``, ``predict`` and
``train --init-from`` read.

It never writes a partial model. When a release key has no home, or a model parameter is left
unfilled, or a shape differs, it raises :class:`ConversionError` listing each of them with its
shape and the fidelity difference behind it.

:data:`KEY_MAP` is the whole correspondence, one row per rule, first match wins::

    Rule(release pattern, our pattern, kind, why)

``{name}`` in a pattern matches one dotted component (``{rest}``: any tail) and is carried over
to the other side. Kinds (release -> ours; :func:`to_release` applies the inverse):

==============  ==========================================================================
``copy``        the same tensor
``classes``     rows are classes: reordered from the release's label order to ``CLASSES``
``bg_last``     a softmax classifier: the release's ``[9 classes, background]`` rows become
                ours ``[background, 9 classes]``
``class_boxes`` class-specific box deltas: the release's ``4 x 9`` rows become ours
                ``4 x (1 + 9)`` with zero rows for the background (torchvision's layout;
                those rows are never read, neither in training nor at inference)
``element``     a 0-d release parameter is one element of our vector (``name[{i}]``)
``xy_swap``     input columns of a layer fed a box sine embedding: the release orders the
                coordinates ``(x, y, w, h)``, ours ``(y, x, w, h)``
``zero``        our parameter has no release key and is zero: the release's conv has no bias
``drop``        the release key holds no weights we need (a frozen BatchNorm's update counter);
                it is kept aside in the written checkpoint so that the round trip is exact
==============  ==========================================================================
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import CLASSES, NUM_CLASSES
from ..engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from ..errors import ConversionError
from .loading import load_release_checkpoint


@dataclass(frozen=True)
class Rule:
    """One row of :data:`KEY_MAP`: ``release`` pattern -> ``ours`` pattern (``None`` on the
    side that has no key), the ``kind`` of copy and ``why`` (the difference behind it)."""

    release: str | None
    ours: str | None
    kind: str = "copy"
    why: str = ""


_BN_COUNTER = ("BatchNorm's update counter of a frozen backbone BatchNorm: "
               "FrozenBatchNorm2d keeps no counter and no layer reads it")
_NO_BIAS = ("the release's conv has no bias (GroupNorm follows it); a zero bias computes the "
            "same function")
_PER_BRANCH = ("customised positive queries: one content projection (Linear 512->256 + "
               "LayerNorm) per collaborative branch (0: RoI head, 1: ATSS), "
               "aux_query_fc.{0,1} and aux_query_norm.{0,1}")
_Q = "query_head.transformer"

#: Release state-dict key -> ``build_model("moqam")`` parameter, at the released sizes (six
#: decoder layers: ``reg_branches.6`` / ``cls_branches.6`` score the encoder's proposals).
KEY_MAP: tuple[Rule, ...] = (
    # ---- backbone: torchvision's ResNet-50 uses MMDetection's names (conv1, bn1, layerN.B.*)
    Rule("backbone.{rest}.num_batches_tracked", None, "drop", _BN_COUNTER),
    Rule("backbone.{rest}", "backbone.{rest}"),
    # ---- neck: ChannelMapper (1x1 conv + GN per level, 3x3/2 conv + GN on C5)
    Rule("neck.convs.{i}.conv.weight", "neck.lateral.{i}.0.weight"),
    Rule(None, "neck.lateral.{i}.0.bias", "zero", _NO_BIAS),
    Rule("neck.convs.{i}.gn.{p}", "neck.lateral.{i}.1.{p}"),
    Rule("neck.extra_convs.{i}.conv.weight", "neck.extra.{i}.0.weight"),
    Rule(None, "neck.extra.{i}.0.bias", "zero", _NO_BIAS),
    Rule("neck.extra_convs.{i}.gn.{p}", "neck.extra.{i}.1.{p}"),
    # ---- deformable encoder: post-norm layers (self_attn, norm, ffn, norm)
    Rule(f"{_Q}.level_embeds", "level_embed"),
    Rule(f"{_Q}.encoder.layers.{{i}}.attentions.0.{{p}}.{{w}}",
         "encoder.layers.{i}.self_attn.{p}.{w}"),
    Rule(f"{_Q}.encoder.layers.{{i}}.norms.0.{{w}}", "encoder.layers.{i}.norm.{w}"),
    Rule(f"{_Q}.encoder.layers.{{i}}.ffns.0.layers.0.0.{{w}}", "encoder.layers.{i}.ffn.linear1.{w}"),
    Rule(f"{_Q}.encoder.layers.{{i}}.ffns.0.layers.1.{{w}}", "encoder.layers.{i}.ffn.linear2.{w}"),
    Rule(f"{_Q}.encoder.layers.{{i}}.norms.1.{{w}}", "encoder.layers.{i}.ffn.norm.{w}"),
    # ---- decoder: self_attn (nn.MultiheadAttention on both sides: packed q, k, v rows in the
    #      same order), norm, deformable cross_attn, norm, ffn, norm
    Rule(f"{_Q}.decoder.layers.{{i}}.attentions.0.attn.{{rest}}",
         "decoder.layers.{i}.self_attn.{rest}"),
    Rule(f"{_Q}.decoder.layers.{{i}}.norms.0.{{w}}", "decoder.layers.{i}.norm1.{w}"),
    Rule(f"{_Q}.decoder.layers.{{i}}.attentions.1.{{p}}.{{w}}",
         "decoder.layers.{i}.cross_attn.{p}.{w}"),
    Rule(f"{_Q}.decoder.layers.{{i}}.norms.1.{{w}}", "decoder.layers.{i}.norm2.{w}"),
    Rule(f"{_Q}.decoder.layers.{{i}}.ffns.0.layers.0.0.{{w}}", "decoder.layers.{i}.ffn.linear1.{w}"),
    Rule(f"{_Q}.decoder.layers.{{i}}.ffns.0.layers.1.{{w}}", "decoder.layers.{i}.ffn.linear2.{w}"),
    Rule(f"{_Q}.decoder.layers.{{i}}.norms.2.{{w}}", "decoder.layers.{i}.ffn.norm.{w}"),
    Rule(f"{_Q}.decoder.ref_point_head.0.{{w}}", "decoder.ref_point_head.layers.0.{w}"),
    Rule(f"{_Q}.decoder.ref_point_head.2.{{w}}", "decoder.ref_point_head.layers.1.{w}"),
    Rule(f"{_Q}.decoder.norm.{{w}}", "decoder.norm.{w}"),
    # ---- two-stage query selection and learned content queries
    Rule(f"{_Q}.enc_output.{{w}}", "enc_output.{w}"),
    Rule(f"{_Q}.enc_output_norm.{{w}}", "enc_output_norm.{w}"),
    Rule(f"{_Q}.query_embed.weight", "query_embed.weight"),
    # ---- customised positive queries: content = LN(Linear(sine embedding of the box))
    Rule(f"{_Q}.aux_pos_trans.{{h}}.weight", "aux_query_fc.{h}.weight", "xy_swap", _PER_BRANCH),
    Rule(f"{_Q}.aux_pos_trans.{{h}}.bias", "aux_query_fc.{h}.bias", "copy", _PER_BRANCH),
    Rule(f"{_Q}.aux_pos_trans_norm.{{h}}.{{w}}", "aux_query_norm.{h}.{w}", "copy", _PER_BRANCH),
    # ---- query head: heads per decoder layer; index 6 scores the encoder proposals
    Rule("query_head.downsample.{i}.{w}", "aux_downsample.{i}.{w}"),
    Rule("query_head.cls_branches.{i}.{w}", "class_heads.{i}.{w}", "classes"),
    Rule("query_head.reg_branches.6.0.{w}", "enc_box_head.layers.0.{w}"),
    Rule("query_head.reg_branches.6.2.{w}", "enc_box_head.layers.1.{w}"),
    Rule("query_head.reg_branches.6.4.{w}", "enc_box_head.layers.2.{w}"),
    Rule("query_head.reg_branches.{i}.0.{w}", "decoder.box_heads.{i}.layers.0.{w}"),
    Rule("query_head.reg_branches.{i}.2.{w}", "decoder.box_heads.{i}.layers.1.{w}"),
    Rule("query_head.reg_branches.{i}.4.{w}", "decoder.box_heads.{i}.layers.2.{w}"),
    Rule("query_head.label_embedding.weight", "label_embed.weight", "classes"),
    # ---- collaborative branch 1: RPN (DI-RPN assigns its anchors; no extra weights)
    Rule("rpn_head.rpn_conv.{w}", "branches.rpn.head.conv.0.0.{w}"),
    Rule("rpn_head.rpn_cls.{w}", "branches.rpn.head.cls_logits.{w}"),
    Rule("rpn_head.rpn_reg.{w}", "branches.rpn.head.bbox_pred.{w}"),
    # ---- collaborative branch 2: two-FC RoI head with the CB-SCR projections
    Rule("roi_head.0.bbox_head.shared_fcs.0.{w}", "branches.roi.roi_heads.box_head.fc6.{w}"),
    Rule("roi_head.0.bbox_head.shared_fcs.1.{w}", "branches.roi.roi_heads.box_head.fc7.{w}"),
    Rule("roi_head.0.bbox_head.fc_cls.{w}", "branches.roi.roi_heads.box_predictor.cls_score.{w}",
         "bg_last"),
    Rule("roi_head.0.bbox_head.fc_reg.{w}", "branches.roi.roi_heads.box_predictor.bbox_pred.{w}",
         "class_boxes"),
    Rule("roi_head.0.feature_fc.{rest}", "branches.roi.roi_heads.cb_scr.feature_mlp.{rest}"),
    Rule("roi_head.0.centure_fc.{rest}", "branches.roi.roi_heads.cb_scr.center_mlp.{rest}"),
    # ---- collaborative branch 3: ATSS (one 3x3 conv + GN + ReLU per tower)
    Rule("bbox_head.0.cls_convs.0.conv.weight", "branches.atss.cls_tower.0.weight"),
    Rule(None, "branches.atss.cls_tower.0.bias", "zero", _NO_BIAS),
    Rule("bbox_head.0.cls_convs.0.gn.{w}", "branches.atss.cls_tower.1.{w}"),
    Rule("bbox_head.0.reg_convs.0.conv.weight", "branches.atss.reg_tower.0.weight"),
    Rule(None, "branches.atss.reg_tower.0.bias", "zero", _NO_BIAS),
    Rule("bbox_head.0.reg_convs.0.gn.{w}", "branches.atss.reg_tower.1.{w}"),
    Rule("bbox_head.0.atss_cls.{w}", "branches.atss.cls_logits.{w}", "classes"),
    Rule("bbox_head.0.atss_reg.{w}", "branches.atss.bbox_pred.{w}"),
    Rule("bbox_head.0.atss_centerness.{w}", "branches.atss.centerness.{w}"),
    Rule("bbox_head.0.scales.{i}.scale", "branches.atss.scales[{i}]", "element"),
)

#: Why one of our parameters may be left without a release key (shown in the refusal).
UNFILLED_REASONS: tuple[tuple[str, str], ...] = (
    ("aux_query_fc.", "one content projection shared by both collaborative branches; the "
                      "release has one per branch"),
    ("aux_query_norm.", "one LayerNorm shared by both collaborative branches; the release has "
                        "one per branch"),
)

KINDS = ("copy", "classes", "bg_last", "class_boxes", "element", "xy_swap", "zero", "drop")


# ------------------------------------------------------------------------------------------------
# patterns
# ------------------------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _regex(pattern: str) -> re.Pattern:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        out.append(f"(?P<{name}>.+)" if name == "rest" else f"(?P<{name}>[^.]+)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    release: re.Pattern | None
    ours: re.Pattern | None


_COMPILED = tuple(_Compiled(r, _regex(r.release) if r.release else None,
                            _regex(r.ours.split("[")[0]) if r.ours else None) for r in KEY_MAP)


def _fill(pattern: str, groups: Mapping[str, str]) -> tuple[str, int | None]:
    """``pattern`` with its placeholders filled; ``(key, element index or None)``."""
    text = _PLACEHOLDER.sub(lambda m: groups[m.group(1)], pattern)
    if text.endswith("]") and "[" in text:
        key, index = text[:-1].split("[")
        return key, int(index)
    return text, None


def release_rule(key: str) -> tuple[Rule, dict[str, str]] | None:
    """The first rule of :data:`KEY_MAP` whose release pattern matches ``key``."""
    for c in _COMPILED:
        if c.release is not None:
            m = c.release.match(key)
            if m:
                return c.rule, m.groupdict()
    return None


def _our_rule(key: str) -> tuple[Rule, dict[str, str]] | None:
    for c in _COMPILED:
        if c.ours is not None:
            m = c.ours.match(key)
            if m:
                return c.rule, m.groupdict()
    return None


# ------------------------------------------------------------------------------------------------
# class order
# ------------------------------------------------------------------------------------------------
def class_permutation(class_order: Sequence[str] | None = None) -> list[int]:
    """``perm[c]`` = the release's label index of ``CLASSES[c]``.

    ``class_order`` lists the class names in the release's label order. MMDetection 2.x gives
    label ``k`` to the ``k``-th category of the training annotation file *in the file's order*
    (``cat_ids = coco.get_cat_ids(cat_names=CLASSES)``), not in its ``CLASSES`` order; see
    :func:`class_order_from_annotations`. ``None`` assumes the two agree.
    """
    if class_order is None:
        return list(range(NUM_CLASSES))
    order = [str(n) for n in class_order]
    if sorted(order) != sorted(CLASSES) or len(order) != NUM_CLASSES:
        raise ConversionError(
            f"class order {order} must list the nine OralXrays-9 classes exactly once "
            f"({list(CLASSES)}).")
    return [order.index(name) for name in CLASSES]


def class_order_from_annotations(path: str | os.PathLike) -> list[str]:
    """The release's label order, as MMDetection derives it from a COCO annotation file: the
    categories in the file's order, keeping those whose name is one of the nine classes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = data["categories"]
        names = [str(c["name"]) for c in categories if str(c["name"]) in CLASSES]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(
            f"--annotations {path}: cannot read the 'categories' of a COCO annotation file "
            f"({type(exc).__name__}: {exc}). Pass the release's "
            "annotations/instances_train2017.json.") from None
    if sorted(names) != sorted(CLASSES):
        raise ConversionError(
            f"--annotations {path}: its categories {names} are not the nine OralXrays-9 "
            f"classes {list(CLASSES)} (each once).")
    return names


# ------------------------------------------------------------------------------------------------
# the tensor operations of each kind
# ------------------------------------------------------------------------------------------------
def _forward(kind: str, t: Tensor, perm: list[int]) -> Tensor:
    """Release tensor -> ours (``element`` is handled by the caller)."""
    if kind == "copy":
        return t.clone()
    if kind == "classes":
        return t[perm].clone()
    if kind == "bg_last":
        return torch.cat([t[NUM_CLASSES:NUM_CLASSES + 1], t[perm]], dim=0)
    if kind == "class_boxes":
        rows = t.reshape(NUM_CLASSES, 4, *t.shape[1:])[perm].reshape(-1, *t.shape[1:])
        return torch.cat([torch.zeros_like(t[:4]), rows], dim=0)
    if kind == "xy_swap":
        q = t.shape[1] // 4
        return torch.cat([t[:, q:2 * q], t[:, :q], t[:, 2 * q:]], dim=1)
    raise ValueError(f"unknown kind {kind!r}")


def _inverse(kind: str, t: Tensor, perm: list[int]) -> Tensor:
    """Ours -> release tensor."""
    if kind == "copy":
        return t.clone()
    if kind == "classes":
        out = torch.empty_like(t)
        out[perm] = t
        return out
    if kind == "bg_last":
        out = torch.empty_like(t)
        out[perm] = t[1:]
        out[NUM_CLASSES] = t[0]
        return out
    if kind == "class_boxes":
        rows = t[4:].reshape(NUM_CLASSES, 4, *t.shape[1:])
        out = torch.empty_like(rows)
        out[perm] = rows
        return out.reshape(-1, *t.shape[1:])
    if kind == "xy_swap":
        return _forward("xy_swap", t, perm)  # swapping the first two blocks is its own inverse
    raise ValueError(f"unknown kind {kind!r}")


#: Rows a class-indexed release tensor must have, by kind.
_CLASS_ROWS = {"classes": NUM_CLASSES, "bg_last": NUM_CLASSES + 1, "class_boxes": 4 * NUM_CLASSES}


def _expected_release_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The release shape a rule needs to produce a tensor of our shape ``ours``."""
    if kind == "bg_last":
        return ours
    if kind == "class_boxes":
        return (ours[0] - 4, *ours[1:])
    return ours


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What :func:`convert_state_dict` did and what stops it.

    ``mapped``: release key -> our key (``name[i]`` for an element); ``dropped``: release keys
    of ``drop`` rules; ``zero_filled``: our keys of ``zero`` rules; ``no_home``: release keys
    without a place (key, shape, why); ``unfilled``: our parameters no release key fills
    (key, shape, why); ``shape_mismatch``: (release key, release shape, our key, expected
    shape).
    """

    num_release_keys: int = 0
    num_model_keys: int = 0
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    zero_filled: list[str] = field(default_factory=list)
    no_home: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    unfilled: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], str, tuple[int, ...]]] = field(
        default_factory=list)
    class_order: list[str] = field(default_factory=lambda: list(CLASSES))
    class_order_assumed: bool = True

    @property
    def ok(self) -> bool:
        return not (self.no_home or self.unfilled or self.shape_mismatch)

    def summary(self) -> str:
        """Counts on one line each, then every problem with its shape and reason."""
        lines = [
            f"release keys: {self.num_release_keys}; mapped onto the model: {len(self.mapped)}; "
            f"dropped by the table (no weights): {len(self.dropped)}; without a home: "
            f"{len(self.no_home)}",
            f"model tensors: {self.num_model_keys}; filled from the release: "
            f"{len({v.split('[')[0] for v in self.mapped.values()})}; zero by the table: "
            f"{len(self.zero_filled)}; left unfilled: {len(self.unfilled)}",
            f"shape mismatches: {len(self.shape_mismatch)}",
            "class order (release label 0..8): " + ", ".join(self.class_order)
            + (" (assumed: pass --annotations to read it from the release's annotation file)"
               if self.class_order_assumed else " (from the annotation file)"),
        ]
        if self.no_home:
            lines.append("release keys without a home:")
            lines += [f"  {k} {list(s)}: {why}" for k, s, why in self.no_home]
        if self.unfilled:
            lines.append("model parameters left unfilled:")
            lines += [f"  {k} {list(s)}: {why}" for k, s, why in self.unfilled]
        if self.shape_mismatch:
            lines.append("shape mismatches (release key, its shape -> our key, shape needed):")
            lines += [f"  {rk} {list(rs)} -> {ok} {list(os_)}"
                      for rk, rs, ok, os_ in self.shape_mismatch]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "num_release_keys": self.num_release_keys,
            "num_model_keys": self.num_model_keys, "mapped": dict(self.mapped),
            "dropped": list(self.dropped), "zero_filled": list(self.zero_filled),
            "no_home": [{"key": k, "shape": list(s), "why": w} for k, s, w in self.no_home],
            "unfilled": [{"key": k, "shape": list(s), "why": w} for k, s, w in self.unfilled],
            "shape_mismatch": [{"release_key": a, "release_shape": list(b), "key": c,
                                "shape": list(d)} for a, b, c, d in self.shape_mismatch],
            "class_order": list(self.class_order),
            "class_order_assumed": self.class_order_assumed,
        }


def _unfilled_reason(key: str) -> str:
    for prefix, why in UNFILLED_REASONS:
        if key.startswith(prefix):
            return why
    found = _our_rule(key)
    if found is not None and found[0].release is not None:
        return f"its release key ({found[0].release}) is missing from the checkpoint"
    return "no release key maps here (no rule in KEY_MAP)"


def convert_state_dict(
    release: Mapping[str, Tensor],
    model_state: Mapping[str, Tensor],
    *,
    class_order: Sequence[str] | None = None,
    strict: bool = True,
) -> tuple[OrderedDict[str, Tensor], ConversionReport, OrderedDict[str, Tensor]]:
    """Map a release state dict onto our model's state dict.

    Args:
        release: the release's ``{key: tensor}``.
        model_state: ``build_model("moqam", ...).state_dict()`` (its keys and shapes are the
            target; its values are not used).
        class_order: the release's label order (see :func:`class_permutation`).
        strict: raise :class:`ConversionError` unless every release key has a home, every
            model tensor is filled and every shape agrees.

    Returns:
        ``(state, report, dropped)``: our state dict (model order), the report, and the release
        tensors of ``drop`` rules (kept for :func:`to_release`).
    """
    perm = class_permutation(class_order)
    report = ConversionReport(num_release_keys=len(release), num_model_keys=len(model_state),
                              class_order=[CLASSES[perm.index(k)] for k in range(NUM_CLASSES)],
                              class_order_assumed=class_order is None)
    out: dict[str, Tensor] = {}
    elements: dict[str, dict[int, Tensor]] = {}
    dropped: OrderedDict[str, Tensor] = OrderedDict()
    for key, tensor in release.items():
        found = release_rule(key)
        if found is None:
            report.no_home.append((key, tuple(tensor.shape),
                                   "no rule in KEY_MAP: not part of the released MOQAM this "
                                   "converter knows (another model or version?)"))
            continue
        rule, groups = found
        if rule.kind == "drop":
            dropped[key] = tensor.clone()
            report.dropped.append(key)
            continue
        target, index = _fill(rule.ours, groups)
        if target not in model_state:
            report.no_home.append((key, tuple(tensor.shape),
                                   rule.why or f"the model has no {target}"))
            continue
        want = tuple(model_state[target].shape)
        if rule.kind == "element":
            if tensor.dim() != 0 or len(want) != 1 or not 0 <= index < want[0]:
                report.shape_mismatch.append((key, tuple(tensor.shape), f"{target}[{index}]",
                                              ()))
                continue
            elements.setdefault(target, {})[index] = tensor
            report.mapped[key] = f"{target}[{index}]"
            continue
        need = _expected_release_shape(rule.kind, want)
        if tuple(tensor.shape) != need or (rule.kind in _CLASS_ROWS
                                           and tensor.shape[0] != _CLASS_ROWS[rule.kind]):
            report.shape_mismatch.append((key, tuple(tensor.shape), target, need))
            continue
        out[target] = _forward(rule.kind, tensor, perm).to(model_state[target].dtype)
        report.mapped[key] = target
    for target, parts in elements.items():
        size = model_state[target].shape[0]
        if sorted(parts) == list(range(size)):
            out[target] = torch.stack([parts[i] for i in range(size)]).to(
                model_state[target].dtype)
        else:
            missing = [i for i in range(size) if i not in parts]
            report.unfilled.append((target, tuple(model_state[target].shape),
                                    f"elements {missing} have no release key"))
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, template in model_state.items():
        if key in out:
            state[key] = out[key]
            continue
        found = _our_rule(key)
        if found is not None and found[0].kind == "zero":
            state[key] = torch.zeros_like(template)
            report.zero_filled.append(key)
            continue
        if not any(u[0] == key for u in report.unfilled):
            report.unfilled.append((key, tuple(template.shape), _unfilled_reason(key)))
    if strict and not report.ok:
        raise ConversionError(
            "refused to write a partial model: the release's weights do not fill "
            "build_model('moqam') exactly.\n" + report.summary(), report)
    return state, report, dropped


def to_release(
    state: Mapping[str, Tensor],
    *,
    class_order: Sequence[str] | None = None,
    dropped: Mapping[str, Tensor] | None = None,
) -> OrderedDict[str, Tensor]:
    """The inverse of :func:`convert_state_dict`: our state dict back into release keys.

    ``dropped`` restores the ``drop`` keys (else frozen-BN counters come back as 0). Our
    ``zero`` parameters must still be zero (the release has no place for them).
    """
    perm = class_permutation(class_order)
    out: OrderedDict[str, Tensor] = OrderedDict()
    nonzero = [k for k in state
               if (f := _our_rule(k)) is not None and f[0].kind == "zero"
               and bool(state[k].ne(0).any())]
    if nonzero:
        raise ConversionError(
            f"cannot express {nonzero} in the release's layout: the release's convs have no "
            "bias, and these are no longer zero (fine-tuned?).")
    for key, tensor in state.items():
        found = _our_rule(key)
        if found is None or found[0].kind == "zero":
            continue
        rule, groups = found
        if rule.kind == "element":
            for i in range(tensor.shape[0]):
                release_key, _ = _fill(rule.release, {**groups, "i": str(i)})
                out[release_key] = tensor[i].clone()
            continue
        release_key, _ = _fill(rule.release, groups)
        out[release_key] = _inverse(rule.kind, tensor, perm)
    for key, tensor in (dropped or {}).items():
        out[key] = tensor.clone()
    return out


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def release_config():
    """The :class:`~oralx_lib.engine.TrainConfig` of the converted model: MOQAM, ResNet-50, the
    ``full`` profile (released sizes; tested at 800 x 1333), and the release's frozen backbone
    (stem and ``layer1`` frozen, FrozenBatchNorm2d) set explicitly, so that no ImageNet
    weights are downloaded only to be replaced."""
    from ..engine.config import make_config

    return make_config("full", model="moqam", pretrained_backbone=False,
                       model_overrides={"trainable_backbone_layers": 3,
                                        "freeze_batchnorm": True})


def release_model_state() -> OrderedDict[str, Tensor]:
    """The state dict of ``build_model("moqam")`` at the released sizes (the target)."""
    from ..engine.inference import build_from_config

    return build_from_config(release_config()).state_dict()


def write_release_checkpoint(out: str | os.PathLike, state: Mapping[str, Tensor], *,
                             config=None, release: Mapping[str, Any] | None = None) -> Path:
    """Write converted weights as a normal ``oralx_lib`` checkpoint (atomically).

    The document is what training writes, minus the optimiser, so ``evaluate``, ``predict``
    (:func:`~oralx_lib.engine.inference.load_model`) and ``train --init-from`` read it::

        {"format", "library_version", "epoch": 0, "iteration": 0, "step": 0, "model",
         "config" (default: :func:`release_config`), "history": [], "best_ap": None,
         "best_epoch": None, "release": provenance}
    """
    from .. import __version__

    config = release_config() if config is None else config
    document = {
        "format": CHECKPOINT_FORMAT,
        "library_version": __version__,
        "epoch": 0,
        "iteration": 0,
        "step": 0,
        "model": OrderedDict(state),
        "config": config.to_dict(),
        "history": [],
        "best_ap": None,
        "best_epoch": None,
        "release": dict(release or {}),
    }
    return save_checkpoint(out, document)


def convert_release(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    class_order: Sequence[str] | None = None,
    annotations: str | os.PathLike | None = None,
) -> tuple[Path, ConversionReport]:
    """Convert a release checkpoint file into an ``oralx_lib`` checkpoint at ``out``.

    ``release`` in the written file records the source (file name, SHA-256, ``meta``
    summary), the class order used, the conversion counts and the tensors of ``drop`` rules
    (so that :func:`to_release` can rebuild the release's state dict exactly).

    Raises:
        ReleaseCheckpointError: the file cannot be opened safely.
        ConversionError: any release key without a home, model tensor unfilled or shape that
            differs (nothing is written).
    """
    from ..engine.inference import build_from_config

    if annotations is not None:
        if class_order is not None:
            raise ConversionError("give the class order or the annotation file, not both.")
        class_order = class_order_from_annotations(annotations)
    release = load_release_checkpoint(checkpoint)
    config = release_config()
    model_state = build_from_config(config).state_dict()
    state, report, dropped = convert_state_dict(release.state_dict, model_state,
                                                class_order=class_order)
    info = {
        **release.summary(),
        "class_order": report.class_order,
        "class_order_assumed": report.class_order_assumed,
        "mapped": len(report.mapped),
        "dropped": dict(dropped),
        "zero_filled": list(report.zero_filled),
        "converter": "oralx_lib.release.convert (KEY_MAP)",
    }
    return write_release_checkpoint(out, state, config=config, release=info), report


def convert_release_main(argv: Sequence[str] | None = None) -> int:
    """``python -m oralx_lib convert-release CKPT --out FILE``."""
    parser = argparse.ArgumentParser(
        prog="python -m oralx_lib convert-release",
        description="Convert the authors' MOQAM checkpoint (MMDetection 2.x .pth, opened without "
                    "running code from it) into an oralx_lib checkpoint for evaluate, predict "
                    "and train --init-from. Refuses (exit 2) when any weight has no place.",
        epilog="example:\n  python -m oralx_lib convert-release checkpoints/MOQAM.pth "
               "--out moqam_release.pt \\\n      --annotations data/OralXrays-9/annotations/"
               "instances_train2017.json\n  python -m oralx_lib evaluate --checkpoint "
               "moqam_release.pt --data data/OralXrays-9 --split test --out test.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the release's .pth file")
    parser.add_argument("--out", required=True, help="the oralx_lib checkpoint to write")
    parser.add_argument("--annotations", metavar="JSON",
                        help="the release's training annotation file: its category order is "
                             "the release's label order (default: assume CLASSES' order)")
    parser.add_argument("--report", metavar="JSON", help="also write the conversion report")
    args = parser.parse_args(argv)
    try:
        path, report = convert_release(args.checkpoint, args.out, annotations=args.annotations)
    except ConversionError as exc:
        if args.report and exc.report is not None:
            Path(args.report).write_text(json.dumps(exc.report.to_dict(), indent=1) + "\n")
        raise
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    print(f"wrote {path}: evaluate it with python -m oralx_lib evaluate --checkpoint {path} "
          "--data DATA --split test --out test.json", file=sys.stdout)
    return 0


__all__ = ["KEY_MAP", "KINDS", "ConversionError", "ConversionReport", "Rule",
           "class_order_from_annotations", "class_permutation", "convert_release",
           "convert_release_main", "convert_state_dict", "release_config",
           "release_model_state", "release_rule", "to_release", "write_release_checkpoint"]
