"""The Hugging Face face of a packed model, so the same evaluation code scores the model that
runs fast: `evaluate.perplexity`, `evaluate.task_accuracy` and the lm-eval bridge
(`HFLM(pretrained=<this>)`) all see `.logits`, `.generate`, `.config` and `.device`.

    lm = as_causal_lm(runtime.pack(model))        # a PackedModel wrapped; HF models pass through
    lm(input_ids=ids).logits                      # [B, T, V] float32, PackedModel.forward_logits
    lm.generate(input_ids=ids, attention_mask=m, max_new_tokens=32)   # PackedModel.generate

Generation is greedy (the runtime's own batched loop, left padding); sampling is refused.
Stopping criteria (lm-eval's stop strings) are not evaluated during decoding: a row runs on to
its EOS or the token budget, and lm-eval cuts the text at the stop string afterwards. Greedy
decoding is causal, so the text before the stop string, and every score, is the same; only
the decode time grows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import SimpleNamespace

import torch


@dataclass
class LogitsOutput:
    logits: torch.Tensor        # [B, T, V] float32


def is_packed(model) -> bool:
    """A workbench.runtime.PackedModel? (Asked without importing the runtime: when it is not
    imported, nothing can be one.)"""
    runtime = sys.modules.get("workbench.runtime")
    return runtime is not None and isinstance(model, runtime.PackedModel)


def _eos_list(eos) -> list[int]:
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else [int(e) for e in eos]


class PackedCausalLM:
    """A PackedModel behind the parts of the transformers CausalLM interface that evaluation
    uses. eos_token_id: the default stop tokens of generate (int or list; None: none)."""

    training = False

    def __init__(self, packed, eos_token_id=None, pad_token_id: int | None = None):
        if not is_packed(packed):
            raise TypeError(f"expected a workbench.runtime.PackedModel, got {type(packed).__name__}")
        self.packed = packed
        d = packed.dims
        # what lm-eval reads from a config: the architecture (causal) and the context length
        self.config = SimpleNamespace(model_type="llama", max_position_embeddings=d.max_positions,
                                      vocab_size=d.vocab, name_or_path="workbench-packed")
        self.name_or_path = self.config.name_or_path
        self.device = torch.device("cpu")
        self.eos_token_id, self.pad_token_id = _eos_list(eos_token_id), pad_token_id

    # -- nn.Module-like no-ops: the packed model has no training mode and no tied parameters
    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def tie_weights(self) -> None:
        return None

    def __call__(self, input_ids: torch.Tensor, attention_mask=None, **ignored) -> LogitsOutput:
        """Logits of every position; attention_mask: left padding only (or None)."""
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        return LogitsOutput(self.packed.forward_logits(input_ids, attention_mask))

    def generate(self, input_ids: torch.Tensor, attention_mask=None, generation_config=None,
                 max_new_tokens: int | None = None, max_length: int | None = None,
                 eos_token_id=None, pad_token_id: int | None = None, do_sample: bool = False,
                 **ignored) -> torch.Tensor:
        """Greedy continuation [B, T + n] (HF generate's arguments: generation_config, or
        max_new_tokens / max_length, eos_token_id, pad_token_id)."""
        if generation_config is not None:
            max_new_tokens = generation_config.max_new_tokens or max_new_tokens
            max_length = max_length or generation_config.max_length
            eos_token_id = eos_token_id if eos_token_id is not None else generation_config.eos_token_id
            pad_token_id = pad_token_id if pad_token_id is not None else generation_config.pad_token_id
            do_sample = do_sample or bool(generation_config.do_sample)
        if do_sample:
            raise ValueError("the packed model's evaluation face decodes greedily only")
        T = input_ids.shape[1]
        n = max_new_tokens if max_new_tokens is not None else (max_length or T) - T
        n = min(n, self.packed.dims.max_positions - T)
        if n < 1:
            return input_ids.clone()
        eos = _eos_list(eos_token_id) if eos_token_id is not None else self.eos_token_id
        pad = pad_token_id if pad_token_id is not None else self.pad_token_id
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        return self.packed.generate(input_ids, n, eos_token_id=eos or None, pad_token_id=pad,
                                    attention_mask=attention_mask)


def as_causal_lm(model, eos_token_id=None, pad_token_id: int | None = None):
    """model itself for a Hugging Face model (or an existing face), a PackedCausalLM for a
    workbench.runtime.PackedModel."""
    if isinstance(model, PackedCausalLM) or not is_packed(model):
        return model
    return PackedCausalLM(model, eos_token_id, pad_token_id)


def model_device(model) -> torch.device:
    """Where a model's inputs go: its .device, else its first parameter's or buffer's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
