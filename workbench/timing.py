"""The speed measurement protocol: a `System` (prefill + decode_step) and how its tokens/s are
timed — a warm-up, then the median of repeats, prefill and decode apart. workbench.bench
builds the systems and runs the tables; workbench.peers builds the llama.cpp ones.
"""

from __future__ import annotations

import os
import statistics
import time

import torch


class System:
    """prefill(ids [B, T]) -> logits [B, V]; decode_step(tokens [B]) -> logits [B, V];
    weight_bytes: what it holds; streamed_bytes: what one decode step reads.
    greedy_step(tokens [B]) -> next tokens [B], when the system picks the argmax itself (our
    engine does it inside its C call, llama.cpp's llama-bench in C++); otherwise the
    protocol takes torch's argmax of decode_step's logits, as Hugging Face generate does."""

    def __init__(self, prefill, decode_step, weight_bytes: int = 0, greedy_step=None,
                 streamed_bytes: int | None = None):
        self.prefill, self.decode_step, self.weight_bytes = prefill, decode_step, weight_bytes
        # weight bytes one decode step reads (every matrix it multiplies, not the embedding
        # table it only indexes): the bytes roofline of batch-1 decoding
        self.streamed_bytes = weight_bytes if streamed_bytes is None else streamed_bytes
        self.greedy_step = greedy_step or (lambda tokens: decode_step(tokens).argmax(-1))


def tokens_per_sec(system: System, vocab: int, batch: int = 1, prompt_len: int = 128,
                   new_tokens: int = 128, warmup: int = 1, repeats: int = 3,
                   seed: int = 0) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s), medians over repeats after warm-up runs. The
    prompt is random token ids; decoding is greedy."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    pre, dec = [], []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        tokens = system.prefill(ids).argmax(-1)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            tokens = system.greedy_step(tokens)
        t2 = time.perf_counter()
        if i >= warmup:
            pre.append(t1 - t0)
            dec.append(t2 - t1)
    return batch * prompt_len / statistics.median(pre), batch * new_tokens / statistics.median(dec)


def resident_mb() -> float:
    """This process's resident set now (MiB), from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> float:
    """GB/s of torch.sum streaming a float32 buffer much larger than the cache (the read probe
    every roofline fraction is measured against, in the same run)."""
    torch.set_num_threads(threads)
    buf = torch.ones(mib << 18)                       # mib MiB of float32
    buf.sum()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        samples.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(samples) / 1e9
