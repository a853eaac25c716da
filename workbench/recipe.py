"""The chain of configs that produced a model, carried on the model itself.

Each in-place step (prune_, smooth_, quantize_, the recovery runs) appends
{"step": name, "config": its config as JSON} to the model's recipe; copies of the model
(copy.deepcopy) carry it along, `runtime.pack` hands it to the packed model, and every saved
format writes it (recipe.json beside a Hugging Face or compressed-tensors checkpoint, the
"recipe" of a packed directory's packed.json), so a saved model says how it was made.
The recipe lives on the module, not in model.config: the config is part of the cache
fingerprint of a model (cache.fingerprint_model), and recording a step must not change it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from torch import nn

ATTR = "workbench_recipe"
FILE = "recipe.json"


def recipe_of(model: nn.Module) -> list[dict]:
    """The steps recorded on model, oldest first (a copy: editing it changes nothing)."""
    return [dict(step) for step in getattr(model, ATTR, [])]


def record(model: nn.Module, step: str, config) -> None:
    """Append one step (config: a JSON-serializable dict, a config dataclass or None) to
    model's recipe."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    try:
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError) as e:
        raise TypeError(f"the config of step {step!r} is not JSON-serializable ({e})") from None
    entry = {"step": str(step), "config": config}
    object.__setattr__(model, ATTR, recipe_of(model) + [entry])


def set_recipe(model: nn.Module, steps: list[dict]) -> None:
    """Replace model's recipe (a loaded checkpoint's recipe.json)."""
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "step" in s for s in steps):
        raise ValueError(f"a recipe is a list of {{'step': ..., 'config': ...}} dicts, got {steps!r}")
    object.__setattr__(model, ATTR, [dict(s) for s in steps])


def read_recipe(path: str | os.PathLike) -> list[dict] | None:
    """The steps of a checkpoint directory's recipe.json, or None when it has none."""
    file = Path(path) / FILE
    if not file.is_file():
        return None
    try:
        steps = json.loads(file.read_text())["steps"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: not a recipe ({e})") from None
    return steps


def attach_recipe(model: nn.Module, path: str | os.PathLike) -> None:
    """Put a loaded checkpoint's recipe back on its model (no-op without recipe.json)."""
    steps = read_recipe(path)
    if steps is not None:
        set_recipe(model, steps)


__all__ = ["ATTR", "FILE", "attach_recipe", "read_recipe", "recipe_of", "record", "set_recipe"]
