"""Streaming text generation from a packed model or a Hugging Face causal LM, timed prefill and
decode apart: what `python -m workbench generate` and `chat` run.

    runner, label = generation.prepare(model, runtime="int8")   # runtime.pack(model); or "fp32", "hf"
    ids = generation.prompt_ids(tok, [{"role": "user", "content": "Hi"}])      # [1, T]
    stream = generation.stream_tokens(runner, ids, 64, stop_ids=generation.stop_ids(model, tok))
    for piece in generation.stream_text(tok, stream):
        ...                                        # the new text, as each token arrives
    stream.stats.decode_tok_s

A step is a `timing.System` (bench.runtime_system for the lean runtime, bench.hf_system for
transformers' own forward and KV cache), the same steps `bench decode` times, so the tokens/s
printed here are measured the way the speed tables measure them, on one prompt, without the
warm-up. The first new token is picked from the prefill's logits and counted with the prefill;
each later token is one decode step (prefill and decode timed apart, as workbench.timing does).
Only model calls and the token pick are timed, never the consumer's work between tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from workbench import bench
from workbench.arch import UnsupportedArchitectureError
from workbench.decoding import pick_token
from workbench.kernels import SparseInt8Linear, check_threads
from workbench.llama import check_count
from workbench.packed_lm import is_packed

RUNTIMES = ("int8", "fp32", "hf")


@dataclass
class GenerationStats:
    """Token counts and seconds of one stream. decode_tokens counts decode steps only: the
    first new token comes from the prefill, so decode_tokens = generated - 1 unless the first
    token stopped the stream."""
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    generated: int = 0              # tokens yielded (a stop token is not yielded)
    stopped: str = ""               # "stop" (a stop id came), "length", or "" while running

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def summary(self) -> str:
        """'prefill 12 tokens 85.3 tok/s | decode 63 tokens 41.2 tok/s'"""
        return (f"prefill {self.prefill_tokens} tokens {self.prefill_tok_s:.1f} tok/s | "
                f"decode {self.decode_tokens} tokens {self.decode_tok_s:.1f} tok/s")


# ---------------------------------------------------------------- which loop runs the model

def packed_runtime(packed) -> str:
    """"int8" when a packed model holds any INT8 linear, else "fp32"."""
    return "int8" if any(isinstance(m, SparseInt8Linear) for m in packed.modules()) else "fp32"


def prepare(model, runtime: str | None = None, n_threads: int | None = None):
    """(runner, runtime label): what stream_tokens runs for model.

    A Hugging Face model: runtime "int8" (the default: runtime.pack, dense or sparse INT8
    linears), "fp32" (runtime.PackedModel.from_fp32, the same loop with FP32 linears) or "hf"
    (the model itself, transformers' forward). The first two run the Llama family only; other
    architectures raise ValueError pointing at "hf". A PackedModel runs as it was packed:
    runtime None or its own label (packed_runtime), anything else is a ValueError; n_threads
    is then set on it (kernels.check_threads). n_threads of "hf" is torch's setting."""
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if is_packed(model):
        own = packed_runtime(model)
        if runtime not in (None, own):
            raise ValueError(f"a packed model runs on the workbench runtime as it was packed "
                             f"({own} linears); runtime {runtime!r} needs a Hugging Face, "
                             "GGUF or compressed-tensors model")
        if n_threads is not None:
            model.n_threads = check_threads(n_threads)
        return model, own
    runtime = runtime or "int8"
    if runtime == "hf":
        return model, "hf"
    from workbench import runtime as rt

    try:
        if runtime == "int8":
            return rt.pack(model, n_threads=n_threads), "int8"
        return rt.PackedModel.from_fp32(model, n_threads=n_threads), "fp32"
    except (UnsupportedArchitectureError, NotImplementedError) as err:
        raise ValueError(f"the {runtime} runtime cannot run this model ({err}); "
                         "use runtime 'hf'") from None


def _system(runner, capacity: int) -> bench.System:
    if is_packed(runner):
        return bench.runtime_system(runner, capacity)
    return bench.hf_system(runner)


def _max_positions(runner) -> int | None:
    if is_packed(runner):
        return runner.dims.max_positions
    return getattr(getattr(runner, "config", None), "max_position_embeddings", None)


# ---------------------------------------------------------------- the stream

class TokenStream:
    """Iterate once for the new token ids (ints); stats fill in as they come. See
    stream_tokens."""

    def __init__(self, runner, input_ids: torch.Tensor, max_new_tokens: int, do_sample: bool,
                 temperature: float, top_k: int | None, seed: int | None, stop_ids):
        check_count(max_new_tokens)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError("input_ids must be a tensor [1, T]: one prompt streams at a time")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        T = input_ids.shape[1]
        limit = _max_positions(runner)
        if limit is not None and T >= limit:
            raise ValueError(f"the prompt has {T} tokens; the model holds {limit} positions")
        self.max_new_tokens = max_new_tokens if limit is None else min(max_new_tokens, limit - T)
        self.runner, self.input_ids = runner, input_ids
        self.sample = (do_sample, temperature, top_k)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.stats = GenerationStats(prefill_tokens=T)
        self._iter = self._run()

    def __iter__(self) -> Iterator[int]:
        return self._iter

    def __next__(self) -> int:
        return next(self._iter)

    def _run(self) -> Iterator[int]:
        stats, (do_sample, temperature, top_k) = self.stats, self.sample
        if self.max_new_tokens == 0:
            stats.stopped = "length"
            return
        with torch.inference_mode():
            system = _system(self.runner, self.max_new_tokens)
            t0 = time.perf_counter()
            token = pick_token(system.prefill(self.input_ids), do_sample, temperature, top_k,
                               self.generator)                                          # [1]
            stats.prefill_s = time.perf_counter() - t0
            while True:
                value = int(token)
                if value in self.stop_ids:
                    stats.stopped = "stop"
                    return
                stats.generated += 1
                yield value
                if stats.generated == self.max_new_tokens:
                    stats.stopped = "length"
                    return
                t0 = time.perf_counter()
                token = (system.greedy_step(token) if not do_sample else
                         pick_token(system.decode_step(token), True, temperature, top_k,
                                    self.generator))
                stats.decode_s += time.perf_counter() - t0
                stats.decode_tokens += 1


def stream_tokens(model, input_ids: torch.Tensor, max_new_tokens: int, do_sample: bool = False,
                  temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
                  stop_ids: Iterable[int] = ()) -> TokenStream:
    """The continuation of input_ids [1, T], one token id at a time: greedy, or sampled at
    temperature among the top_k most likely (seed: a private generator, else torch's global).
    model: a PackedModel (its own loop) or a Hugging Face causal LM (its forward and KV
    cache); prepare() picks one. Stops after max_new_tokens (fewer if the model's positions run
    out) or at a token of stop_ids, which is not yielded. The returned TokenStream's .stats
    (GenerationStats) hold the prefill and decode timings."""
    return TokenStream(model, input_ids, max_new_tokens, do_sample, temperature, top_k, seed,
                       stop_ids)


# ---------------------------------------------------------------- text in, text out

def stop_ids(model, tokenizer) -> tuple[int, ...]:
    """The tokens that end a reply: the tokenizer's EOS and the model's generation config's
    (a PackedModel has none of its own)."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids += eos if isinstance(eos, (list, tuple)) else [eos]
    return tuple(sorted({int(i) for i in ids if i is not None}))


def prompt_ids(tokenizer, prompt, chat_template: bool = True) -> torch.Tensor:
    """Token ids [1, T] of a prompt: a string, or chat messages [{"role", "content"}, ...].
    chat_template: through tokenizer.apply_chat_template with the assistant's turn opened
    (a string becomes one user message); else the string as plain text."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; pass chat_template=False")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"]
    if not isinstance(prompt, str):
        raise TypeError("chat messages need chat_template=True")
    return tokenizer(prompt, return_tensors="pt").input_ids


def stream_text(tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """The text of a token stream, piece by piece: after each token, what decoding everything
    so far adds. A piece that ends inside a multi-byte character (decoded as U+FFFD) waits for
    the tokens that complete it. Special tokens are left out."""
    ids, shown = [], ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue
        if text.startswith(shown):
            yield text[len(shown):]
        shown = text
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if len(text) > len(shown) and text.startswith(shown):
        yield text[len(shown):]             # a stream cut inside a character: show what came


__all__ = ["RUNTIMES", "GenerationStats", "TokenStream", "packed_runtime", "pick_token",
           "prepare", "prompt_ids", "stop_ids", "stream_text", "stream_tokens"]
