"""Shared helpers for the benchmark scripts: provenance of a result and JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def provenance() -> dict:
    """Command, commit, hardware and versions: every results file says what produced it."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "commit": commit + ("-dirty" if dirty else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # The vector instructions the kernels use: runs of one setting on CPUs of other
        # generations take other floating-point paths (benchmarks/bench_cpu_determinism.py).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_pins": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                        if k in os.environ},
        "python": platform.python_version(),
        "torch": torch.__version__,
        # Other work on the machine skews absolute times; ratios measured in one run less so.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(path: str | os.PathLike | None, results: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": provenance(), **results}, indent=2) + "\n")
    print(f"wrote {path}")
