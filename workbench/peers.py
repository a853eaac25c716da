"""llama.cpp as a speed peer: GGUF files written from our FP32 weights, and a `timing.System`
that decodes them through llama-cpp-python.

The peer runs the same weights as every other system: `gguf_for` writes the FP32 Hugging Face
model (the embedded one is itself dequantized from a Q4_1 GGUF, see workbench.models) into a
llama-architecture GGUF with workbench.formats.gguf (its docstring gives the layout: RoPE row
permutation, tied embeddings, `--pure` quantization), so llama.cpp's speed is compared on the
same model, not on a separately downloaded conversion. `export_gguf`, `rope_permute` and
`QTYPES` are formats.gguf's, re-exported here.

Two ways to run it, both optional (`make peers` builds them):
  * `llamacpp_system`: llama-cpp-python as a `timing.System`, timed by our own protocol;
  * `llama_bench`: llama.cpp's own `llama-bench` binary, the number llama.cpp users quote
    (pp128, then tg128 at a depth of 128 tokens), built from the llama.cpp vendored in the
    pinned llama-cpp-python sdist.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from workbench.formats.gguf import EXPORT_VERSION
from workbench.formats.gguf import QTYPES as QTYPES
from workbench.formats.gguf import export_gguf as export_gguf
from workbench.formats.gguf import rope_permute as rope_permute
from workbench.timing import System


def gguf_for(model_name: str = "smollm2-135m", qtype: str = "F32") -> Path:
    """The embedded model as a GGUF file of qtype, written once under
    $WORKBENCH_CACHE/gguf/ from `load_model(model_name)` and reused after."""
    from workbench.cache import cache_root
    from workbench.models import EMBEDDED, embedded_gguf_path, load_model

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")
    if model_name not in EMBEDDED:
        raise ValueError(f"gguf_for takes an embedded model ({', '.join(EMBEDDED)}); "
                         "export other models with formats.to_gguf")
    path = cache_root() / "gguf" / f"{model_name}-{qtype}-v{EXPORT_VERSION}.gguf"
    if not path.is_file():
        model, _ = load_model(model_name)
        export_gguf(model, path, qtype, tokenizer_gguf=embedded_gguf_path(model_name))
    return path


# ---------------------------------------------------------------- the llama.cpp system

def llamacpp_available() -> bool:
    """True when llama-cpp-python imports (its shared library loads)."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def _import_llama_cpp():
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as e:
        raise ImportError(f"the llama.cpp peer needs llama-cpp-python: run `make peers` ({e})") from e
    return llama_cpp


def llamacpp_system(gguf_path: str | os.PathLike, n_threads: int, n_ctx: int = 512):
    """A `timing.System` decoding a GGUF file with llama.cpp, batch 1 only.

    prefill(ids [1, T]) clears the KV cache and evaluates the prompt as one batch (n_batch =
    n_ubatch = n_ctx, so T <= n_ctx is one graph); decode_step(tokens [1]) evaluates one token.
    Both return the last position's logits [1, V] as FP32. llama.cpp's own defaults otherwise:
    F16 KV cache, no flash attention. n_ctx bounds prompt + decoded tokens.

    With Q8_0/Q4_0 weights ggml also rounds the activations to Q8_0 blocks before each dot
    product: on the embedded model (large activation outliers) the logits then differ from HF
    on the same dequantized weights by up to ~1 (Q8_0), against 0.02 for the F32 file.
    """
    llama_cpp = _import_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> torch.Tensor:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        # copy: llama.cpp reuses the buffer on the next eval
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())[None]

    def prefill(ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError("llama.cpp peer runs batch 1 only")
        if ids.shape[1] > n_ctx:
            raise ValueError(f"prompt of {ids.shape[1]} tokens exceeds n_ctx={n_ctx}")
        llm.reset()                                     # next eval drops the old KV entries
        llm.eval(ids[0].tolist())
        return last_logits()

    def decode_step(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.numel() != 1:
            raise ValueError("llama.cpp peer runs batch 1 only")
        llm.eval([int(tokens.reshape(-1)[0])])
        return last_logits()

    system = System(prefill, decode_step, llama_cpp.llama_model_size(llm.model))
    # free llama.cpp's model with the system, or at exit before the interpreter tears down the
    # modules Llama.__del__ needs (it raises TypeError then)
    weakref.finalize(system, llm.close)
    return system


# ---------------------------------------------------------------- llama-bench

LLAMA_BENCH_ENV = "WORKBENCH_LLAMA_BENCH"


def llama_bench_path() -> Path | None:
    """$WORKBENCH_LLAMA_BENCH, else the binary `make peers` builds, when it exists."""
    env = os.environ.get(LLAMA_BENCH_ENV)
    path = Path(env) if env else (Path(__file__).resolve().parent.parent / "build" / "peers"
                                  / "llama.cpp" / "build" / "bin" / "llama-bench")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def llama_bench(gguf_path: str | os.PathLike, threads: int, prompt_len: int = 128,
                new_tokens: int = 128, repeats: int = 3) -> dict:
    """llama-bench on one GGUF file at one thread count: {"prefill_tok_s", "decode_tok_s",
    "decode_std", "model_bytes", "peak_rss_mb"}. Prefill is pp{prompt_len} from an empty
    cache; decode is tg{new_tokens} after prompt_len tokens of context (-d), as our systems
    decode after their prompt. Each test runs `repeats` times (llama-bench's mean)."""
    binary = llama_bench_path()
    if binary is None:
        raise FileNotFoundError("llama-bench is not built: run `make peers` (or set "
                                f"{LLAMA_BENCH_ENV} to a llama-bench binary)")
    base = [str(binary), "-m", str(gguf_path), "-t", str(threads), "-r", str(repeats),
            "-o", "json"]
    rows, peak = [], 0.0
    for args in (["-p", str(prompt_len), "-n", "0"],
                 ["-p", "0", "-n", str(new_tokens), "-d", str(prompt_len)]):
        # output to files, not pipes: wait4 (for the child's own peak RSS) must not race a
        # child blocked on a full pipe
        with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
            proc = subprocess.Popen(base + args, stdout=out_f, stderr=err_f, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out_f.seek(0)
            err_f.seek(0)
            out, err = out_f.read(), err_f.read()
        if proc.returncode:
            raise RuntimeError(f"llama-bench failed ({proc.returncode}): {err[-2000:]}")
        rows += json.loads(out)
        peak = max(peak, usage.ru_maxrss / 1024)
    pp = next(r for r in rows if r["n_prompt"] > 0)
    tg = next(r for r in rows if r["n_gen"] > 0)
    return {"prefill_tok_s": float(pp["avg_ts"]), "decode_tok_s": float(tg["avg_ts"]),
            "decode_std": float(tg["stddev_ts"]), "model_bytes": int(tg["model_size"]),
            "peak_rss_mb": peak}
