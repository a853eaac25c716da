"""Decode and prefill speed of whole models, side by side in one run.

    python -m workbench bench decode [--threads 1,2] [--batches 1,8] [--quick]
    python -m workbench bench kernels          # = benchmarks/kernels.py

The CLI's sizes are DecodeBenchConfig and AgreementConfig (workbench.run_configs, importable
from here): their defaults are the full run, quick() the smoke run.

`tokens_per_sec(system, ...)` times one system: prefill of a prompt [batch, prompt_len], then
new_tokens greedy decode steps, after a warm-up, median over repeats; prefill and decode
tokens/s are reported separately. Systems (each a `System` with prefill and decode_step):

  hf-fp32        Hugging Face model, its own forward and KV cache (what `generate` runs per
                 token, minus sampling bookkeeping)
  hf-int8        the same with torch dynamic INT8 Linear layers (quantize_dynamic)
  ours-fp32      our runtime (workbench.runtime, native engine) with FP32 weights
  ours-int8      our runtime, dense INT8 kernels
  ours-sparse-S  our runtime, weights magnitude-pruned to S per row, bitmask-sparse INT8
  ours-torch-K   K (fp32, int8, sparse-S) on the torch loop, the native engine's reference
  llamacpp-Q     llama.cpp (llama-cpp-python, `make peers`) on a GGUF file of type Q (f32,
                 q8_0, q4_0) written from the same FP32 weights (workbench.peers); batch 1
  llamabench-Q   llama.cpp's own llama-bench binary on the same GGUF files (`make peers`):
                 pp{prompt_len}, then tg{new_tokens} at a depth of prompt_len; batch 1

Every row carries the weight bytes one decode step reads (streamed_mb: every matrix it
multiplies, not the embedding table it indexes) and, against a read-bandwidth probe measured
in the same run at the same thread count, the fraction of the bytes roofline it reaches:
roofline = streamed bytes x decode steps/s / probe bytes/s.

Every system runs in its own subprocess so its peak RSS is its own. Sparse models for speed
use magnitude pruning: the kernels' speed depends on the sparsity pattern's density, not on
which weights survive. Random-weight Llama models with 7B or 1.1B shapes (labelled "random
weights" in every output) are built one decoder layer at a time (`streamed_shape_model`), so
only the packed copy is ever held: packed systems run at the full depth. FP32 7B does not fit
in 24 GB, so its time per token is measured at k = 2, 4, 8 layers and extrapolated to the
real depth with a least-squares line (intercept = embedding, head and loop overhead).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from workbench.run_configs import AgreementConfig, DecodeBenchConfig  # the bench CLI's sizes
from workbench.timing import System, resident_mb, tokens_per_sec

SHAPES = {  # random-weight shape models (hidden, intermediate, layers, heads, kv heads, vocab)
    "llama2-7b-shape": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "tinyllama-1.1b-shape": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                 num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
}


@dataclass
class SpeedResult:
    system: str
    model: str
    batch: int
    threads: int
    prompt_len: int
    new_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    decode_ms_per_token: float
    peak_rss_mb: float = 0.0
    weight_mb: float = 0.0
    rss_mb: float = 0.0          # resident at the end of the measurement (peak includes packing)
    streamed_mb: float = 0.0     # weight bytes one decode step reads
    read_probe_gbs: float = 0.0  # the same run's read probe at this thread count
    roofline: float = 0.0        # streamed bytes x steps/s over the probe


def hf_system(model) -> System:
    """A Hugging Face causal LM with its own KV cache, stepped token by token."""
    state = {}

    @torch.inference_mode()
    def prefill(ids):
        out = model(input_ids=ids, use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[:, -1]

    @torch.inference_mode()
    def decode_step(tokens):
        out = model(input_ids=tokens.reshape(-1, 1), past_key_values=state["past"], use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[:, -1]

    held, streamed = _hf_bytes(model)
    return System(prefill, decode_step, held, streamed_bytes=streamed)


def _hf_bytes(model) -> tuple[int, int]:
    """(bytes held, bytes a decode step reads) of a Hugging Face model, dynamic INT8 Linear
    layers (1 byte per weight) included. A step reads every matrix but the embedding table;
    a tied head reads the embedding matrix as the head."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    held = sum(p.numel() * p.element_size() for p in model.parameters())
    streamed = 0
    for name, m in model.named_modules():
        if isinstance(m, DynamicLinear):
            w = m.weight()
            held += w.numel()
            streamed += w.numel()
        elif isinstance(m, torch.nn.Linear):
            streamed += m.weight.numel() * m.weight.element_size()
        elif name.endswith("norm") and hasattr(m, "weight"):
            streamed += m.weight.numel() * m.weight.element_size()
    return held, streamed


