"""The reference runs, read back for the chapters: tables, curves, and the verdict on each claim.

The reference runs (``benchmarks/reference_runs.py``) train every arm of the paper's claims far
longer than a page can, at the release's object scale, on the rare-eval synthetic set. They
write one file per (arm, seed) and a ``summary.json`` to ``benchmarks/results/reference_runs/``.
The chapters never train them; they read those files with :func:`load` and show them next to
their own short runs.

A claim is judged by :func:`compare`: the arm against the arm it claims to beat, on one metric of
the test split, paired by seed. The verdict rule (:func:`verdict`) is fixed here, so a page that
prints a verdict cannot say more than the numbers allow:

- fewer than :data:`MIN_SEEDS` seeds with both arms: ``"not yet decided"`` (one or two seeds
  cannot separate an effect from seed noise; the direction is still reported);
- otherwise, with ``d`` the per-seed differences (arm minus reference), ``t = mean(d) /
  (std(d) / sqrt(n))``: ``"confirmed"`` when ``t >= T_CRIT``, ``"reversed"`` when ``t <=
  -T_CRIT``, ``"not confirmed"`` in between (:data:`T_CRIT` is the one-sided 95 % point of
  Student's t with ``n - 1`` degrees of freedom).

When the results are missing, :func:`missing_message` says which command produces them.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from oralx_lib import paths

#: Where ``benchmarks/reference_runs.py`` writes its results (relative to the checkout).
RESULTS_SUBDIR = Path("benchmarks") / "results" / "reference_runs"
#: The command that makes them (add ``--arms ... --seeds ...`` to run a part).
COMMAND = "python benchmarks/reference_runs.py"
#: Fewest seeds (with both arms) for a verdict.
MIN_SEEDS = 3
#: One-sided 95 % points of Student's t, by degrees of freedom (n - 1).
T_CRIT = {2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833}
T_CRIT_LARGE = 1.645

#: The paper's claims as comparisons: the arm, the arm it should beat, and the metric.
CLAIMS: dict[str, dict] = {
    "di_rpn_small": {"claim": "DI-RPN improves the detection of small findings",
                     "arm": "di_rpn", "against": "baseline", "metric": "APs"},
    "di_rpn_overall": {"claim": "DI-RPN improves overall AP",
                       "arm": "di_rpn", "against": "baseline", "metric": "AP"},
    "size_adaptive": {"claim": "a size-adaptive threshold beats one fixed lower threshold (0.55)",
                      "arm": "di_rpn", "against": "fixed_055", "metric": "APs"},
    "cb_scr_rare": {"claim": "CB-SCR improves the rare classes",
                    "arm": "cb_scr", "against": "baseline", "metric": "rare_AP"},
    "cb_scr_overall": {"claim": "CB-SCR improves overall AP",
                       "arm": "cb_scr", "against": "baseline", "metric": "AP"},
    "both": {"claim": "DI-RPN and CB-SCR together improve overall AP",
             "arm": "moqam_rcnn", "against": "baseline", "metric": "AP"},
    "complete": {"claim": "the complete MOQAM beats the two-stage detector with both components",
                 "arm": "moqam", "against": "moqam_rcnn", "metric": "AP"},
}
#: The metrics of the tables, in order.
METRICS = ("AP", "AP50", "APs", "APm", "rare_AP", "frequent_AP")


@dataclass
class Reference:
    """The reference results found on disk: per-run records and where they came from."""

    folder: Path
    records: dict[tuple[str, int], dict] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        seen: list[str] = []
        for arm, _ in self.records:
            if arm not in seen:
                seen.append(arm)
        return seen

    def seeds(self, arm: str) -> list[int]:
        return sorted(seed for a, seed in self.records if a == arm)

    def runs(self, arm: str) -> list[dict]:
        return [self.records[(arm, seed)] for seed in self.seeds(arm)]


def claim_arms() -> list[str]:
    """Every arm a claim of :data:`CLAIMS` compares, each once, in the claims' order."""
    return list(dict.fromkeys(a for c in CLAIMS.values() for a in (c["against"], c["arm"])))


