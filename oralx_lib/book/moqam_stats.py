"""Measurements for the chapter "Query-aware mining: the complete MOQAM".

Everything here *reads* a :class:`~oralx_lib.models.MOQAM` (through forward hooks, its
:meth:`~oralx_lib.models.MOQAM.training_record`, or a copy of it), it never changes the model it
is given:

- :func:`deformable_sampling` recomputes where a :class:`~oralx_lib.models.MSDeformAttn` module
  samples (locations and attention weights), so they can be drawn;
- :func:`inspect_queries` runs the model on one image and keeps, for every decoder layer, each
  query's box, class scores and sampling points, in original image pixels;
- :func:`collaborative_positives` runs one training forward pass on a copy of the model and
  returns the positive samples of every collaborative branch (RPN with DI-RPN, RoI head, ATSS),
  the queries the one-to-one Hungarian matching picked, and the loss dictionary;
  :func:`positives_table` counts them per ground truth;
- :func:`loss_table`, :func:`family_history`, :func:`part_parameters`, :func:`part_flops`
  sort losses, parameters and FLOPs by the part of the model they belong to.

The drawings are in :mod:`oralx_lib.book.moqam_figures`, the query explorer in
:mod:`oralx_lib.book.explorers`.

Coordinates. Inside the query head a box is ``(cx, cy, w, h)`` normalised by the *unpadded*
resized image; a sampling location is normalised by the padded feature map of its level, and
level ``l``'s valid ratio ``rho_l = (W_valid / W_l, H_valid / H_l)`` links the two
(``loc = r * rho_l``). Multiplying an unpadded-normalised point by the original image's
``(W, H)`` gives original pixels, since the resize keeps the aspect ratio.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou

from .. import CLASSES
from ..errors import ConfigError


def _check_moqam(model) -> None:
    for attr in ("decoder", "encoder", "class_heads", "transform"):
        if not hasattr(model, attr):
            raise ConfigError(
                f"oralx_lib.book.moqam_stats needs the query-based MOQAM (build_model('moqam')); got "
                f"{type(model).__name__} without a {attr!r} part."
            )


# ------------------------------------------------------------------------------------------
# Deformable attention: where a module samples
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def deformable_sampling(attn: nn.Module, query: Tensor, reference_points: Tensor,
                        spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
    """Sampling locations and attention weights of an ``MSDeformAttn`` module.

    With ``M`` heads, ``L`` levels, ``P`` points: offsets ``Delta p = W_off q`` reshaped to
    ``(M, L, P, 2)``, weights ``A = softmax_{L P}(W_att q)`` per head, and

    - point references ``(x, y)``: ``loc = r_l + Delta p / (W_l, H_l)``;
    - box references ``(cx, cy, w, h)``: ``loc = c_l + Delta p / P * (w, h)_l / 2``.

    Args:
        attn: the module (``sampling_offsets``, ``attention_weights``, ``num_heads``,
            ``num_levels``, ``num_points``).
        query: ``(B, Q, C)``, content plus positional embedding, as the module receives it.
        reference_points: ``(B, Q, L, 2)`` or ``(B, Q, L, 4)``, normalised per level.
        spatial_shapes: ``(L, 2)`` ``(H_l, W_l)``.

    Returns:
        ``locations (B, Q, M, L, P, 2)`` normalised ``(x, y)`` on each level's (padded) map,
        and ``weights (B, Q, M, L, P)`` (each head's weights sum to 1).
    """
    batch, queries, _ = query.shape
    m, lv, p = attn.num_heads, attn.num_levels, attn.num_points
    offsets = attn.sampling_offsets(query).view(batch, queries, m, lv, p, 2)
    weights = attn.attention_weights(query).view(batch, queries, m, lv * p).softmax(-1)
    weights = weights.view(batch, queries, m, lv, p)
    ref = reference_points[:, :, None, :, None, :]
    if reference_points.shape[-1] == 2:
        size = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
        locations = ref + offsets / size[None, None, None, :, None, :]
    elif reference_points.shape[-1] == 4:
        locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
    else:
        raise ConfigError(
            "deformable_sampling: reference_points must end in 2 (points) or 4 (boxes), got "
            f"shape {tuple(reference_points.shape)}."
        )
    return locations, weights


# ------------------------------------------------------------------------------------------
# What the queries do on one image
# ------------------------------------------------------------------------------------------
@dataclass
class QueryInspection:
    """The query head on one image, every decoder layer, in original image pixels.

    Attributes:
        original_size: ``(H, W)`` of the image given to the model.
        network_size: ``(H, W)`` after the model's resize (before padding).
        reference: ``(Q, 4)`` xyxy, the boxes the encoder selected (two-stage selection).
        boxes: ``(N_layers, Q, 4)`` xyxy, each layer's refined boxes.
        scores: ``(N_layers, Q, C)`` sigmoid class scores of each layer.
        locations: ``(N_layers, Q, M, L, P, 2)`` the cross-attention's sampling points
            ``(x, y)``.
        weights: ``(N_layers, Q, M, L, P)`` their attention weights.
        detections: the model's own output for the image (``boxes``, ``labels``, ``scores``).
    """

    original_size: tuple[int, int]
    network_size: tuple[int, int]
    reference: Tensor
    boxes: Tensor
    scores: Tensor
    locations: Tensor
    weights: Tensor
    detections: dict

    @property
    def num_layers(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_queries(self) -> int:
        return int(self.boxes.shape[1])


@torch.no_grad()
def inspect_queries(model: nn.Module, image: Tensor) -> QueryInspection:
    """Run ``model`` (a MOQAM) in evaluation mode on one ``(3, H, W)`` image and record its
    query head: the selected reference boxes, every decoder layer's boxes, scores and
    deformable cross-attention samples (:func:`deformable_sampling`). The model's mode is
    restored afterwards; its weights are untouched."""
    _check_moqam(model)
    record: dict = {"cross": []}

    def on_transform(_module, _args, output):
        record["network_size"] = tuple(int(s) for s in output[0].image_sizes[0])

    def on_decoder(_module, args, output):
        record["reference"], record["ratios"] = args[1], args[4]
        record["hidden"], record["boxes"] = output

    def on_cross(module, args, _output):
        query, reference_points, _value, shapes = args[:4]
        record["cross"].append(deformable_sampling(module, query, reference_points, shapes))

    handles = [model.transform.register_forward_hook(on_transform),
               model.decoder.register_forward_hook(on_decoder)]
    handles += [layer.cross_attn.register_forward_hook(on_cross) for layer in model.decoder.layers]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        detections = model([image.to(device)])[0]
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    height, width = image.shape[-2:]
    size = torch.tensor([width, height, width, height], dtype=torch.float32)

    def to_pixels(cxcywh: Tensor) -> Tensor:
        return box_convert(cxcywh.float().cpu(), "cxcywh", "xyxy") * size

    scores = torch.stack([model.class_heads[i](h).float().sigmoid()[0].cpu()
                          for i, h in enumerate(record["hidden"])])
    ratios = record["ratios"][0].float().cpu()  # (L, 2) as (x, y)
    locations = torch.stack([loc[0].float().cpu() for loc, _ in record["cross"]])
    locations = locations / ratios[None, None, None, :, None, :] * size[:2]
    weights = torch.stack([w[0].float().cpu() for _, w in record["cross"]])
    return QueryInspection(
        original_size=(int(height), int(width)),
        network_size=record["network_size"],
        reference=to_pixels(record["reference"][0]),
        boxes=torch.stack([to_pixels(b[0]) for b in record["boxes"]]),
        scores=scores,
        locations=locations,
        weights=weights,
        detections={k: v.detach().cpu() for k, v in detections.items()},
    )


def top_queries(inspection: QueryInspection, k: int, layer: int = -1
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (query, class) pairs of a layer, as the model's inference ranks them:
    the top ``k`` of the ``Q x C`` sigmoid scores. Returns ``(query_index (k,), label (k,) in
    1..C, score (k,))``; a query may appear with several classes."""
    scores = inspection.scores[layer]  # (Q, C)
    k = max(0, min(int(k), scores.numel()))
    value, index = scores.flatten().topk(k)
    classes = scores.shape[1]
    return index // classes, index % classes + 1, value


# ------------------------------------------------------------------------------------------
# The collaborative branches' positives, and one step's losses
# ------------------------------------------------------------------------------------------
@dataclass
class CollaborativeView:
    """One training forward pass on one image, seen through each branch.

    Boxes are xyxy in original image pixels; ``*_gt`` give, for each box, the index of the
    ground truth it was assigned to (rows of ``gt_boxes``).

    Attributes:
        gt_boxes: ``(G, 4)``; gt_labels: ``(G,)`` in ``1..C``.
        positives: ``{branch: (boxes (N, 4), gt index (N,))}`` for the branches that are on:
            ``"rpn"`` (anchors labelled positive by the RPN's assigner, before its sampler
            keeps at most half of 256), ``"roi"`` (the RoI head's positive sampled proposals)
            and ``"atss"`` (ATSS positive anchors).
        queries_from: ``{branch: number of customized positive queries it gives the decoder}``
            (its positives, capped at ``num_aux_queries``), for ``"roi"`` and ``"atss"``.
        matched: ``(boxes (G, 4), gt index (G,))``: the last decoder layer's boxes of the
            queries the Hungarian matching assigned, one per ground truth.
        losses: the loss dictionary of the step (floats).
    """

    gt_boxes: Tensor
    gt_labels: Tensor
    positives: dict[str, tuple[Tensor, Tensor]]
    queries_from: dict[str, int]
    matched: tuple[Tensor, Tensor]
    losses: dict[str, float]


def _gt_index(assigned: Tensor, gt_boxes: Tensor) -> Tensor:
    """Row of ``gt_boxes`` equal to each row of ``assigned`` (highest IoU, so float noise is
    harmless)."""
    if assigned.numel() == 0 or gt_boxes.numel() == 0:
        return torch.zeros(assigned.shape[0], dtype=torch.int64)
    return box_iou(assigned.float(), gt_boxes.float()).argmax(dim=1)


@torch.no_grad()
def collaborative_positives(model: nn.Module, image: Tensor, target: Mapping[str, Tensor], *,
                            seed: int = 0) -> CollaborativeView:
    """One training forward pass of a *copy* of ``model`` on ``(image, target)``, recording
    every branch's positive samples, the one-to-one matched queries and the losses.

    The copy is put in training mode (random denoising noise and RoI sampling, seeded with
    ``seed``) and asked for its :meth:`~oralx_lib.models.MOQAM.training_record`; ``model``
    itself is not touched. Needs the collaborative branches (``aux_branches`` not empty).
    """
    _check_moqam(model)
    if getattr(model, "branches", None) is None:
        raise ConfigError(
            "collaborative_positives: this MOQAM has no collaborative branches; build it with "
            "aux_branches=('rpn', 'roi', 'atss') (the default)."
        )
    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    torch.manual_seed(seed)
    target_d = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in target.items()}
    record = net.training_record([image.to(device)], [target_d])

    height, width = image.shape[-2:]
    net_h, net_w = record.image_sizes[0]
    scale = torch.tensor([width / net_w, height / net_h] * 2)
    gt_net = record.targets[0]["boxes"].float().cpu()
    gt_labels = record.targets[0]["labels"].cpu()
    positives: dict[str, tuple[Tensor, Tensor]] = {}
    if record.rpn:
        anchors, matches = record.rpn[0]
        pos = matches.cpu() >= 0
        positives["rpn"] = (anchors.cpu()[pos].float() * scale, matches.cpu()[pos])
    queries_from: dict[str, int] = {}
    for name, samples in record.samples.items():
        s = samples[0]
        pos = s.labels.cpu() >= 0
        positives[name] = (s.boxes.cpu()[pos].float() * scale,
                           _gt_index(s.gt_boxes.cpu()[pos], gt_net))
        queries_from[name] = min(int(pos.sum()), int(net.num_aux_queries))

    # The one-to-one matching of the last decoder layer (query index, GT index), image 0.
    q_index, g_index = (m.cpu() for m in record.matched[0])
    full = torch.tensor([width, height, width, height], dtype=torch.float32)
    matched_boxes = box_convert(record.boxes[0].float().cpu()[q_index], "cxcywh", "xyxy") * full
    return CollaborativeView(
        gt_boxes=gt_net * scale,
        gt_labels=gt_labels,
        positives=positives,
        queries_from=queries_from,
        matched=(matched_boxes, g_index),
        losses={k: float(v) for k, v in record.losses.items()},
    )