def runtime_system(packed, new_tokens: int) -> System:
    """Our lean loop; its KV cache is sized for the prompt plus new_tokens decode steps."""
    return System(lambda ids: packed.prefill(ids, max_new_tokens=new_tokens),
                  packed.decode_step, packed.nbytes, packed.greedy_step, packed.streamed_bytes)


# ---------------------------------------------------------------- models

def shape_model(name: str, layers: int, seed: int = 0):
    """A random-weight Llama with the named shapes and `layers` decoder layers (FP32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in SHAPES:
        raise ValueError(f"unknown shape model {name!r}; choose one of {sorted(SHAPES)}")
    config = LlamaConfig(**{**SHAPES[name], "num_hidden_layers": layers},
                         max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    return model.eval()


class _StreamedLayers(torch.nn.ModuleList):
    """Decoder layers that hold weights one at a time: iterating (as pack and from_fp32 do)
    gives each layer random weights (and prunes it) just before it is yielded and frees them
    after, so a model too large for memory in FP32 can be packed layer by layer."""

    def __init__(self, layers, fill):
        super().__init__(layers)
        self._fill = fill

    def __iter__(self):
        for i, layer in enumerate(super().__iter__()):
            layer.to_empty(device="cpu")
            self._fill(i, layer)
            yield layer
            layer.to("meta")


def streamed_shape_model(name: str, layers: int, sparsity: float = 0.0, seed: int = 0):
    """A random-weight shape model (as shape_model) whose decoder layers exist only while
    `runtime.pack` or `PackedModel.from_fp32` reads them: weights N(0, σ²) with σ = 0.02, norms
    1, decoder linears magnitude-pruned with one threshold t = σ·√2·erfinv(sparsity), the
    |w| quantile of that normal (a per-row top-k would cost seconds a layer; the fraction of
    zeros is the target to about 1e-4, and speed depends on the density, not on the values).
    Only the packed copy stays in memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in SHAPES:
        raise ValueError(f"unknown shape model {name!r}; choose one of {sorted(SHAPES)}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    config = LlamaConfig(**{**SHAPES[name], "num_hidden_layers": layers},
                         max_position_embeddings=2048, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    sigma = 0.02
    threshold = sigma * 2 ** 0.5 * float(torch.erfinv(torch.tensor(sparsity, dtype=torch.float64)))

    def fill(i: int, module: torch.nn.Module) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        with torch.no_grad():
            for pname, p in module.named_parameters():
                if pname.endswith("norm.weight") or p.ndim == 1:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, sigma, generator=g)
                    if sparsity and i >= 0:        # decoder linears only; i < 0: embed / head
                        p.masked_fill_(p.abs() < threshold, 0.0)

    for j, part in enumerate((model.model.embed_tokens, model.model.norm, model.lm_head)):
        part.to_empty(device="cpu")
        fill(-1 - j, part)
    model.model.layers = _StreamedLayers(list(model.model.layers), fill)
    return model.eval()


