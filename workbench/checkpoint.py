"""Checkpoints of a training run (workbench.training): one directory per saved step,

    <checkpoint_dir>/step-NNNNNN/model.safetensors   model weights (tied embeddings stored once)
    <checkpoint_dir>/step-NNNNNN/trainer.pt          torch.save of the loop state: step, losses,
                                                     optimizer, scheduler, data order, RNG, config
    <checkpoint_dir>/latest.json                     {"dir": "step-NNNNNN", "step": N}

A step directory is written under a temporary name and renamed into place; then latest.json is
replaced atomically (workbench.cache.write_json_atomic), and only then are older steps removed.
A crash at any moment leaves latest.json pointing at a whole checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from workbench.cache import write_json_atomic

RESUME_KEYS = ("resume", "checkpoint_dir", "checkpoint_every")   # may change between calls


def latest_checkpoint(root: str | Path) -> Path | None:
    pointer = Path(root) / "latest.json"
    if not pointer.is_file():
        return None
    return Path(root) / json.loads(pointer.read_text())["dir"]


def save_checkpoint(root: str | Path, model: nn.Module, state: dict) -> Path:
    """Write step-NNNNNN/ (weights + trainer state) atomically, point latest.json at it, and
    drop older checkpoints: disk holds one run state at a time."""
    from safetensors.torch import save_model

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_model(model, str(tmp / "model.safetensors"))   # handles tied embeddings
        torch.save(state, tmp / "trainer.pt")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(root / "latest.json", {"dir": final.name, "step": state["step"]})
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load the weights into model (strict) and return the trainer state."""
    from safetensors.torch import load_model

    device = next(model.parameters()).device
    load_model(model, path / "model.safetensors", device=str(device))
    return torch.load(path / "trainer.pt", weights_only=True)


def check_resumable(state: dict, config: dict, data_fp: str, zeros: dict[str, int]) -> None:
    changed = [k for k in config if k not in RESUME_KEYS and state["config"].get(k) != config[k]]
    if changed:
        raise ValueError(f"cannot resume: the checkpoint's run had different {', '.join(changed)}")
    if state["data_fingerprint"] != data_fp:
        raise ValueError("cannot resume: the training data differ from the checkpoint's run")
    if state["zeros"] != zeros:
        raise ValueError("cannot resume: the model's sparsity pattern differs from the "
                         "checkpoint's run (pass the same pruned student)")
