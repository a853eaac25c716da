"""--save of prune and distill: each model of the run as a Hugging Face checkpoint, written
from the cached weights with the recipe that made it (formats.to_hf)."""

from __future__ import annotations

from pathlib import Path


def point_label(config) -> str:
    """Directory name of a prune point: sparsegpt-0.5, wanda-2of4, ria-0.6-owl-dsnot."""
    level = (f"{config.sparsity:g}" if config.structure == "unstructured"
             else config.structure.replace(":", "of"))
    variant = [v for v in (config.layer_sparsity, config.refine) if v not in ("uniform", "none")]
    return "-".join([config.method, level, *variant])


def save_pruned(out: Path, model_name: str, grid, calib, store, base) -> None:
    """Each pruned model of the grid as a Hugging Face checkpoint out/<point label>, from the
    cached pruned weights (sweep.pruned_model: recomputed only if they left the cache)."""
    from workbench import formats
    from workbench.sweep import pruned_model

    for config in grid:
        model, tok, _ = pruned_model(model_name, config, calib, store, base=base)
        formats.to_hf(model, tok, out / point_label(config),
                      recipe=[{"step": "load", "config": {"model": model_name}},
                              {"step": "prune", "config": config.to_dict()}])
        del model
    print(f"saved {len(grid)} pruned models under {out}")


def save_students(out: Path, model_name: str, base, tokenizer, result, config) -> None:
    """Each recovered student as a Hugging Face checkpoint out/<method>-<sparsity>-seed<seed>:
    the base architecture with the student's cached weights (result.weights, keyed
    "<method>@<sparsity>/seed<seed>"), which run_recovery wrote or read; nothing is trained."""
    import copy

    from workbench import formats
    from workbench.checkpoint import load_weights
    from workbench.pruning import PruneConfig

    for label, path in result.weights.items():
        point, seed = label.rsplit("/seed", 1)
        method, sparsity = point.rsplit("@", 1)
        student = copy.deepcopy(base)
        if not load_weights(student, path):
            raise RuntimeError(f"the cached weights of {label} ({path}) do not load")
        steps = [{"step": "load", "config": {"model": model_name}},
                 {"step": "sft", "config": {**config.sft.to_dict(), "seed": int(seed)}},
                 {"step": "prune", "config": PruneConfig(method=config.prune_method,
                                                         sparsity=float(sparsity)).to_dict()},
                 {"step": "distill", "config": {**config.distill_config(method, int(seed)).to_dict(),
                                                "method": method}}]
        formats.to_hf(student, tokenizer, out / f"{method}-{sparsity}-seed{seed}", recipe=steps)
        del student
    print(f"saved {len(result.weights)} students under {out}")