def save_shape_checkpoint(name: str, path, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                          layers: int | None = None):
    """Write a random-weight shape model (SHAPES[name]; weights N(0, 0.02²) as Hugging Face
    initializes them, norms 1) as a sharded Hugging Face checkpoint in `dtype`, one decoder
    block at a time: a 7B shape never exists in memory as a whole. The tiny byte tokenizer
    rides along so load_model reads the directory. RANDOM WEIGHTS: for memory and speed
    measurements only. Returns the path."""
    from transformers import LlamaConfig

    from workbench.models import tiny_tokenizer
    from workbench.streaming import ShardWriter

    if name not in SHAPES:
        raise ValueError(f"unknown shape model {name!r}; choose one of {sorted(SHAPES)}")
    dims = {**SHAPES[name], **({"num_hidden_layers": layers} if layers else {})}
    tok = tiny_tokenizer()
    config = LlamaConfig(**dims, max_position_embeddings=2048, tie_word_embeddings=False,
                         dtype=str(dtype).replace("torch.", ""), bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = h // config.num_attention_heads * config.num_key_value_heads
    g = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    writer = ShardWriter(Path(path))
    try:
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            writer.write(f"block-{i:05d}.safetensors", {
                p + "self_attn.q_proj.weight": normal(h, h), p + "self_attn.k_proj.weight": normal(kv, h),
                p + "self_attn.v_proj.weight": normal(kv, h), p + "self_attn.o_proj.weight": normal(h, h),
                p + "mlp.gate_proj.weight": normal(f, h), p + "mlp.up_proj.weight": normal(f, h),
                p + "mlp.down_proj.weight": normal(h, f),
                p + "input_layernorm.weight": torch.ones(h, dtype=dtype),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=dtype)})
        writer.write("rest.safetensors", {"model.embed_tokens.weight": normal(v, h),
                                          "model.norm.weight": torch.ones(h, dtype=dtype),
                                          "lm_head.weight": normal(v, h)})
        return writer.finish(config=config, tokenizer=tok)
    except BaseException:
        writer.abort()
        raise


def magnitude_sparsify_(model, sparsity: float) -> None:
    """Zero the smallest-|w| fraction of every row of every decoder Linear (in place)."""
    from workbench.arch import layer_linears

    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    with torch.no_grad():
        for lin in layer_linears(model).values():
            k = round(sparsity * lin.in_features)
            if k:
                drop = lin.weight.abs().topk(k, dim=1, largest=False).indices
                lin.weight.scatter_(1, drop, 0.0)


LLAMACPP_SYSTEMS = ("llamacpp-f32", "llamacpp-q8_0", "llamacpp-q4_0")
LLAMABENCH_SYSTEMS = ("llamabench-f32", "llamabench-q8_0", "llamabench-q4_0")


def _engine_of(kind: str) -> tuple[str, str]:
    """("ours-..." kind without the engine, engine) for our systems."""
    if kind.startswith("ours-torch-"):
        return "ours-" + kind[len("ours-torch-"):], "torch"
    return kind, "native"


def check_system(kind: str) -> None:
    """ValueError unless kind names a system (before any model is built)."""
    base, _ = _engine_of(kind)
    if base in ("hf-fp32", "hf-int8", "ours-fp32", "ours-int8", *LLAMACPP_SYSTEMS,
                *LLAMABENCH_SYSTEMS):
        return
    if base.startswith("ours-sparse-"):
        try:
            sparsity = float(base.rsplit("-", 1)[1])
        except ValueError:
            sparsity = -1.0
        if 0 <= sparsity < 1:
            return
    raise ValueError(f"unknown system {kind!r}: hf-fp32, hf-int8, ours[-torch]-fp32, "
                     f"ours[-torch]-int8, ours[-torch]-sparse-<sparsity in [0, 1)>, "
                     f"{', '.join(LLAMACPP_SYSTEMS)} or {', '.join(LLAMABENCH_SYSTEMS)}")


