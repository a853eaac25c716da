"""Where a result came from, stored beside every cached record and exported figure: the code
version (package and git commit, dirty or not), the libraries, the CPU and its kernel flags,
the thread count and the time."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from workbench.cpuinfo import cpu_model, kernel_flags


def workbench_version() -> str:
    try:
        return importlib.metadata.version("workbench")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_LIBRARIES = (
    "torch", "transformers", "numpy", "datasets", "tokenizers",
    "safetensors", "accelerate", "lm-eval", "pandas",
)


def _library_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def provenance() -> dict:
    """Where a result came from: code version, libraries, CPU (workbench.cpuinfo: its model and
    the flags among KERNEL_FLAGS), threads and time (UTC)."""
    commit = _git("rev-parse", "--short", "HEAD")
    # --no-optional-locks: a read-only status must not take .git/index.lock from the user.
    status = _git("--no-optional-locks", "status", "--porcelain")
    return {
        "workbench": workbench_version(),
        "git_commit": (commit or "").strip() or None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _library_version(name) for name in _LIBRARIES},
        "cpu": cpu_model(),
        "cpu_flags": kernel_flags(),
        "threads": torch.get_num_threads(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["provenance", "workbench_version"]