def results_folder() -> Path:
    """``benchmarks/results/reference_runs`` of this checkout (or of the current folder)."""
    return (paths.repo_root() or Path.cwd()) / RESULTS_SUBDIR


def load(folder: str | Path | None = None) -> Reference | None:
    """The per-run records under ``folder`` (default :func:`results_folder`), or ``None`` when
    there are none. A record that is not valid JSON is an error that names the file."""
    folder = Path(folder) if folder is not None else results_folder()
    if not folder.is_dir():
        return None
    ref = Reference(folder=folder)
    for path in sorted(folder.glob("*_seed*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); delete it and rerun "
                             f"`{COMMAND}` for that arm") from err
        for key in ("arm", "seed", "final", "stopping"):
            if key not in record:
                raise ValueError(f"{path}: field {key!r} is missing; it was not written by "
                                 f"benchmarks/reference_runs.py (rerun `{COMMAND}`)")
        ref.records[(record["arm"], int(record["seed"]))] = record
    return ref if ref.records else None


def missing_message(arms: list[str] | tuple[str, ...], ref: Reference | None = None) -> str:
    """Which arms have no reference run yet, and the command that makes them."""
    have = set(ref.arms) if ref is not None else set()
    todo = [a for a in arms if a not in have]
    if not todo:
        return ""
    return (f"No reference run yet for {', '.join(todo)}: "
            f"`{COMMAND} --arms {' '.join(todo)}` writes them to {RESULTS_SUBDIR.as_posix()}/ "
            "(hours of CPU per run; minutes on a GPU).")


def metric_values(ref: Reference, arm: str, metric: str, split: str = "test") -> dict[int, float]:
    """``{seed: value}`` of one metric of the best checkpoint on ``split`` (missing and NaN
    values left out)."""
    out = {}
    for seed in ref.seeds(arm):
        block = ref.records[(arm, seed)]["final"].get(split)
        if not block:
            continue
        value = block.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[seed] = float(value)
    return out


def t_critical(dof: int) -> float:
    return T_CRIT.get(dof, T_CRIT_LARGE)


def verdict(diffs: list[float]) -> str:
    """The verdict for per-seed differences (arm minus reference); see the module's rule."""
    n = len(diffs)
    if n < MIN_SEEDS:
        return "not yet decided"
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs)
    if sd == 0.0:
        return "confirmed" if mean > 0 else "reversed" if mean < 0 else "not confirmed"
    t = mean / (sd / math.sqrt(n))
    crit = t_critical(n - 1)
    if t >= crit:
        return "confirmed"
    if t <= -crit:
        return "reversed"
    return "not confirmed"