def build_system(kind: str, model_name: str, layers: int | None = None,
                 new_tokens: int = 128, threads: int = 1, prompt_len: int = 128) -> tuple[System, int]:
    """(System, vocab) for one configuration; kind as in the module docstring. threads is
    used by llama.cpp systems only (fixed when built; ours and torch read it per call)."""
    check_system(kind)
    if kind in LLAMABENCH_SYSTEMS:
        raise ValueError(f"{kind} runs as its own binary: see llama_bench_rows")
    kind, engine = _engine_of(kind)
    if kind in LLAMACPP_SYSTEMS:
        from workbench import peers

        if model_name in SHAPES:
            raise ValueError("llama.cpp systems run the embedded model only")
        path = peers.gguf_for(model_name, kind.split("-", 1)[1].upper())
        system = peers.llamacpp_system(path, n_threads=threads, n_ctx=prompt_len + new_tokens + 8)
        from workbench.models import load_model

        return system, load_model(model_name)[0].config.vocab_size
    if model_name in SHAPES and kind.startswith("ours-"):
        sparsity = float(kind.rsplit("-", 1)[1]) if kind.startswith("ours-sparse-") else 0.0
        model = streamed_shape_model(model_name, layers or 2, sparsity)
        kind = kind if sparsity == 0 else "ours-sparse-pruned"
    elif model_name in SHAPES:
        model = shape_model(model_name, layers or 2)
    else:
        from workbench.models import load_model

        model, _ = load_model(model_name)
    vocab = model.config.vocab_size
    if kind == "hf-fp32":
        return hf_system(model), vocab
    if kind == "hf-int8":
        from torch.ao.quantization import quantize_dynamic

        return hf_system(quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)), vocab
    from workbench import runtime

    if kind == "ours-fp32":
        return runtime_system(runtime.PackedModel.from_fp32(model, engine=engine), new_tokens), vocab
    if kind == "ours-int8":
        return runtime_system(runtime.pack(model, format="dense", engine=engine), new_tokens), vocab
    if kind == "ours-sparse-pruned":                    # a streamed shape model, pruned as built
        return runtime_system(runtime.pack(model, format="sparse", engine=engine), new_tokens), vocab
    if kind.startswith("ours-sparse-"):
        magnitude_sparsify_(model, float(kind.rsplit("-", 1)[1]))
        return runtime_system(runtime.pack(model, format="sparse", engine=engine), new_tokens), vocab
    raise AssertionError(kind)                          # check_system let an unknown kind by


def measure(kind: str, model_name: str, batches: list[int], threads: list[int], prompt_len: int,
            new_tokens: int, layers: int | None = None, repeats: int = 3) -> list[SpeedResult]:
    """Every (batch, threads) of one system, built once, in this process. Peak RSS is the
    process's (see run_isolated)."""
    label = model_name if layers is None else f"{model_name} ({layers} layers, random weights)"
    out, system = [], None
    for t in threads:
        torch.set_num_threads(t)
        os.environ["WORKBENCH_NUM_THREADS"] = str(t)
        if system is None or kind in LLAMACPP_SYSTEMS:            # llama.cpp fixes its threads
            system = None                                         # free the previous one first
            system, vocab = build_system(kind, model_name, layers, new_tokens, t, prompt_len)
        for b in batches:
            if b > 1 and kind in LLAMACPP_SYSTEMS:
                continue                                          # llama-cpp-python: batch 1
            pre, dec = tokens_per_sec(system, vocab, b, prompt_len, new_tokens, repeats=repeats)
            out.append(SpeedResult(kind, label, b, t, prompt_len, new_tokens, pre, dec,
                                   1e3 * b / dec,
                                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                   system.weight_bytes / 2**20, resident_mb(),
                                   system.streamed_bytes / 2**20))
    return out


def llama_bench_rows(kind: str, model_name: str, threads: list[int], prompt_len: int,
                     new_tokens: int, repeats: int = 3) -> list[SpeedResult]:
    """llama-bench (a llamabench-Q system) on the GGUF of model_name at each thread count."""
    from workbench import peers

    if model_name in SHAPES:
        raise ValueError("llama.cpp systems run the embedded model only")
    path = peers.gguf_for(model_name, kind.split("-", 1)[1].upper())
    out = []
    for t in threads:
        r = peers.llama_bench(path, t, prompt_len, new_tokens, repeats)
        mb = r["model_bytes"] / 2**20
        out.append(SpeedResult(kind, model_name, 1, t, prompt_len, new_tokens,
                               r["prefill_tok_s"], r["decode_tok_s"], 1e3 / r["decode_tok_s"],
                               r["peak_rss_mb"], mb, 0.0, mb))
    return out


