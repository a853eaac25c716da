"""A pruned (recovered, smoothed) model as a plain Hugging Face checkpoint.

Dense-with-zeros safetensors in the model's dtype, its config, its tokenizer and the recipe
(recipe.json: the chain of configs that produced it, workbench.recipe). Plain
`transformers.AutoModelForCausalLM.from_pretrained(dir)` loads it, no trust_remote_code, to the
same logits: nothing in it is ours but the extra recipe file. W8A8 fake-quantized models are
refused: transformers would run their linears unquantized, so the logits would not be the
same; save those with `to_compressed_tensors` (INT8 weights) or as a packed model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from workbench import cache
from workbench.arch import layer_linears
from workbench.recipe import FILE as RECIPE_FILE
from workbench.recipe import recipe_of


def _check_plain(model) -> None:
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError(f"to_hf takes a Hugging Face model, got {type(model).__name__} (a "
                        "PackedModel is saved with .save(dir))")
    odd = [n for n, m in layer_linears(model).items() if not isinstance(m, nn.Linear)]
    if odd:
        raise ValueError(f"{len(odd)} decoder linears are not nn.Linear (e.g. {odd[0]}: "
                         f"{type(layer_linears(model)[odd[0]]).__name__}): transformers would "
                         "not run them as they are; write to_compressed_tensors or a packed model")


def to_hf(model, tokenizer, path: str | os.PathLike, recipe: list[dict] | None = None) -> Path:
    """Write model (+ tokenizer, when given) as a Hugging Face checkpoint directory at path,
    replacing one there; returns the path. recipe: the steps to record (default: the ones
    recorded on the model); written with the provenance of this run to recipe.json."""
    _check_plain(model)
    steps = recipe_of(model) if recipe is None else list(recipe)
    path = Path(path)
    with cache.atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        if config.pop("quantization_config", None) is not None:
            # a tag left by a dequantized source (GGUF, compressed-tensors): nothing in these
            # weights is quantized, and transformers would look for that quantizer
            cache.write_json_atomic(config_file, config)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_recipe(tmp, steps)
    return path


def write_recipe(directory: Path, steps: list[dict]) -> Path:
    """recipe.json in a checkpoint directory: the steps and the provenance of this run."""
    return cache.write_json_atomic(directory / RECIPE_FILE, {"steps": cache.to_jsonable(steps),
                                                             "provenance": cache.provenance()})


__all__ = ["to_hf", "write_recipe"]