def positives_table(view: CollaborativeView) -> pd.DataFrame:
    """A table, one row per ground truth: class, size ``sqrt(w h)`` (original pixels) and the
    number of positives each branch gave it (``matched``: 1 per GT, the one-to-one matching)."""
    wh = (view.gt_boxes[:, 2:] - view.gt_boxes[:, :2]).clamp(min=0)
    table = pd.DataFrame({
        "class": [CLASSES[int(k) - 1] for k in view.gt_labels],
        "size (px)": wh.prod(1).sqrt().numpy().round(1),
    })
    num_gt = len(view.gt_labels)
    for name, (_, gt) in view.positives.items():
        table[name] = torch.bincount(gt, minlength=num_gt)[:num_gt].numpy()
    table["matched"] = torch.bincount(view.matched[1], minlength=num_gt)[:num_gt].numpy()
    return table


# ------------------------------------------------------------------------------------------
# Losses by family
# ------------------------------------------------------------------------------------------
#: The families of MOQAM's loss terms, in the order the chapter shows them, with a description.
LOSS_FAMILIES: dict[str, str] = {
    "enc": "encoder proposals (two-stage selection), Hungarian-matched",
    "dec": "decoder layers, one-to-one (Hungarian) matching",
    "dn": "contrastive denoising queries",
    "aux": "customized positive queries (from the RoI head and ATSS)",
    "rpn": "RPN branch with DI-RPN",
    "roi": "RoI head branch (CE + GIoU)",
    "cb_scr": "CB-SCR on the RoI features",
    "atss": "ATSS branch",
}


