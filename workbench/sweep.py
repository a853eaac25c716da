"""Grids of compression configs on one model -> cached records -> a pandas DataFrame.

A pruned model is expensive (SparseGPT on the embedded model takes minutes), so its weights are
cached as safetensors under $WORKBENCH_CACHE/models/pruned/, keyed by the prune config, the base
model's fingerprint and the calibration data's fingerprint. Every evaluated grid point is a
ResultCache record; an interrupted sweep resumes without recomputing finished points.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import torch

from workbench import cache
from workbench.models import load_model
from workbench.pruning import PruneConfig, prune_


def _pruned_path(key: str):
    return cache.cache_root() / "models" / "pruned" / f"{key}.safetensors"


def pruned_model(model_name: str, config: PruneConfig | None, calib: torch.Tensor,
                 store: cache.ResultCache | None = None, base=None):
    """(model, tokenizer, summary) pruned by `config` (None or sparsity 0: the dense model).

    The pruned weights are cached; summary holds the prune report without masks. base: an
    already loaded (model, tokenizer) of `model_name` to copy instead of loading it again.
    """
    from safetensors.torch import load, save

    store = store or cache.ResultCache()
    model, tok = (copy.deepcopy(base[0]), base[1]) if base else load_model(model_name)
    if config is None or (config.structure == "unstructured" and config.sparsity == 0):
        return model, tok, {"sparsity": 0.0, "seconds": 0.0, "config": None}
    base_fp = cache.fingerprint_model(model)
    key = store.key({"step": "prune-weights", "prune": config.to_dict()}, model_fp=base_fp,
                    data_fp=cache.fingerprint_data(calib))
    path = _pruned_path(key)
    summary = store.get(key)
    if summary is not None and path.is_file():
        try:
            state = load(path.read_bytes())
            missing, unexpected = model.load_state_dict(state, strict=False)
            if not unexpected and all("lm_head" in m for m in missing):
                return model, tok, summary
        except Exception:   # a damaged weights file is recomputed, never trusted
            pass
        model, tok = (copy.deepcopy(base[0]), base[1]) if base else load_model(model_name)
    report = prune_(model, calib, config)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    buf = io.BytesIO(save(state))
    cache.write_bytes_atomic(path, buf.getvalue())
    summary = report.to_dict()
    store.put(key, summary)
    return model, tok, summary


@dataclass(frozen=True)
class SmoothingChoice:
    """A row of the smoothing axis: "none", "smoothquant:0.5", "lae" ..."""
    label: str

    def config(self):
        from workbench.smoothing import SmoothConfig

        if self.label == "none":
            return None
        method, _, alpha = self.label.partition(":")
        return SmoothConfig(method=method, alpha=float(alpha) if alpha else 0.5)


def w8a8_table(model_name: str, calib: torch.Tensor, corpus, sparsities=(0.0, 0.5),
               smoothings=("none", "smoothquant:0.5", "smoothquant:0.8", "lae"),
               activations=("per_token", "per_tensor"), prune_method: str = "sparsegpt",
               seqlen: int = 512, max_windows: int | None = 16, profile_samples: int = 32,
               store: cache.ResultCache | None = None):
    """Perplexity of W8A8 (per-channel weights) for smoothing x activation granularity x sparsity,
    with an FP32 row per sparsity. Returns a DataFrame; every point is cached."""
    import pandas as pd

    from workbench.evaluate import perplexity
    from workbench.profiling import profile_activations
    from workbench.quant import QuantConfig, quantize_
    from workbench.smoothing import smooth_

    store = store or cache.ResultCache()
    base = load_model(model_name)
    base_fp = cache.fingerprint_model(base[0])
    data_fp = cache.fingerprint_data([cache.fingerprint_data(calib), corpus.fingerprint])
    rows = []
    for sparsity in sparsities:
        prune = PruneConfig(method=prune_method, sparsity=sparsity) if sparsity else None
        model = profile = None
        for smoothing in ("fp32", *smoothings):
            for act in (("-",) if smoothing == "fp32" else activations):
                point = {"step": "w8a8-ppl", "prune": prune.to_dict() if prune else None,
                         "smoothing": smoothing, "activations": act, "seqlen": seqlen,
                         "max_windows": max_windows, "profile_samples": profile_samples}
                key = store.key(point, model_fp=base_fp, data_fp=data_fp)
                record = store.get(key)
                if record is None:
                    if model is None:
                        model, tok, _ = pruned_model(model_name, prune, calib, store, base=base)
                    m = copy.deepcopy(model)
                    if smoothing != "fp32":
                        choice = SmoothingChoice(smoothing).config()
                        if choice is not None:
                            if profile is None:
                                profile = profile_activations(model, calib[:profile_samples])
                            smooth_(m, profile, choice)
                        static = act == "per_tensor_static"
                        quantize_(m, QuantConfig(activations=act), calib=calib[:profile_samples] if static else None)
                    res = perplexity(m, tok, corpus, seqlen=seqlen, max_windows=max_windows)
                    record = {**point, "perplexity": res.perplexity, "n_tokens": res.n_tokens}
                    store.put(key, record)
                rows.append({"sparsity": sparsity, "smoothing": smoothing, "activations": act,
                             "perplexity": record["perplexity"]})
    return pd.DataFrame(rows)
