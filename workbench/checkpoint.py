"""Checkpoints of a training run (workbench.training): one directory per saved step,

    <checkpoint_dir>/step-NNNNNN/model.safetensors   model weights (tied embeddings stored once)
    <checkpoint_dir>/step-NNNNNN/trainer.pt          torch.save of the loop state: step, losses,
                                                     optimizer, scheduler, data order, RNG, config
    <checkpoint_dir>/latest.json                     {"dir": "step-NNNNNN", "step": N}
    <checkpoint_dir>/best-NNNNNN.safetensors         weights at the best dev evaluation so far
                                                     (early stopping), named in trainer.pt

A step directory is written under a temporary name and renamed into place, then latest.json is
replaced, both atomically (workbench.atomic), and only then are older steps removed.
A crash at any moment leaves latest.json pointing at a whole checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from workbench.atomic import atomic_directory, atomic_path, write_json_atomic

RESUME_KEYS = ("resume", "checkpoint_dir", "checkpoint_every")   # may change between calls


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """safetensors of the model (tied weights stored once), written beside path and renamed
    into it: path holds either its old content or all of the new weights."""
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp))
    return Path(path)


def load_weights(model: nn.Module, path: str | Path) -> bool:
    """Load path into model (strict); False when the file is missing or does not fit the
    model (damaged, another architecture): the caller recomputes, never trusts it."""
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        return False
    try:
        device = next(model.parameters()).device
        load_model(model, str(path), strict=True, device=str(device))
    except Exception:
        return False
    return True


def best_weights_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"best-{step:06d}.safetensors"


def drop_stale_best(root: str | Path, keep: Path | None) -> None:
    """Remove best-*.safetensors files other than keep (the one the latest checkpoint names)."""
    for old in Path(root).glob("best-*.safetensors"):
        if keep is None or old.name != Path(keep).name:
            old.unlink(missing_ok=True)


class BestWeights:
    """The weights of the best dev evaluation of a run (early stopping): a file beside the
    checkpoints when the run has a checkpoint_dir (so a resumed run still has them), else a
    copy in memory."""

    def __init__(self, root: str | Path | None):
        self.root, self.state, self.path = root, None, None

    def save(self, model: nn.Module, step: int) -> None:
        if self.root:
            self.path = save_weights(model, best_weights_path(self.root, step))
        else:       # tied tensors are one tensor: clone each storage once
            seen: dict[int, torch.Tensor] = {}
            for v in model.state_dict().values():
                if v.data_ptr() not in seen:
                    seen[v.data_ptr()] = v.detach().clone()
            self.state = {k: seen[v.data_ptr()] for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.path is not None:
            if not load_weights(model, self.path):
                raise RuntimeError(f"best weights {self.path} could not be loaded")
        elif self.state is not None:
            model.load_state_dict(self.state)


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
    final = root / f"step-{state['step']:06d}"
    with atomic_directory(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))   # handles tied embeddings
        torch.save(state, tmp / "trainer.pt")
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