@dataclass
class Comparison:
    """One claim on the reference runs."""

    key: str
    claim: str
    arm: str
    against: str
    metric: str
    split: str
    arm_values: dict[int, float]
    against_values: dict[int, float]
    #: ``{(arm, seed): steps}`` of the compared runs that stopped at their step cap
    capped: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(set(self.arm_values) & set(self.against_values))

    @property
    def diffs(self) -> list[float]:
        return [self.arm_values[s] - self.against_values[s] for s in self.seeds]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def arm_mean(self) -> float:
        return statistics.fmean(self.arm_values[s] for s in self.seeds) if self.n else math.nan

    @property
    def against_mean(self) -> float:
        return statistics.fmean(self.against_values[s] for s in self.seeds) if self.n else math.nan

    @property
    def mean_diff(self) -> float:
        return statistics.fmean(self.diffs) if self.n else math.nan

    @property
    def verdict(self) -> str:
        return verdict(self.diffs) if self.n else "not measured"

    def sentence(self) -> str:
        """The claim, the numbers and the verdict in one sentence (what the pages glue)."""
        if not self.n:
            absent = [a for a, v in ((self.arm, self.arm_values), (self.against, self.against_values))
                      if not v]
            if absent:
                what = f"no reference run of {' and '.join(absent)} is recorded"
            else:
                what = f"the runs of {self.arm} and {self.against} share no seed"
            return f"The claim that {self.claim} is not measured yet: {what}."
        seeds = f"{self.n} seed" + ("s" if self.n != 1 else "")
        direction = ("higher" if self.mean_diff > 0 else "lower" if self.mean_diff < 0
                     else "the same")
        text = (f"On the test split, {self.arm} reaches {self.metric} {self.arm_mean:.3f} against "
                f"{self.against_mean:.3f} for {self.against} ({seeds}; difference "
                f"{self.mean_diff:+.3f}, {direction})")
        if self.verdict == "not yet decided":
            return (text + f": with fewer than {MIN_SEEDS} seeds this is not yet a verdict on the "
                    f"claim that {self.claim}." + self.budget_note())
        return (text + f": the claim that {self.claim} is {self.verdict} on this benchmark"
                + (" at this training budget." if self.capped_in_pairs else ".")
                + self.budget_note())

    @property
    def capped_in_pairs(self) -> dict[tuple[str, int], int]:
        """The capped runs among the compared (paired) seeds."""
        return {k: v for k, v in self.capped.items() if k[1] in self.seeds}

    def budget_note(self) -> str:
        """What the verdict is conditional on when runs stopped at their step cap, not a plateau."""
        capped = self.capped_in_pairs
        if not capped:
            return ""
        total = 2 * self.n
        caps = sorted(set(capped.values()))
        cap = f"{caps[0]} steps" if len(caps) == 1 else f"{caps[0]}..{caps[-1]} steps"
        return (f" {len(capped)} of these {total} runs stopped at their step cap ({cap}) before "
                "their validation AP levelled off, so longer training may change it.")


def compare(ref: Reference | None, key: str, split: str = "test") -> Comparison:
    """The comparison of :data:`CLAIMS` ``[key]`` on the reference runs (empty when missing)."""
    spec = CLAIMS[key]
    comparison = compare_arms(ref, spec["arm"], spec["against"], spec["metric"],
                              claim=spec["claim"], split=split)
    comparison.key = key
    return comparison


def compare_arms(ref: Reference | None, arm: str, against: str, metric: str, *,
                 claim: str = "", split: str = "test") -> Comparison:
    """Any two arms on one metric, paired by seed, with the verdict rule of :func:`verdict`.

    What :func:`compare` does for the paper's claims, for comparisons that are not among
    :data:`CLAIMS` (a sweep setting against the baseline, say). ``claim`` is what the
    sentence says is confirmed or not; it defaults to "<arm> improves <metric> over <against>".
    """
    arm_values = metric_values(ref, arm, metric, split) if ref else {}
    against_values = metric_values(ref, against, metric, split) if ref else {}
    capped = {}
    if ref is not None:
        for (name, seed), record in ref.records.items():
            stop = record.get("stopping", {})
            if name in (arm, against) and stop.get("reason") == "max_steps":
                capped[(name, seed)] = int(stop.get("steps", 0))
    return Comparison(key=f"{arm}-{against}-{metric}",
                      claim=claim or f"{arm} improves {metric} over {against}", arm=arm,
                      against=against, metric=metric, split=split, arm_values=arm_values,
                      against_values=against_values, capped=capped)


#: Scores the complete model's reference runs with sliding windows too: with the settings they
#: were trained with, a run whose checkpoint is on the machine is not trained again.
TILED_COMMAND = (f"{COMMAND} --arms moqam --seeds 0 1 2 --max-steps 480 --moqam-max-steps 480 "
                 "--eval-every 2 --patience 3 --plateau-val-images 20 --final-splits test "
                 "--proposal-images 20 --final-tile 384")