_QUERY_LOSS = re.compile(r"^loss_(?P<term>[a-z0-9]+)_(?P<tag>.+)$")


def loss_family(name: str) -> tuple[str, str, str | None, str | None]:
    """Split a loss name into ``(family, term, layer, group)``.

    ``loss_cls_dn_d1`` -> ``("dn", "cls", "d1", None)``; ``loss_giou_aux0_d0`` ->
    ``("aux", "giou", "d0", "aux0")``; ``loss_bbox_enc`` -> ``("enc", "bbox", None, None)``;
    ``loss_rpn_cls`` -> ``("rpn", "cls", None, None)``; ``loss_cb_scr`` ->
    ``("cb_scr", "cb_scr", None, None)``. Raises :class:`ConfigError` for other names.
    """
    if name == "loss_cb_scr":
        return "cb_scr", "cb_scr", None, None
    for branch in ("rpn", "roi", "atss"):
        if name.startswith(f"loss_{branch}_"):
            return branch, name[len(f"loss_{branch}_"):], None, None
    match = _QUERY_LOSS.match(name)
    if match:
        term, tag = match["term"], match["tag"]
        if tag == "enc":
            return "enc", term, None, None
        parts = tag.split("_")
        if re.fullmatch(r"d\d+", parts[-1]):
            if len(parts) == 1:
                return "dec", term, parts[0], None
            if parts[0] == "dn" and len(parts) == 2:
                return "dn", term, parts[1], None
            if re.fullmatch(r"aux\d+", parts[0]) and len(parts) == 2:
                return "aux", term, parts[1], parts[0]
    raise ConfigError(
        f"loss name {name!r} is not one of MOQAM's (loss_<term>_enc, loss_<term>_d<i>, "
        "loss_<term>_dn_d<i>, loss_<term>_aux<k>_d<i>, loss_rpn_*, loss_roi_*, loss_atss_*, "
        "loss_cb_scr)."
    )


