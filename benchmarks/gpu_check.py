"""One command that checks and measures the GPU path on one CUDA GPU, in at most 8 minutes::

    python benchmarks/gpu_check.py

writes ``benchmarks/results/gpu_<device>.json`` (``<device>`` from the GPU's name, e.g.
``gpu_nvidia_t4.json``) with the command, commit, torch, CUDA and GPU name, and:

1. ``tests``: the CUDA tests (``pytest -m cuda tests/test_cuda.py``): forward, backward and one
   optimiser step of all five models in fp32, fp16 with a gradient scaler and bf16;
   deformable attention on CUDA against the CPU; a query-head forward with no host
   synchronisation; resuming a run on CUDA;
2. ``moqam``: MOQAM training images/s and peak memory (``torch.cuda.max_memory_allocated``) at
   the ``colab`` and ``full`` sizes (the largest training size of each profile), AMP off and
   on (bf16 where the GPU has it, else fp16 with a scaler: the engine's ``amp="auto"``), and
   inference images/s at the test size; an out-of-memory case is recorded, not fatal;
3. ``deformable_attention_share``: the share of a full-size AMP training step spent in
   deformable attention (its forward range and ``grid_sampler`` backward, device time);
4. ``moqam_vs_moqam_rcnn``: MOQAM / the two-stage ``moqam_rcnn`` at the full size (training
   step and inference), AMP on;
5. ``epoch_estimate``: hours per epoch from the measured images/s, per 10,000 training images
   (the released training split's size is not published; multiply by yours / 10,000).

Without a GPU it refuses with a message and exit status 2. Each stage checks the time left
(``--budget`` seconds, 450 by default, so the whole command stays under 8 minutes with start-up)
and records what it skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import provenance  # noqa: E402

#: Training-set images per "epoch" in the estimate (the released split sizes are unpublished).
EPOCH_IMAGES = 10_000
#: The synthetic panorama size (OralXrays-9 images are reported as 1991 x 1127).
PANORAMA = (1991, 1127)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def refuse_without_cuda() -> int:
    cuda = torch.version.cuda or "none (a CPU-only build)"
    print(
        "gpu_check.py needs a CUDA GPU, and PyTorch sees none "
        f"(torch {torch.__version__}, CUDA build: {cuda}). Run it on a machine with an NVIDIA "
        "GPU and a CUDA build of PyTorch (on Colab: Runtime > Change runtime type > GPU). "
        "Nothing was measured or written.",
        file=sys.stderr,
    )
    return 2


# ---------------------------------------------------------------------- 1. the CUDA tests
def run_cuda_tests(budget: Budget) -> dict:
    timeout = max(30.0, min(240.0, budget.left() - 200))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q",
               "-p", "no:cacheprovider", f"--junitxml={report}"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"command": " ".join(cmd[1:]), "timed_out_after_s": timeout}
        seconds = time.perf_counter() - start
        cases = []
        if report.is_file():
            for case in ET.parse(report).getroot().iter("testcase"):
                status = "passed"
                for kind in ("failure", "error", "skipped"):
                    node = case.find(kind)
                    if node is not None:
                        status = {"failure": "failed", "error": "error"}.get(kind, "skipped")
                        message = (node.get("message") or "")[:300]
                        break
                else:
                    message = ""
                cases.append({"test": case.get("name"), "status": status,
                              "seconds": float(case.get("time", 0)), "message": message})
    counts = {s: sum(c["status"] == s for c in cases) for s in ("passed", "failed", "error",
                                                                 "skipped")}
    return {"command": "python " + " ".join(cmd[1:-1]), "exit_status": proc.returncode,
            "seconds": round(seconds, 1), **counts, "cases": cases,
            "output_tail": proc.stdout[-2000:] if proc.returncode else ""}


# ---------------------------------------------------------------------- 2..4. measurements
# The measurements take a device so that a CPU test can exercise them at the tiny profile
# (``main`` itself refuses without CUDA).
def amp_dtype(device: str = "cuda") -> torch.dtype:
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> float:
    return float(torch.cuda.max_memory_allocated()) if device == "cuda" else float("nan")


def batch_at(width: int, height: int, n: int = 1, seed: int = 0, device: str = "cuda"):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        xy = torch.rand(12, 2, generator=g) * torch.tensor([width * 0.85, height * 0.85])
        wh = torch.rand(12, 2, generator=g) * torch.tensor([width * 0.12, height * 0.12]) + 6
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(1, 10, (12,), generator=g).to(device)})
    return images, targets


def build(model_name: str, profile: str, device: str = "cuda"):
    """The profile's model as the engine builds it, the release's frozen backbone parts
    (random weights: nothing is downloaded)."""
    from oralx_lib.engine import make_config
    from oralx_lib.engine.inference import build_from_config

    config = make_config(profile, model=model_name, pretrained_backbone=False,
                         model_overrides={"trainable_backbone_layers": 3,
                                          "freeze_batchnorm": True})
    torch.manual_seed(0)
    model = build_from_config(config).to(device)
    train_size = (max(model.transform.min_size), model.transform.max_size)
    model.transform.min_size = (train_size[0],)  # every timed step at the largest size
    return model, config, train_size


def train_and_infer(model, images, targets, amp: bool, steps: int, device: str = "cuda") -> dict:
    dtype = amp_dtype(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=amp and dtype == torch.float16)

    def step():
        model.train()
        with torch.autocast(device, dtype=dtype, enabled=amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        scaler.step(optimizer)
        scaler.update()

    step()
    step()  # warm-up (cuDNN autotuning, allocator)
    synchronize(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    train_s = (time.perf_counter() - start) / steps
    peak = peak_bytes(device)
    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=amp):
        model(images)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(images)
        synchronize(device)
    infer_s = (time.perf_counter() - start) / steps
    n = len(images)
    return {"train_images_per_s": n / train_s, "train_step_s": train_s,
            "peak_memory_GiB": peak / 1024 ** 3, "inference_images_per_s": n / infer_s,
            "amp_dtype": str(dtype).replace("torch.", "") if amp else "float32",
            "_step": step}


def attention_share(step, device: str = "cuda") -> float:
    """Share of one profiled step in deformable attention: device time on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    events = prof.key_averages()
    if device == "cuda":
        total = sum(getattr(e, "self_device_time_total", 0.0) for e in events)
        attention = sum(getattr(e, "device_time_total", 0.0) for e in events
                        if e.key in ("multi_scale_deformable_attention",
                                     "GridSampler2DBackward0"))
    else:
        total = sum(e.self_cpu_time_total for e in events)
        attention = sum(e.cpu_time_total for e in events
                        if e.key in ("multi_scale_deformable_attention",
                                     "GridSampler2DBackward0"))
    return float(attention / total) if total else float("nan")