def tiled_reading(ref: Reference | None, arm: str = "moqam", control: str = "moqam_rcnn",
                  metric: str = "AP") -> str:
    """``arm`` scored with sliding windows on the test split (``--final-tile``) next to its
    whole-image score and ``control``'s, on the seeds that have all three; one sentence whose
    reading is chosen by the numbers. The control is compared with windows when it has them,
    otherwise on whole images (said so)."""
    tiled = metric_values(ref, arm, metric, "test_tiled") if ref is not None else {}
    if not tiled:
        return (f"No reference run of {arm} is scored with sliding windows on the test split yet: "
                f"`{TILED_COMMAND}` adds that (it trains only the runs whose checkpoints are not on "
                "the machine).")
    whole = metric_values(ref, arm, metric, "test")
    ctrl_whole = metric_values(ref, control, metric, "test")
    ctrl_tiled = metric_values(ref, control, metric, "test_tiled")
    seeds = sorted(set(tiled) & set(whole) & set(ctrl_whole))
    if not seeds:
        return (f"The runs of {arm} scored with sliding windows share no seed with the recorded "
                f"runs of {control}.")

    def mean(values):
        return statistics.fmean(values[s] for s in seeds)

    t, w, c = mean(tiled), mean(whole), mean(ctrl_whole)
    block = ref.records[(arm, seeds[0])]["final"]["test_tiled"]
    label = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds"
    text = (f"On the test split ({block.get('num_images')} images, {label}), with sliding windows "
            f"of {block.get('tile', {}).get('tile')} px {arm} reaches {metric} {t:.3f} against "
            f"{w:.3f} on whole images; {control} reaches {c:.3f} on whole images")
    if set(seeds) <= set(ctrl_tiled):
        ct = mean(ctrl_tiled)
        text += f" and {ct:.3f} with the same windows"
        compared = "with windows on both sides"
    else:
        ct = c
        text += " (it is not scored with windows on the test split)"
        compared = f"{arm} with windows against {control} on whole images"
    text += (f". The difference to {control} goes from {w - c:+.3f} on whole images to "
             f"{t - ct:+.3f} ({compared})")
    if w < c and t > ct:
        text += (f": with windows {arm} is ahead, so its deficit on whole images comes from "
                 "scoring a model trained on crops on whole images, not from the design")
    elif w < c and t > w:
        text += ": the windows reduce the deficit but do not remove it"
    elif w < c:
        text += ": the windows do not reduce the deficit"
    if len(seeds) < MIN_SEEDS:
        text += (f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: a direction, not a "
                 f"verdict; `{TILED_COMMAND}` adds the others)")
    return text + "."


def claims_table(ref: Reference | None, keys=None, split: str = "test"):
    """One row per claim: the two arms, the metric, their means, the difference, seeds, verdict."""
    import pandas as pd

    rows = []
    for key in keys or CLAIMS:
        c = compare(ref, key, split)
        rows.append({"claim": c.claim, "arm": c.arm, "against": c.against, "metric": c.metric,
                     "arm mean": c.arm_mean, "against mean": c.against_mean,
                     "difference": c.mean_diff, "seeds": c.n, "verdict": c.verdict})
    return pd.DataFrame(rows).set_index("claim")


def arms_table(ref: Reference, arms=None, split: str = "test"):
    """Per arm: seeds, steps trained, why each run stopped, and mean (std) of :data:`METRICS`."""
    import pandas as pd

    rows = {}
    for arm in arms or ref.arms:
        runs = ref.runs(arm)
        if not runs:
            continue
        row = {"seeds": len(runs),
               "steps": "/".join(str(r["stopping"]["steps"]) for r in runs),
               "best step": "/".join(str(r["stopping"]["best_step"]) for r in runs),
               "stopped by": "/".join(r["stopping"]["reason"] for r in runs)}
        for metric in METRICS:
            values = list(metric_values(ref, arm, metric, split).values())
            if not values:
                row[metric] = "-"
                continue
            mean = statistics.fmean(values)
            row[metric] = (f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1
                           else f"{mean:.3f}")
        rows[arm] = row
    return pd.DataFrame(rows).T