def loss_table(losses: Mapping[str, float | Tensor]) -> pd.DataFrame:
    """One row per loss term: ``name, family, term, layer, group, value`` (float), in the
    order of :data:`LOSS_FAMILIES`, then by name."""
    rows = []
    for name, value in losses.items():
        family, term, layer, group = loss_family(name)
        rows.append({"name": name, "family": family, "term": term, "layer": layer,
                     "group": group, "value": float(value)})
    table = pd.DataFrame(rows, columns=["name", "family", "term", "layer", "group", "value"])
    order = {f: i for i, f in enumerate(LOSS_FAMILIES)}
    table["_order"] = table["family"].map(order)
    return table.sort_values(["_order", "name"]).drop(columns="_order").reset_index(drop=True)


def family_history(records: Sequence[Mapping]) -> pd.DataFrame:
    """Training records of ``metrics.jsonl`` (``kind == "train"``, with a ``losses`` dict) ->
    a table indexed by ``step`` with one column per loss family (the sum of its terms) and
    ``total``."""
    rows = []
    for r in records:
        if r.get("kind") != "train" or "losses" not in r:
            continue
        row = {"step": r["step"], "total": float(r.get("loss", np.nan))}
        for name, value in r["losses"].items():
            family = loss_family(name)[0]
            row[family] = row.get(family, 0.0) + float(value)
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["total"]).rename_axis("step")
    frame = pd.DataFrame(rows).set_index("step").sort_index()
    families = [f for f in LOSS_FAMILIES if f in frame.columns]
    return frame[["total"] + families]