def _release(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(budget: Budget, steps: int, device: str = "cuda",
            profiles: tuple[str, ...] = ("colab", "full"),
            amp_modes: tuple[bool, ...] = (False, True)) -> dict:
    """MOQAM at each profile's sizes, AMP off and on; the attention share and the
    MOQAM / moqam_rcnn ratio at the last profile's size with the last AMP mode (on)."""
    out: dict = {"moqam": {}, "notes": []}
    last, last_amp = profiles[-1], amp_modes[-1]
    step_last_amp = None
    for profile in profiles:
        for amp in amp_modes:
            key = f"{profile}_{'amp' if amp else 'fp32'}"
            if budget.left() < 60:
                out["moqam"][key] = {"skipped": "time budget spent"}
                continue
            model, _, (short, long) = build("moqam", profile, device)
            # the size torchvision's transform resizes the panorama to (floor of the scale)
            scale = min(short / min(PANORAMA), long / max(PANORAMA))
            width, height = math.floor(PANORAMA[0] * scale), math.floor(PANORAMA[1] * scale)
            images, targets = batch_at(PANORAMA[0], PANORAMA[1], device=device)
            try:
                row = train_and_infer(model, images, targets, amp, steps, device)
                row["input"] = f"{width}x{height} (resized from {PANORAMA[0]}x{PANORAMA[1]})"
                if profile == last and amp == last_amp:
                    step_last_amp = row["_step"]
                row.pop("_step")
            except torch.cuda.OutOfMemoryError as err:
                row = {"out_of_memory": str(err).splitlines()[0][:300]}
            out["moqam"][key] = row
            if not (profile == last and amp == last_amp):
                del model
                _release(device)
    tag = f"{last}_{'amp' if last_amp else 'fp32'}"
    if step_last_amp is not None and budget.left() > 40:
        out["deformable_attention_share"] = {
            f"{tag}_train_step": attention_share(step_last_amp, device)}
    else:
        out["notes"].append("deformable attention share skipped (time or memory)")
    step_last_amp = None
    _release(device)
    moqam_last = out["moqam"].get(tag, {})
    if "train_step_s" in moqam_last and budget.left() > 40:
        model, _, _ = build("moqam_rcnn", last, device)
        images, targets = batch_at(*PANORAMA, device=device)
        try:
            rcnn = train_and_infer(model, images, targets, last_amp, steps, device)
            rcnn.pop("_step")
            out[f"moqam_rcnn_{tag}"] = rcnn
            out["moqam_vs_moqam_rcnn"] = {
                "size": last, "amp": last_amp,
                "train_step_ratio": moqam_last["train_step_s"] / rcnn["train_step_s"],
                "inference_ratio": rcnn["inference_images_per_s"]
                / moqam_last["inference_images_per_s"],
            }
        except torch.cuda.OutOfMemoryError as err:
            out[f"moqam_rcnn_{tag}"] = {"out_of_memory": str(err).splitlines()[0][:300]}
    else:
        out["notes"].append("MOQAM / moqam_rcnn ratio skipped (time or memory)")
    out["epoch_estimate"] = {
        key: {"hours_per_epoch_per_10k_images": EPOCH_IMAGES / row["train_images_per_s"] / 3600}
        for key, row in out["moqam"].items() if "train_images_per_s" in row
    }
    return out


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "cuda"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for the whole check (default 450)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--skip-tests", action="store_true", help="only the measurements")
    parser.add_argument("--out", default=None,
                        help="results file (default benchmarks/results/gpu_<device>.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        return refuse_without_cuda()
    budget = Budget(args.budget)
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    record: dict = {"provenance": provenance(),
                    "gpu": {"name": name, "memory_GiB": props.total_memory / 1024 ** 3,
                            "capability": f"{props.major}.{props.minor}",
                            "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}}
    print(f"gpu_check on {name} ({record['gpu']['memory_GiB']:.1f} GiB), torch "
          f"{torch.__version__}, budget {args.budget:.0f} s")
    if not args.skip_tests:
        print("1/2 CUDA tests ...", flush=True)
        record["tests"] = run_cuda_tests(budget)
        t = record["tests"]
        print(f"    passed {t.get('passed')}, failed {t.get('failed')}, errors {t.get('error')}, "
              f"skipped {t.get('skipped')} in {t.get('seconds')} s")
    print("2/2 measurements ...", flush=True)
    record.update(measure(budget, args.steps))
    record["seconds_total"] = round(args.budget - budget.left(), 1)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / \
        f"gpu_{device_slug(name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for key, row in record["moqam"].items():
        print(f"    MOQAM {key:<11} " + (
            f"train {row['train_images_per_s']:.2f} img/s, peak {row['peak_memory_GiB']:.2f} GiB, "
            f"inference {row['inference_images_per_s']:.2f} img/s"
            if "train_images_per_s" in row else json.dumps(row)))
    print(f"wrote {out}")
    failed = record.get("tests", {}).get("failed", 0) or record.get("tests", {}).get("error", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
