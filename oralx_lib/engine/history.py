"""The training log: one JSON object per line in ``metrics.jsonl``, and a plot of it.

Two kinds of records are written (``"kind"`` field):

- ``"train"``, every ``log_every`` steps: ``epoch`` (1-based), ``iter`` (1-based within the
  epoch), ``step`` (optimizer steps so far), ``lr`` (the one that step used), ``loss`` (the
  summed loss of that step, averaged over processes) and ``losses`` (each named term);
- ``"epoch"``, at the end of each epoch: ``epoch``, ``step``, ``train_loss`` (mean over the
  epoch), ``lr``, ``time_s`` and, when evaluated, ``val_AP``, ``val_AP50``, ... and
  ``val_per_class_AP``.

The file is plain text, so ``pandas.read_json(path, lines=True)`` reads it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from oralx_lib.files import write_text_atomic
from oralx_lib.palette import CYCLE, LINESTYLES, OKABE_ITO


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file (a half-written last line is skipped)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """Append-only JSONL writer; ``enabled=False`` (ranks other than 0) makes it a no-op."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def start(self, resume_step: int | None) -> None:
        """A fresh file, or (resuming) keep only the records up to ``resume_step``: lines
        logged after the checkpoint was written would otherwise appear twice."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_jsonl(self.path) if int(r.get("step", 0)) <= resume_step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _records(source) -> list[dict]:
    if isinstance(source, (str, os.PathLike)):
        return read_jsonl(source)
    if isinstance(source, dict) and "history" in source:  # a train() summary
        source = source["history"]
    records = list(source)
    # Epoch-level history (from a summary or a checkpoint) has no "kind": tag it.
    return [r if "kind" in r else {**r, "kind": "epoch"} for r in records]


def plot_history(history_or_jsonl_path, *, out: str | os.PathLike | None = None,
                 title: str | None = None):
    """Loss, learning rate and validation AP curves; returns the matplotlib Figure.

    Args:
        history_or_jsonl_path: a ``metrics.jsonl`` path, a list of its records, a
            :func:`~oralx_lib.engine.train` summary, or its ``history`` list.
        out: also save the figure there (PNG).

    Panels: (1) the training loss per logged step (total and each term; per epoch when only
    epoch records exist), (2) the learning rate, (3) ``val_AP`` / ``val_AP50`` per epoch.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = _records(history_or_jsonl_path)
    steps = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax_loss, ax_lr, ax_ap = axes

    if steps:
        x = [r["step"] for r in steps]
        ax_loss.plot(x, [r["loss"] for r in steps], color="black", lw=1.6, label="total")
        terms = sorted({k for r in steps for k in r.get("losses", {})})
        colors = [c for c in CYCLE if c != OKABE_ITO["black"]]  # black is the total
        for k, term in enumerate(terms):  # colour and line style: never colour alone
            ax_loss.plot(x, [r.get("losses", {}).get(term, float("nan")) for r in steps],
                         lw=1.0, alpha=0.85, label=term, color=colors[k % len(colors)],
                         linestyle=LINESTYLES[k % len(LINESTYLES)])
        ax_loss.set_xlabel("step")
        ax_lr.plot(x, [r["lr"] for r in steps], color=OKABE_ITO["reddish purple"])
        ax_lr.set_xlabel("step")
    elif epochs:
        x = [r["epoch"] for r in epochs]
        ax_loss.plot(x, [r.get("train_loss", float("nan")) for r in epochs], "o-",
                     color="black", label="train loss (epoch mean)")
        ax_loss.set_xlabel("epoch")
        ax_lr.plot(x, [r.get("lr", float("nan")) for r in epochs], "o-",
                   color=OKABE_ITO["reddish purple"])
        ax_lr.set_xlabel("epoch")
    ax_loss.set(ylabel="loss", title="training loss")
    if ax_loss.lines:
        ax_loss.legend(fontsize=7)
    ax_lr.set(ylabel="learning rate", title="learning rate")

    evaluated = [r for r in epochs if r.get("val_AP") is not None]
    if evaluated:
        x = [r["epoch"] for r in evaluated]
        ax_ap.plot(x, [r["val_AP"] for r in evaluated], "o-", color=OKABE_ITO["blue"],
                   label="AP (0.5:0.95)")
        ax_ap.plot(x, [r.get("val_AP50", float("nan")) for r in evaluated], "s--",
                   color=OKABE_ITO["orange"], label="AP50")
        ax_ap.legend(fontsize=8)
    else:
        ax_ap.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                   transform=ax_ap.transAxes, color="gray")
    ax_ap.set(xlabel="epoch", ylabel="AP", title="validation")
    ax_ap.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig


__all__ = ["MetricsLog", "plot_history", "read_jsonl"]
