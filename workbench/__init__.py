"""Sparse + INT8 LLM inference workbench: every step is a function a notebook can call.

    import workbench
    model, tokenizer = workbench.load_model()            # embedded SmolLM2-135M, offline
    from workbench import data, evaluate
    ppl = evaluate.perplexity(model, tokenizer, data.perplexity_corpus("pydoc", "eval"))
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("workbench")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

# Public entry points, imported on first use so `import workbench` stays cheap.
_LAZY = {
    "load_model": "workbench.models",
    "tiny_llama": "workbench.models",
    "profile_activations": "workbench.profiling",
    "rank_outlier_layers": "workbench.outliers",
    "QuantPlan": "workbench.outliers",
    "prune_": "workbench.pruning",
    "PruneConfig": "workbench.pruning",
    "smooth_": "workbench.smoothing",
    "SmoothConfig": "workbench.smoothing",
    "quantize_": "workbench.quant",
    "QuantConfig": "workbench.quant",
    "finetune_": "workbench.finetune",
    "SFTConfig": "workbench.finetune",
    "distill_": "workbench.distill",
    "DistillConfig": "workbench.distill",
    "run_recovery": "workbench.recovery",
    "RecoveryConfig": "workbench.recovery",
    "save_figure": "workbench.plots",
    "save_table": "workbench.tables",
    "pack": "workbench.runtime",
    "PackedModel": "workbench.runtime",
}


_SUBMODULES = {"arch", "baselines", "cache", "cli", "data", "evaluate", "export", "harness", "hub",
               "kernels", "models", "outliers", "plots", "profiling", "pruning", "quant",
               "smoothing", "sparsegpt", "sweep", "tables", "training", "checkpoint",
               "finetune", "distill", "recovery", "packing", "llama", "runtime"}


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f"workbench.{name}")
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