def paired_table(ref: Reference | None, arms, against=("cb_scr", "baseline"),
                 metrics=("AP", "rare_AP"), split: str = "test"):
    """Each arm next to the arms in ``against``, on the seeds that all of them ran.

    One row per arm of ``arms`` that shares at least one seed with every arm of ``against``:
    ``seeds`` (those shared seeds, e.g. ``"0"`` or ``"0/1/2"``), then for every metric the arm's
    mean over those seeds and each ``against`` arm's mean over the same seeds (columns
    ``"<metric>"`` and ``"<metric> <against arm>"``). A sweep run for one seed is thus read
    against the same seed of the arms it varies, never against their mean over other seeds.
    Arms without a shared seed are left out; ``None`` when no arm has one.
    """
    import pandas as pd

    if ref is None:
        return None
    rows = {}
    for arm in arms:
        values = {a: {m: metric_values(ref, a, m, split) for m in metrics}
                  for a in (arm, *against)}
        shared = set.intersection(*(set(values[a][m]) for a in values for m in metrics))
        if not shared:
            continue
        seeds = sorted(shared)
        row = {"seeds": "/".join(str(s) for s in seeds)}
        for m in metrics:
            row[m] = statistics.fmean(values[arm][m][s] for s in seeds)
            for other in against:
                row[f"{m} {other}"] = statistics.fmean(values[other][m][s] for s in seeds)
        rows[arm] = row
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index")
    numeric = [c for c in table.columns if c != "seeds"]
    table[numeric] = table[numeric].astype(float)  # so that .round() applies
    return table


def per_class_table(ref: Reference, arms, split: str = "test"):
    """Per-class AP (mean over seeds), classes as rows, arms as columns."""
    import pandas as pd

    cols = {}
    for arm in arms:
        runs = [r for r in ref.runs(arm) if r["final"].get(split)]
        if not runs:
            continue
        classes = runs[0]["final"][split]["per_class_AP"]
        col = {}
        for name in classes:
            values = [r["final"][split]["per_class_AP"].get(name) for r in runs]
            values = [v for v in values if v is not None]
            col[name] = statistics.fmean(values) if values else math.nan
        cols[arm] = col
    return pd.DataFrame(cols)


def proposal_table(ref: Reference, arms):
    """Per arm (mean over seeds): the RPN's recall per size bin (IoU >= 0.5), its median
    proposal and ground-truth ``w x h``, and whether a run's regression collapsed."""
    import pandas as pd

    rows = {}
    for arm in arms:
        props = [r["final"].get("proposals_val") for r in ref.runs(arm)]
        props = [p for p in props if p]
        if not props:
            continue
        row = {"images": props[0]["images"], "recall": statistics.fmean(p["recall"] for p in props)}
        for bin_name in props[0]["recall_by_size"]:
            values = [p["recall_by_size"][bin_name]["recall"] for p in props
                      if bin_name in p["recall_by_size"]]
            row[f"recall {bin_name} px"] = statistics.fmean(values)
        row["median proposal w x h"] = " / ".join(
            "{:.0f} x {:.0f}".format(*p["median_proposal_wh"]) for p in props)
        row["median box w x h"] = "{:.0f} x {:.0f}".format(*props[0]["median_gt_wh"])
        row["collapsed"] = any(p["collapsed"] for p in props)
        rows[arm] = row
    return pd.DataFrame(rows).T


def provenance_table(ref: Reference, arms=None):
    """Per run: the commands that trained it, the commit, the hardware and the wall time."""
    import pandas as pd

    rows = []
    for arm in arms or ref.arms:
        for record in ref.runs(arm):
            sessions = record.get("sessions") or []
            rows.append({
                "run": f"{arm} seed {record['seed']}",
                "commits": ", ".join(sorted({s.get("commit", "?")[:12] for s in sessions})),
                "hardware": ", ".join(sorted({f"{s.get('cpu', '?')} x{s.get('cpu_count', '?')}"
                                              + (f" ({s['cpu_capability']})"
                                                 if s.get("cpu_capability") else "")
                                              + (f" {s['gpu']}" if s.get("gpu") else "")
                                              for s in sessions})),
                "wall h": round(sum(s.get("wall_s", 0.0) for s in sessions) / 3600, 2),
                "command": sessions[0].get("command", "?") if sessions else "?",
            })
    return pd.DataFrame(rows).set_index("run") if rows else pd.DataFrame()