# ------------------------------------------------------------------------------------------
# Parameters, FLOPs and calls by part
# ------------------------------------------------------------------------------------------
#: MOQAM's parts as ``(name, parameter-name prefixes)``, checked in order.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backbone", ("backbone.",)),
    ("neck", ("neck.",)),
    ("encoder", ("encoder.", "level_embed")),
    ("query selection", ("enc_output.", "enc_output_norm.", "enc_box_head.", "class_heads.-1")),
    ("decoder + heads", ("decoder.", "class_heads.", "query_embed.")),
    ("denoising", ("label_embed.",)),
    ("RPN (DI-RPN)", ("branches.rpn.",)),
    ("CB-SCR", ("branches.roi.roi_heads.cb_scr.",)),
    ("RoI head", ("branches.roi.",)),
    ("ATSS head", ("branches.atss.",)),
    ("customized queries", ("aux_",)),
)


#: The parts inference runs.
INFERENCE_PARTS = ("backbone", "neck", "encoder", "query selection", "decoder + heads")


def part_of(name: str, num_decoder_layers: int) -> str:
    """The part (:data:`PARTS`) that a parameter or module name belongs to. The class head
    ``class_heads.<num_decoder_layers>`` scores the encoder's proposals (query selection)."""
    name = name.replace(f"class_heads.{num_decoder_layers}", "class_heads.-1")
    for part, prefixes in PARTS:
        if any(name.startswith(p) or name + "." == p for p in prefixes):
            return part
    return "other"


def part_parameters(model: nn.Module) -> pd.DataFrame:
    """Parameters per part: ``parameters``, ``trainable`` and ``at inference`` (bool), one row
    per part of :data:`PARTS` present in the model."""
    _check_moqam(model)
    layers = len(model.decoder.layers)
    total: dict[str, int] = {}
    trainable: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = part_of(name, layers)
        total[part] = total.get(part, 0) + p.numel()
        trainable[part] = trainable.get(part, 0) + (p.numel() if p.requires_grad else 0)
    order = [p for p, _ in PARTS] + ["other"]
    rows = [{"part": p, "parameters": total[p], "trainable": trainable[p],
             "at inference": p in INFERENCE_PARTS} for p in order if p in total]
    return pd.DataFrame(rows).set_index("part")


def part_flops(model: nn.Module, images: Sequence[Tensor],
               targets: Sequence[Mapping[str, Tensor]] | None = None) -> pd.Series:
    """FLOPs of one forward pass per part, counted by ``torch.utils.flop_counter`` (matrix
    products and convolutions; bilinear sampling and the Hungarian solver are not counted).

    With ``targets`` the model runs a training forward pass (on a copy, so that nothing of
    ``model`` changes), without them an inference pass. Returns a Series indexed by part, with
    ``other`` for what falls outside the parts (e.g. the loss computations)."""
    from torch.utils.flop_counter import FlopCounterMode

    _check_moqam(model)
    net = copy.deepcopy(model)
    net.train(targets is not None)
    device = next(net.parameters()).device
    images = [im.to(device) for im in images]
    layers = len(net.decoder.layers)
    counter = FlopCounterMode(display=False)
    with counter:  # (its module hooks need autograd: no torch.no_grad here)
        if targets is None:
            net(images)
        else:
            net(images, [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                         for t in targets])
    counts = counter.get_flop_counts()
    root = next((k for k in counts if k != "Global" and "." not in k), type(net).__name__)
    # attribute each module's FLOPs to a part at the shallowest module whose name decides it
    flops: dict[str, int] = {}
    decided: list[str] = []
    for module_name in sorted(counts, key=lambda k: k.count(".")):
        if not module_name.startswith(root + "."):
            continue
        rel = module_name[len(root) + 1:]
        if any(rel.startswith(d + ".") or rel == d for d in decided):
            continue
        part = part_of(rel + ".", layers)
        if rel in ("branches", "branches.roi", "branches.roi.roi_heads", "class_heads"):
            continue  # containers whose children belong to different parts
        decided.append(rel)
        flops[part] = flops.get(part, 0) + int(sum(counts[module_name].values()))
    total = int(sum(counts.get("Global", {}).values()))
    flops["other"] = flops.get("other", 0) + max(total - sum(flops.values()), 0)
    order = [p for p, _ in PARTS] + ["other"]
    return pd.Series({p: flops[p] for p in order if flops.get(p)}, name="FLOPs", dtype="int64")


class count_calls:
    """Context manager counting the forward calls of a model's submodules.

    ``with count_calls(model, {"RPN": model.branches.rpn, ...}) as calls: model(images)``
    leaves ``calls`` as ``{"RPN": n, ...}``."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.calls = {name: 0 for name in self.modules}
        self._handles: list = []

    def __enter__(self) -> dict[str, int]:
        for name, module in self.modules.items():
            def hook(_m, _a, _o, name=name):
                self.calls[name] += 1
            self._handles.append(module.register_forward_hook(hook))
        return self.calls

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
