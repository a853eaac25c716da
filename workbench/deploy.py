"""The paper's last steps on one (recovered) model, measured on the model that runs:

    model ──smooth──▶ W8A8 fake quant (compare smoothings by perplexity)
          └─smooth (config.smoothing)──▶ runtime.pack ──▶ PackedModel ──▶ accuracy, perplexity,
                                                                          decode tok/s, size

W8A8 is per-channel INT8 weights and per-token INT8 activations, what the runtime's kernels
compute (runtime.py). The smoothings compared are "none", SmoothQuant (Xiao et al. 2023,
arXiv 2211.10438) and LAE (smoothing.py), on perplexity over `w8a8_windows` pydoc eval windows
of the fake-quant model. The packed model uses `config.smoothing`, fixed in the config rather
than picked by those numbers, so no test-set score chooses the model that is then scored.
Accuracy and perplexity go through evaluate.* on the PackedModel itself (packed_lm.py) and are
cached by sweep.evaluate_cached under the packed model's fingerprint (a hash of the source's
fingerprint and the pack settings: known before packing, so a cached point is not re-packed).
Decode speed is `bench.tokens_per_sec` on the runtime loop, batch 1, against the dense FP32
reference model on the same loop (PackedModel.from_fp32) measured in the same call: the ratio
is a same-run ratio. Size is PackedModel.nbytes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from workbench import cache
from workbench.configs import Serializable, check_number
from workbench.points import Lazy
from workbench.sweep import SmoothingChoice, evaluate_cached

PACK_SETTINGS = {"weights": "per_channel", "activations": "per_token", "lm_head": "int8",
                 "format": "auto"}


@dataclass(frozen=True)
class DeployConfig(Serializable):
    """smoothings: labels compared on W8A8 perplexity ("none", "smoothquant:0.5", "lae", ...);
    smoothing: the one the packed model gets. profile_samples: calibration windows whose
    activation statistics set the smoothing scales. speed_*: the decode measurement (random
    prompt of speed_prompt tokens, speed_new_tokens greedy steps, median of speed_repeats
    after one warm-up, batch 1)."""
    smoothings: tuple[str, ...] = ("none", "smoothquant:0.5", "lae")
    smoothing: str = "smoothquant:0.5"
    profile_samples: int = 8
    w8a8_windows: int = 4
    speed_prompt: int = 32
    speed_new_tokens: int = 32
    speed_repeats: int = 3

    def __post_init__(self):
        object.__setattr__(self, "smoothings", tuple(self.smoothings))
        for label in (*self.smoothings, self.smoothing):
            try:
                SmoothingChoice(label).config()
            except ValueError as err:
                raise ValueError(f"smoothing label {label!r}: {err}") from None
        for name in ("profile_samples", "w8a8_windows", "speed_prompt", "speed_new_tokens",
                     "speed_repeats"):
            check_number(name, getattr(self, name), 1, strict=False, integer=True)


def smoothed_copy(model: nn.Module, label: str, calib: torch.Tensor) -> nn.Module:
    """A copy of model with the smoothing `label` folded in (calib: profile windows)."""
    from workbench.smoothing import smooth_

    out = copy.deepcopy(model)
    choice = SmoothingChoice(label).config()
    if choice is not None:
        smooth_(out, calib, choice)                 # profiles the copy: the same weights
    return out.eval()


def w8a8_comparison(store: cache.ResultCache, model: nn.Module, tokenizer, model_fp: str,
                    calib: torch.Tensor, corpus, config: DeployConfig, seqlen: int) -> list[dict]:
    """[{smoothing, ppl}] of the W8A8 fake-quant model for each smoothing (cached per point)."""
    from workbench.evaluate import perplexity
    from workbench.quant import QuantConfig, quantize_

    calib = calib[: config.profile_samples]
    rows = []
    for label in config.smoothings:
        spec = {"step": "w8a8-ppl", "smoothing": label, "activations": "per_token",
                "seqlen": seqlen, "max_windows": config.w8a8_windows,
                "profile_samples": len(calib)}

        def compute(label=label, spec=spec) -> dict:
            m = smoothed_copy(model, label, calib)
            quantize_(m, config=QuantConfig(weights="per_channel", activations="per_token"))
            r = perplexity(m, tokenizer, corpus, seqlen=seqlen, max_windows=config.w8a8_windows)
            return {**spec, "perplexity": r.perplexity, "n_tokens": r.n_tokens}

        record = store.get_or_compute(spec, compute, model_fp=model_fp,
                                      data_fp=cache.fingerprint_data([cache.fingerprint_data(calib),
                                                                      corpus.fingerprint]))
        rows.append({"smoothing": label, "ppl": record["perplexity"]})
    return rows


def packed_fingerprint(model_fp: str, config: DeployConfig, calib: torch.Tensor) -> str:
    return cache.hash_json({"packed_from": model_fp, "smoothing": config.smoothing,
                            "profile": cache.fingerprint_data(calib[: config.profile_samples]),
                            "pack": PACK_SETTINGS})


def deploy(store: cache.ResultCache, model: nn.Module, tokenizer, model_fp: str,
           calib: torch.Tensor, tasks: dict, reference: nn.Module, reference_fp: str,
           config: DeployConfig) -> tuple[dict, bool]:
    """({"packed_fingerprint", "scores": {task: evaluation record}, "decode_tok_s",
    "fp32_decode_tok_s", "speedup", "size_mb", "fp32_size_mb", "threads"}, all cached) for the
    packed, smoothed W8A8 model; it is packed only when a point is not cached. tasks: {task: settings}
    as sweep.evaluate_cached takes them. reference: the dense FP32 model of the speed ratio."""
    from workbench import bench
    from workbench.runtime import PackedModel, pack

    packed_fp = packed_fingerprint(model_fp, config, calib)

    def build():
        smoothed = smoothed_copy(model, config.smoothing, calib[: config.profile_samples])
        return pack(smoothed, lm_head=PACK_SETTINGS["lm_head"], format=PACK_SETTINGS["format"])

    packed = Lazy(build)
    scores, all_cached = {}, True
    for task, settings in tasks.items():
        record, cached = evaluate_cached(store, packed, tokenizer, packed_fp, task, settings)
        scores[task], all_cached = record, all_cached and cached

    def measure() -> dict:
        vocab = int(reference.config.vocab_size)
        kw = dict(batch=1, prompt_len=config.speed_prompt, new_tokens=config.speed_new_tokens,
                  warmup=1, repeats=config.speed_repeats)
        dense = PackedModel.from_fp32(reference)
        _, fp32 = bench.tokens_per_sec(bench.runtime_system(dense, config.speed_new_tokens), vocab, **kw)
        m = packed.get()
        _, tok_s = bench.tokens_per_sec(bench.runtime_system(m, config.speed_new_tokens), vocab, **kw)
        return {"decode_tok_s": tok_s, "fp32_decode_tok_s": fp32, "speedup": tok_s / fp32,
                "size_mb": m.nbytes / 1e6, "fp32_size_mb": dense.nbytes / 1e6,
                "threads": torch.get_num_threads()}

    spec = {"step": "decode-speed", "prompt": config.speed_prompt,
            "new_tokens": config.speed_new_tokens, "repeats": config.speed_repeats}
    speed, cached = store.fetch(spec, measure, model_fp=packed_fp, data_fp=reference_fp)
    return {"packed_fingerprint": packed_fp, "scores": scores, **speed}, all_cached and cached
