"""The decoding face of a packed model: prefill, one step at a time, and generate.

    logits = pm.prefill(input_ids, max_new_tokens=16)    # [B, vocab], KV cache with room for 16
    token = pm.greedy_step(logits.argmax(-1))            # [B]: the native engine argmaxes in C
    out = pm.generate(input_ids, 16, do_sample=True, top_k=40, seed=0)

`Decoding` is a mixin: the model supplies `dims` (workbench.llama.LlamaDims), `engine`, a
`_cache` slot, `_forward(cache, ids, positions, all_logits)` and, for the native engine,
`_native_forward(cache, ids, positions, all_logits, next_tokens)`. runtime.PackedModel is the
one such model; generation.py's token streams pick their tokens with the same pick_token.
"""

from __future__ import annotations

import torch

from workbench.llama import KVCache, check_count, check_ids


class Decoding:
    """prefill / decode_step / greedy_step / generate over the model's _forward."""

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask=None,
                max_new_tokens: int = 0) -> torch.Tensor:
        """Start a sequence: run the prompt [B, T] into a fresh KV cache with room for
        max_new_tokens more. Returns the last position's logits [B, vocab]."""
        cache, positions = KVCache.for_prompt(self.dims, input_ids, attention_mask, max_new_tokens)
        logits = self._forward(cache, input_ids, positions, all_logits=False)
        self._cache = cache
        return logits

    @torch.inference_mode()
    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (LongTensor [B] or [B, 1]) after prefill; logits [B, vocab]."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("decode_step needs a prefill first")
        ids = check_ids(tokens.reshape(-1, 1) if isinstance(tokens, torch.Tensor) else tokens,
                        self.dims.vocab)
        if ids.shape[0] != cache.keys.shape[1]:
            raise ValueError(f"expected {cache.keys.shape[1]} tokens (one per row), "
                             f"got {ids.shape[0]}")
        return self._forward(cache, ids, cache.positions[:, None], all_logits=False)

    @torch.inference_mode()
    def greedy_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """decode_step followed by argmax: the next token of each row (LongTensor [B]). The
        native engine takes the argmax inside its C call, so no logits reach Python."""
        if self.engine != "native":
            return self.decode_step(tokens).argmax(-1)
        cache = self._cache
        if cache is None:
            raise RuntimeError("greedy_step needs a prefill first")
        ids = check_ids(tokens.reshape(-1, 1) if isinstance(tokens, torch.Tensor) else tokens,
                        self.dims.vocab)
        B = cache.keys.shape[1]
        if ids.shape[0] != B:
            raise ValueError(f"expected {B} tokens (one per row), got {ids.shape[0]}")
        if cache.length >= cache.capacity:
            raise RuntimeError(f"KV cache full: it holds {cache.capacity} tokens; pass a larger "
                               "max_new_tokens to prefill")
        nxt = torch.empty(B, dtype=torch.long)
        self._native_forward(cache, ids, cache.positions[:, None], False, nxt)
        return nxt

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, eos_token_id=None,
                 pad_token_id: int | None = None, attention_mask=None,
                 seed: int | None = None) -> torch.Tensor:
        """Greedy or sampled continuation: LongTensor [B, T + n], n <= max_new_tokens.

        Prompts of unequal length are left-padded with attention_mask (1 = token, 0 = pad).
        eos_token_id (int or list): a row that emits it is finished and gets pad_token_id
        (default: the first eos id) afterwards; generation stops once every row is finished.
        None: no early stop. seed: a private generator for sampling (default torch's global)."""
        check_count(max_new_tokens)
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        logits = self.prefill(input_ids, attention_mask, max_new_tokens)    # checks the inputs
        B, T = input_ids.shape
        out = torch.empty(B, T + max_new_tokens, dtype=torch.long)
        out[:, :T] = input_ids
        eos_t, finished = torch.tensor(eos, dtype=torch.long), torch.zeros(B, dtype=torch.bool)
        token = pick_token(logits, do_sample, temperature, top_k, gen)                    # [B]
        for i in range(max_new_tokens):
            if eos:
                token = token.masked_fill(finished, pad)
                finished |= torch.isin(token, eos_t)
            out[:, T + i] = token
            if eos and bool(finished.all()):
                return out[:, :T + i + 1]
            if i + 1 < max_new_tokens:
                token = (self.greedy_step(token) if not do_sample else
                         pick_token(self.decode_step(token), do_sample, temperature, top_k, gen))
        return out


def pick_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from logits [B, vocab]: argmax, or a sample at temperature among the
    top_k most likely (in float32, so bf16 logits sample alike). generate and
    workbench.generation's streams both pick with this."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]     # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