def with_roofline(r: SpeedResult, probe: dict[int, float]) -> SpeedResult:
    """r with the read probe of its thread count and its fraction of the bytes roofline."""
    gbs = probe.get(r.threads, 0.0)
    steps = r.decode_tok_s / r.batch
    r.read_probe_gbs = gbs
    r.roofline = r.streamed_mb * 2**20 * steps / (gbs * 1e9) if gbs else 0.0
    return r


def run_isolated(**kwargs) -> list[SpeedResult]:
    """measure(...) in a fresh Python process: its peak RSS is this system's alone."""
    code = ("import json, sys; from dataclasses import asdict; from workbench.bench import measure; "
            "print('RESULT' + json.dumps([asdict(r) for r in measure(**json.loads(sys.argv[1]))]))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    if done.returncode or not lines:
        raise RuntimeError(f"benchmark of {kwargs} failed:\n{done.stderr[-2000:]}")
    return [SpeedResult(**r) for r in json.loads(lines[-1][len("RESULT"):])]


def extrapolate(layers: list[int], ms_per_token: list[float], depth: int) -> dict:
    """Least-squares line ms = a + b * layers and its value at `depth` layers."""
    n = len(layers)
    mx, my = sum(layers) / n, sum(ms_per_token) / n
    b = (sum((x - mx) * (y - my) for x, y in zip(layers, ms_per_token, strict=True))
         / sum((x - mx) ** 2 for x in layers))
    a = my - b * mx
    return {"intercept_ms": a, "ms_per_layer": b, "depth": depth, "ms_per_token": a + b * depth,
            "tok_s": 1e3 / (a + b * depth)}


EMBEDDED_SYSTEMS = ("hf-fp32", "hf-int8", "ours-torch-fp32", "ours-torch-int8",
                    "ours-torch-sparse-0.7", "ours-fp32", "ours-int8", "ours-sparse-0.5",
                    "ours-sparse-0.7", "ours-sparse-0.8", "ours-sparse-0.9")
SHAPE_MODELS = ("llama2-7b-shape", "tinyllama-1.1b-shape")
FIT_SYSTEMS = ("ours-fp32", "ours-int8")             # timed at shape_layers, fitted to full depth
FULL_SYSTEMS = ("ours-int8", "ours-sparse-0.7", "ours-sparse-0.8")   # timed at full depth
SHAPE_SYSTEMS = tuple(dict.fromkeys(FIT_SYSTEMS + FULL_SYSTEMS))
FP32_FULL_DEPTH_MAX_GB = 10.0     # FP32 shape models up to this size are also timed at full depth


def shape_fp32_gb(name: str) -> float:
    """FP32 weight size of a shape model at its full depth (GB)."""
    c = SHAPES[name]
    h, f, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"]
    head_dim = h // c["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv * head_dim + 3 * h * f
    return 4 * (c["num_hidden_layers"] * per_layer + 2 * c["vocab_size"] * h) / 1e9


def run_decode(model: str = "smollm2-135m", systems=EMBEDDED_SYSTEMS, batches=(1, 8),
               threads=(1, 2), prompt_len: int = 128, new_tokens: int = 128, repeats: int = 3,
               shape_models=SHAPE_MODELS, shape_layers=(2, 4, 8), fit_systems=FIT_SYSTEMS,
               full_systems=FULL_SYSTEMS, log=print) -> dict:
    """The decode table of the embedded model and of the random-weight shape models.

    Shape models (batch 1, prompt 16, 32 new tokens, streamed so only packed weights are
    held): full_systems are timed at the real depth; fit_systems at shape_layers decoder layers,
    and a least-squares line gives the full depth (FP32 7B does not fit in memory; where a
    system is also timed at full depth, the fit row shows both). FP32 is timed at full depth too
    when it needs at most FP32_FULL_DEPTH_MAX_GB. Returns {"rows": [...], "fits": [...]}."""
    rows, fits = [], []
    from workbench.timing import read_bandwidth

    probe = {t: read_bandwidth(t) for t in threads}
    log("read probe: " + ", ".join(f"{t} thread(s) {gb:.1f} GB/s" for t, gb in probe.items()))
    for kind in systems:
        if kind in LLAMABENCH_SYSTEMS:
            found = llama_bench_rows(kind, model, list(threads), prompt_len, new_tokens, repeats)
        else:
            found = run_isolated(kind=kind, model_name=model, batches=list(batches),
                                 threads=list(threads), prompt_len=prompt_len,
                                 new_tokens=new_tokens, repeats=repeats)
        for r in found:
            rows.append(asdict(with_roofline(r, probe)))
            log(_line(r))
    for name in shape_models:
        depth = SHAPES[name]["num_hidden_layers"]
        full = list(full_systems)
        if shape_fp32_gb(name) <= FP32_FULL_DEPTH_MAX_GB:
            full.insert(0, "ours-fp32")
        runs = [(layers, kind) for layers in shape_layers if layers < depth for kind in fit_systems]
        runs += [(depth, kind) for kind in full]
        per: dict[tuple[str, int], list[tuple[int, float]]] = {}
        measured_full: dict[tuple[str, int], float] = {}
        for layers, kind in runs:
            for r in run_isolated(kind=kind, model_name=name, batches=[1], threads=list(threads),
                                  prompt_len=16, new_tokens=32, repeats=2, layers=layers):
                rows.append({**asdict(with_roofline(r, probe)), "layers": layers})
                log(_line(r))
                if layers == depth:
                    measured_full[(kind, r.threads)] = r.decode_ms_per_token
                else:
                    per.setdefault((kind, r.threads), []).append((layers, r.decode_ms_per_token))
        for (kind, t), points in per.items():
            if len(points) < 2:
                continue
            fit = extrapolate([p[0] for p in points], [p[1] for p in points], depth)
            fits.append({"model": f"{name} (random weights)", "system": kind, "threads": t,
                         "measured_layers": [p[0] for p in points],
                         "measured_ms": [p[1] for p in points], **fit,
                         "measured_full_depth_ms": measured_full.get((kind, t))})
    return {"rows": rows, "fits": fits}


# ---------------------------------------------------------------- greedy agreement

def greedy_agreement(system_model, reference, prompts: list[torch.Tensor],
                     n_tokens: int = 32) -> list[dict]:
    """Greedy continuations of each prompt (LongTensor [1, T]) by our runtime (a PackedModel)
    and by a Hugging Face reference model, n_tokens each (no early stop). Per prompt: tokens
    equal at the same position, the common prefix, and the largest |logit difference| with
    both fed the reference's continuation (teacher forced)."""
    out = []
    for i, ids in enumerate(prompts):
        T = ids.shape[1]
        ours = system_model.generate(ids, n_tokens)[0, T:]
        with torch.no_grad():
            ref = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                                     eos_token_id=None, pad_token_id=0)
            want = reference(ref).logits[0, T - 1:-1]
        got = system_model.forward_logits(ref)[0, T - 1:-1]
        ref = ref[0, T:]
        equal = (ours == ref)
        prefix = int(equal.long().cumprod(0).sum())
        out.append({"prompt": i, "prompt_tokens": T, "equal_tokens": int(equal.sum()),
                    "n_tokens": n_tokens, "common_prefix": prefix,
                    "max_abs_logit_diff": float((got - want).abs().max()),
                    "rel_logit_diff": float((got - want).norm() / want.norm())})
    return out


