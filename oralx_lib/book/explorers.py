"""ipywidgets explorers for the notebooks.

They need a live kernel (Jupyter, Colab). The published site is static, so every chapter shows a
static figure beside each explorer; the explorers return their widget so a notebook can display
it, and call a drawing function of :mod:`oralx_lib.book` that a test can run without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from .. import CLASSES
from .eval_figures import plot_sphere, render_errors
from .eval_stats import SphereLoss, nearest_class_angle, optimise_on_sphere
from .figures import render_item
from .moqam_figures import render_queries
from .moqam_stats import QueryInspection, inspect_queries
from .rpn_figures import draw_threshold_setting
from .rpn_stats import best_iou_by_size


def dataset_browser(dataset, predictions: Sequence[dict] | None = None, *,
                    score_thr: float = 0.3, width: float = 11.0):
    """An explorer: an image slider, a class filter and (with ``predictions``, one dict per item)
    a score slider. Returns the ``ipywidgets`` box to display."""
    import ipywidgets as W
    from IPython.display import display

    index = W.IntSlider(value=0, min=0, max=max(len(dataset) - 1, 0), description="image",
                        continuous_update=False, layout=W.Layout(width="60%"))
    classes = W.SelectMultiple(options=list(CLASSES), value=list(CLASSES), rows=9,
                               description="classes")
    controls = [index, classes]
    score = None
    if predictions is not None:
        score = W.FloatSlider(value=score_thr, min=0.0, max=1.0, step=0.05,
                              description="min score", continuous_update=False)
        controls.append(score)
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig = render_item(dataset, index.value, classes=list(classes.value),
                              prediction=None if predictions is None
                              else predictions[index.value],
                              score_thr=score.value if score is not None else score_thr,
                              width=width)
            display(fig)
            plt.close(fig)

    for c in controls:
        c.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([W.VBox([index] + ([score] if score is not None else [])), classes]),
                   out])


def threshold_explorer(anchors: Tensor, *, rules: Mapping[str, object] | None = None,
                       width: float = 12.0):
    """An explorer: object size (log slider) and sub-stride position; draws
    :func:`draw_threshold_setting`. Returns the ``ipywidgets`` box to display."""
    import ipywidgets as W
    from IPython.display import display

    curve_sizes = np.geomspace(4, 96, 40).tolist()
    best_curve = best_iou_by_size(anchors, curve_sizes, positions=128)
    size = W.FloatLogSlider(value=12, base=2, min=2, max=6.5, step=0.05, description="size (px)",
                            continuous_update=False)
    dx = W.FloatSlider(value=0.0, min=-8, max=8, step=0.5, description="shift x", continuous_update=False)
    dy = W.FloatSlider(value=0.0, min=-8, max=8, step=0.5, description="shift y", continuous_update=False)
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(width, width * 0.36),
                                     gridspec_kw={"width_ratios": [1.6, 1]})
            draw_threshold_setting(axes, size.value, anchors, offset=(dx.value, dy.value), rules=rules,
                                   curve_sizes=curve_sizes, best_curve=best_curve)
            fig.tight_layout()
            display(fig)
            plt.close(fig)

    for control in (size, dx, dy):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([size, dx, dy]), out])


def sphere_explorer(counts: Sequence[int], losses: Mapping[str, SphereLoss], *,
                    temperatures: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0),
                    steps: int = 500, seed: int = 0):
    """An explorer: a temperature slider and a choice of loss, redrawing the optimised toy
    sphere (:func:`optimise_on_sphere`) with the angle from each class to its nearest
    neighbour. Results are computed on demand and kept for the widget's lifetime. Returns the
    ``ipywidgets`` box."""
    import ipywidgets as W
    from IPython.display import display

    tau = W.SelectionSlider(options=list(temperatures),
                            value=1.0 if 1.0 in temperatures else temperatures[-1],
                            description="tau", continuous_update=False)
    which = W.ToggleButtons(options=list(losses), description="loss")
    out = W.Output()
    cache: dict = {}

    def redraw(*_):
        key = (which.value, tau.value)
        if key not in cache:
            cache[key] = optimise_on_sphere(counts, losses[which.value], temperature=tau.value,
                                            steps=steps, seed=seed)
        res = cache[key]
        angles = nearest_class_angle(res["features"], res["labels"])
        with out:
            out.clear_output(wait=True)
            fig = plt.figure(figsize=(5.5, 5.2))
            ax = fig.add_subplot(projection="3d")
            plot_sphere(ax, res["features"], res["labels"],
                        arcs_from=int(torch.tensor(list(counts)).argmin()),
                        title=f"{which.value}, tau = {tau.value}: nearest-class angle "
                              + ", ".join(f"{a:.0f}" for a in angles.tolist()) + " deg")
            ax.legend(fontsize=7, loc="upper left")
            display(fig)
            plt.close(fig)

    tau.observe(redraw, names="value")
    which.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([which, tau]), out])


def error_browser(dataset, predictions: Sequence[Mapping[str, Tensor]], *,
                  score_thr: float = 0.3, iou_thr: float = 0.5, width: float = 11.0):
    """An explorer over :func:`render_errors`: image slider, score threshold, IoU threshold.
    ``predictions[i]`` belongs to item ``i``. Returns the ``ipywidgets`` box."""
    import ipywidgets as W
    from IPython.display import display

    index = W.IntSlider(value=0, min=0, max=max(len(predictions) - 1, 0), description="image",
                        continuous_update=False, layout=W.Layout(width="50%"))
    score = W.FloatSlider(value=score_thr, min=0.05, max=0.95, step=0.05,
                          description="min score", continuous_update=False)
    iou = W.FloatSlider(value=iou_thr, min=0.3, max=0.9, step=0.05, description="IoU",
                        continuous_update=False)
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            fig = render_errors(dataset, index.value, predictions[index.value],
                                score_thr=score.value, iou_thr=iou.value, width=width)
            display(fig)
            plt.close(fig)

    for control in (index, score, iou):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([index, score, iou]), out])


def query_explorer(model: nn.Module, dataset, *, indices: Sequence[int] | None = None,
                   top_k: int = 8, width: float = 11.0):
    """An explorer of the query head: image, decoder layer and number of top queries
    sliders, and a switch for the sampling points. Each image's :func:`inspect_queries` is
    computed once and cached. Returns the ``ipywidgets`` box to display."""
    import ipywidgets as W
    from IPython.display import display

    indices = list(range(len(dataset))) if indices is None else list(indices)
    cache: dict[int, QueryInspection] = {}
    num_layers = len(model.decoder.layers)
    image_w = W.SelectionSlider(options=indices, value=indices[0], description="image",
                                continuous_update=False, layout=W.Layout(width="50%"))
    layer_w = W.IntSlider(value=num_layers, min=1, max=num_layers, description="layer",
                          continuous_update=False)
    topk_w = W.IntSlider(value=top_k, min=1, max=30, description="top k",
                         continuous_update=False)
    points_w = W.Checkbox(value=True, description="sampling points")
    out = W.Output()

    def redraw(*_):
        index = image_w.value
        image, target = dataset[index]
        if index not in cache:
            cache[index] = inspect_queries(model, image)
        with out:
            out.clear_output(wait=True)
            fig = render_queries(image, target, cache[index], layer=layer_w.value - 1,
                                 top_k=topk_w.value, show_points=points_w.value, width=width)
            display(fig)
            plt.close(fig)

    for control in (image_w, layer_w, topk_w, points_w):
        control.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([W.VBox([image_w, layer_w]), W.VBox([topk_w, points_w])]), out])
