"""ipywidgets explorers for the notebooks.

They need a live kernel (Jupyter, Colab). The published site is static, so every chapter shows a
static figure beside each explorer; the explorers return their widget so a notebook can display
it, and expose the drawing function they call so a test can run it without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from . import CLASSES
from .plots import class_legend, draw_boxes


def render_item(dataset, index: int, *, classes: Sequence[str] | None = None,
                prediction: dict | None = None, score_thr: float = 0.3, ax=None,
                width: float = 11.0):
    """Draw item ``index`` with its ground truth (solid) and, if given, a prediction (dashed,
    with scores), keeping only ``classes``. Returns the figure."""
    image, target = dataset[index]
    h, w = image.shape[-2:]
    if ax is None:
        fig, ax = plt.subplots(figsize=(width, width * h / w + 0.6))
    else:
        fig = ax.figure
    shown = [n for n in CLASSES if classes is None or n in classes]
    n_gt = sum(CLASSES[int(lab) - 1] in shown for lab in target["labels"])
    title = f"item {index} (image id {target['image_id']}): {n_gt} ground-truth boxes"
    draw_boxes(ax, image, target["boxes"], target["labels"], classes=shown, title=title)
    if prediction is not None:
        draw_boxes(ax, None, prediction["boxes"], prediction["labels"], prediction["scores"],
                   classes=shown, score_thr=score_thr, linestyle="--")
        n_pred = int(sum(
            float(s) >= score_thr and CLASSES[int(lab) - 1] in shown
            for s, lab in zip(prediction["scores"], prediction["labels"])))
        ax.set_title(title + f"; {n_pred} predictions with score >= {score_thr:.2f} (dashed)",
                     fontsize=9)
    class_legend(fig, loc="lower center", ncol=5)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


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