def same_seed_pairs(ref: Reference, arm: str, other: str,
                    metrics=("AP", "APs", "rare_AP"), split: str = "test"):
    """The runs of two arms, seed by seed: whether their training took the same path, and how
    far apart their final numbers are.

    Meant for two arms that compute the same thing (e.g. two assignment rules that give every
    box the same positives): their differences then measure how much runs with identical
    settings vary between the machines and sessions that made them, a floor under which no
    other comparison of this benchmark can be read.

    Returns one row per seed that both arms have: ``identical loss curve`` (every logged training
    loss equal), ``first different step`` (the first logged step whose loss differs, <NA> when
    none does) and ``<metric> difference`` (``arm`` minus ``other``) for each metric.
    """
    import pandas as pd

    rows = {}
    for seed in sorted(set(ref.seeds(arm)) & set(ref.seeds(other))):
        a = {r["step"]: r["loss"] for r in ref.records[(arm, seed)].get("loss_curve") or []}
        b = {r["step"]: r["loss"] for r in ref.records[(other, seed)].get("loss_curve") or []}
        common = sorted(set(a) & set(b))
        differ = [step for step in common if a[step] != b[step]]
        row = {"identical loss curve": bool(common) and not differ,
               "first different step": differ[0] if differ else None}
        for metric in metrics:
            va = metric_values(ref, arm, metric, split).get(seed)
            vb = metric_values(ref, other, metric, split).get(seed)
            row[f"{metric} difference"] = (va - vb if va is not None and vb is not None
                                           else math.nan)
        rows[seed] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if len(table):  # a step is an integer: a missing one must not turn the column into floats
        table["first different step"] = table["first different step"].astype("Int64")
    table.index.name = "seed"
    return table


def plot_curves(ref: Reference | None, arms, ax=None, metric: str = "AP"):
    """Validation ``metric`` (on the plateau images) against the training step, one line per
    (arm, seed); a dot marks each run's best evaluation and a cross where it stopped. Without
    runs the axes say which command makes them."""
    import matplotlib.pyplot as plt

    from oralx_lib.palette import CYCLE

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.6))
    drawn = [arm for arm in arms if ref is not None and ref.runs(arm)]
    if not drawn:  # nothing to draw: say which command makes it, on the figure itself
        ax.text(0.5, 0.5, missing_message(list(arms), ref).replace(": `", ":\n`"), ha="center",
                va="center", wrap=True, fontsize=9, transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    for k, arm in enumerate(drawn):
        color = CYCLE[k % len(CYCLE)]
        for j, record in enumerate(ref.runs(arm)):
            curve = record.get("val_curve") or []
            if not curve:
                continue
            steps = [c["step"] for c in curve]
            values = [c.get(metric, math.nan) for c in curve]
            ax.plot(steps, values, color=color, lw=1.4, alpha=0.9,
                    label=arm if j == 0 else None)
            best = max(range(len(values)), key=lambda i: values[i])
            ax.plot(steps[best], values[best], "o", color=color, ms=5)
            ax.plot(steps[-1], values[-1], "x", color=color, ms=7)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {metric} (plateau images)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return ax


__all__ = [
    "CLAIMS", "COMMAND", "Comparison", "METRICS", "MIN_SEEDS", "Reference", "arms_table",
    "claim_arms",
    "claims_table", "compare", "load", "metric_values", "missing_message", "per_class_table",
    "plot_curves", "proposal_table", "provenance_table", "results_folder", "verdict",
]