def engine_agreement(native, reference, tokenizer, n_prompts: int = 20,
                     n_tokens: int = 64) -> list[dict]:
    """The native engine against its reference, the torch loop, on the same packed weights:
    n_prompts GSM8K test questions in the chat template, n_tokens greedy tokens each (no early
    stop). Per prompt: tokens equal at the same position, the common prefix, and the relative
    logit difference with both fed the reference's continuation (teacher forced)."""
    from workbench import data

    out = []
    for i, item in enumerate(data.gsm8k("test", n=n_prompts)):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": item.question}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        T = ids.shape[1]
        want = reference.generate(ids, n_tokens)
        got = native.generate(ids, n_tokens)[0, T:]
        lw, lg = reference.forward_logits(want), native.forward_logits(want)
        equal = got == want[0, T:]
        out.append({"prompt": i, "prompt_tokens": T, "equal_tokens": int(equal.sum()),
                    "n_tokens": n_tokens, "common_prefix": int(equal.long().cumprod(0).sum()),
                    "max_abs_logit_diff": float((lg - lw).abs().max()),
                    "rel_logit_diff": float((lg - lw).norm() / lw.norm())})
    return out


def agreement_table(model_name: str = "smollm2-135m", sparsities=(0.0, 0.5), n_prompts: int = 20,
                    n_tokens: int = 32, sparsities_engine=(0.0, 0.7),
                    engine_tokens: int = 64) -> list[dict]:
    """Correctness of the runtime on the embedded model, on n_prompts GSM8K test questions in
    the chat template: our FP32 loop against HF FP32, and the packed W8A8 model (lm_head FP32,
    as quant.quantize_ leaves it) against quantize_'s fake-quant model, at each sparsity
    (magnitude pruning per row); and the native engine against the torch loop on the same
    packed model at each of sparsities_engine (engine_tokens tokens per prompt). One row per
    (comparison, prompt)."""
    import copy

    from workbench import data, runtime
    from workbench.models import load_model
    from workbench.quant import QuantConfig, quantize_

    model, tok = load_model(model_name)
    questions = [item.question for item in data.gsm8k("test", n=n_prompts)]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"]
               for q in questions]
    rows = [{"comparison": "ours-fp32 vs hf-fp32", "sparsity": 0.0, **r}
            for r in greedy_agreement(runtime.PackedModel.from_fp32(model), model, prompts, n_tokens)]
    for sparsity in sparsities_engine:
        pruned = copy.deepcopy(model)
        if sparsity:
            magnitude_sparsify_(pruned, sparsity)
        fmt = "dense" if sparsity == 0 else "sparse"
        name = "ours-int8" if sparsity == 0 else f"ours-sparse-{sparsity:g}"
        rows += [{"comparison": f"{name}: native engine vs torch loop", "sparsity": sparsity, **r}
                 for r in engine_agreement(runtime.pack(pruned, format=fmt),
                                           runtime.pack(pruned, format=fmt, engine="torch"),
                                           tok, n_prompts, engine_tokens)]
    for sparsity in sparsities:
        pruned = copy.deepcopy(model)
        if sparsity:
            magnitude_sparsify_(pruned, sparsity)
        packed = runtime.pack(pruned, lm_head="fp32")
        quantize_(pruned, QuantConfig("per_channel", "per_token"))
        name = "ours-int8" if sparsity == 0 else f"ours-sparse-{sparsity:g}"
        rows += [{"comparison": f"{name} vs hf W8A8 fake-quant", "sparsity": sparsity, **r}
                 for r in greedy_agreement(packed, pruned, prompts, n_tokens)]
    return rows


def _line(r: SpeedResult) -> str:
    return (f"{r.model:<42} {r.system:<16} b={r.batch} t={r.threads}: prefill "
            f"{r.prefill_tok_s:8.1f} tok/s  decode {r.decode_tok_s:7.1f} tok/s "
            f"({r.decode_ms_per_token:.2f} ms/token)  peak RSS {r.peak_rss_mb:.0f} MB  "
            f"{r.streamed_mb:.0f} MB/step, {r.roofline:.0%} of the roofline")


__all__ = ["AgreementConfig", "DecodeBenchConfig", "LLAMABENCH_SYSTEMS", "LLAMACPP_SYSTEMS", "engine_agreement", "llama_bench_rows",
           "with_roofline", "agreement_table", "greedy_agreement", "check_system", "EMBEDDED_SYSTEMS", "FIT_SYSTEMS", "FULL_SYSTEMS", "SHAPE_MODELS",
           "SHAPES", "SHAPE_SYSTEMS", "resident_mb", "shape_fp32_gb", "streamed_shape_model", "run_decode", "SpeedResult", "System", "build_system", "extrapolate", "hf_system",
           "magnitude_sparsify_", "measure", "run_isolated", "runtime_system", "shape_model",
           "tokens_per_sec"]
