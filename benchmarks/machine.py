"""What a benchmark's numbers must be read against: the CPU, the GPU, torch and the commit (imported by the
scripts beside it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the VM's CPU changes between sessions)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def commit() -> str:
    """`git describe --always --dirty` of this checkout (a device machine's copy may lag: pass COMMIT there)."""
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def describe() -> str:
    """One line: CPU model and cores, GPU, torch version, commit."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()} ({os.cpu_count()} cores) | {gpu} | torch {torch.__version__} | commit {commit()}"
