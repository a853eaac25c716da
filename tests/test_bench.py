"""The decode benchmark's pieces: timing bookkeeping, the extrapolation fit, magnitude
sparsification for speed models, and the CLI's argument checks (no timing is asserted)."""

import pytest
import torch

from workbench import bench
from workbench.cli import main


def test_tokens_per_sec_counts_prefill_and_decode_tokens():
    calls = {"prefill": 0, "decode": 0}

    def prefill(ids):
        calls["prefill"] += 1
        assert ids.shape == (2, 5)
        return torch.zeros(2, 11)

    def decode_step(tokens):
        calls["decode"] += 1
        assert tokens.shape == (2,)
        return torch.zeros(2, 11)

    pre, dec = bench.tokens_per_sec(bench.System(prefill, decode_step), vocab=11, batch=2,
                                    prompt_len=5, new_tokens=7, warmup=1, repeats=3)
    assert calls == {"prefill": 4, "decode": 28}
    assert pre > 0 and dec > 0


def test_extrapolate_recovers_a_line():
    fit = bench.extrapolate([2, 4, 8], [3.0 + 1.5 * k for k in (2, 4, 8)], depth=32)
    assert fit["intercept_ms"] == pytest.approx(3.0)
    assert fit["ms_per_layer"] == pytest.approx(1.5)
    assert fit["ms_per_token"] == pytest.approx(51.0)
    assert fit["tok_s"] == pytest.approx(1e3 / 51.0)


def test_magnitude_sparsify_hits_the_row_sparsity(tiny):
    import copy

    from workbench.arch import layer_linears

    model = copy.deepcopy(tiny[0])
    bench.magnitude_sparsify_(model, 0.75)
    for lin in layer_linears(model).values():
        zeros = (lin.weight == 0).sum(1)
        assert (zeros == round(0.75 * lin.in_features)).all()
    with pytest.raises(ValueError, match="sparsity"):
        bench.magnitude_sparsify_(model, 1.0)


def test_runtime_system_times_the_lean_loop(tiny, monkeypatch):
    """The timed loop is the packed model's greedy decoding, and its tokens/s are the token
    counts over the seconds prefill and decoding took: a stand-in clock advances 0.5 s per
    prefill and 0.25 s per decode step, so the rates are known exactly."""
    from types import SimpleNamespace

    from workbench import runtime, timing

    packed = runtime.pack(tiny[0], format="sparse")
    system = bench.runtime_system(packed, new_tokens=4)
    now, fed = [0.0], []
    prefill, greedy_step = system.prefill, system.greedy_step

    def timed_prefill(ids):
        now[0] += 0.5
        return prefill(ids)

    def timed_step(tokens):
        now[0] += 0.25
        fed.append(tokens.clone())
        return greedy_step(tokens)

    system.prefill, system.greedy_step = timed_prefill, timed_step
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    vocab = tiny[0].config.vocab_size
    pre, dec = bench.tokens_per_sec(system, vocab=vocab, prompt_len=6, new_tokens=4,
                                    warmup=0, repeats=1)
    assert (pre, dec) == (pytest.approx(6 / 0.5), pytest.approx(4 / (4 * 0.25)))
    # the tokens fed to the decode steps are the 4 that generate picks greedily (same prompt)
    ids = torch.randint(0, vocab, (1, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(fed), packed.generate(ids, 4)[0, 6:])


def test_unknown_shape_model_and_system_are_errors():
    with pytest.raises(ValueError, match="shape model"):
        bench.shape_model("gpt-9", 1)
    for kind in ("ours-fp64", "ours-sparse-1.5", "ours-sparse-x"):
        with pytest.raises(ValueError, match="unknown system"):
            bench.build_system(kind, "llama2-7b-shape", layers=1)
    for kind in bench.EMBEDDED_SYSTEMS:
        bench.check_system(kind)


def test_bench_cli_rejects_bad_lists(capsys):
    assert main(["bench", "decode", "--threads", "one"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["bench", "decode", "--batches", "0"]) == 2


def test_streamed_shape_model_builds_layers_one_at_a_time(monkeypatch):
    """Each decoder layer gets its (seeded, pruned) weights only while it is iterated, and the
    FP32 runtime built from the stream computes what an HF model with those weights computes."""
    from transformers import LlamaForCausalLM

    from workbench import runtime

    monkeypatch.setitem(bench.SHAPES, "tiny-shape", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=97))
    model = bench.streamed_shape_model("tiny-shape", 3, sparsity=0.5)
    seen = []
    for layer in model.model.layers:
        assert all(p.device.type == "cpu" for p in layer.parameters())
        seen.append({k: v.clone() for k, v in layer.state_dict().items()})
    assert all(p.device.type == "meta" for p in model.model.layers.parameters())
    again = [dict(layer.state_dict()) for layer in model.model.layers]   # same seeds, same weights
    assert all(torch.equal(a[k], b[k]) for a, b in zip(seen, again, strict=True) for k in a)
    zeros = sum(int((w == 0).sum()) for weights in seen for k, w in weights.items() if w.ndim == 2)
    total = sum(w.numel() for weights in seen for k, w in weights.items() if w.ndim == 2)
    assert abs(zeros / total - 0.5) < 0.02                   # 86k weights: 5 sigma is 0.009
    for weights in seen:
        assert torch.equal(weights["input_layernorm.weight"], torch.ones(64))
        # magnitude pruning: every survivor is above the threshold, the smallest just above it
        threshold = 0.02 * 2 ** 0.5 * float(torch.erfinv(torch.tensor(0.5)))
        smallest = weights["mlp.down_proj.weight"].abs()
        smallest = smallest[smallest != 0].min()
        assert threshold <= smallest < 1.05 * threshold

    packed = runtime.PackedModel.from_fp32(model)
    full = LlamaForCausalLM(model.config).eval()
    with torch.no_grad():
        for layer, weights in zip(full.model.layers, seen, strict=True):
            layer.load_state_dict(weights)
        for name in ("model.embed_tokens", "model.norm", "lm_head"):
            full.get_submodule(name).load_state_dict(model.get_submodule(name).state_dict())
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expect = full(input_ids=ids).logits
    torch.testing.assert_close(packed.forward_logits(ids), expect, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="sparsity"):
        bench.streamed_shape_model("tiny-shape", 1, sparsity=1.0)


def test_cli_shape_model_names_match_bench(capsys):
    from workbench import cli

    assert cli.SHAPE_MODEL_NAMES == bench.SHAPE_MODELS
    assert main(["bench", "decode", "--shape-models", "gpt-9-shape"]) == 2
    assert "gpt-9-shape" in capsys.readouterr().err


def test_shape_fp32_size_matches_a_built_model():
    model = bench.shape_model("tinyllama-1.1b-shape", 1)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters() if p.ndim == 2)
    other = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    expect = 4 * (22 * per_layer + other) / 1e9
    assert bench.shape_fp32_gb("tinyllama-1.1b-shape") == pytest.approx(expect)


def test_greedy_agreement_counts_equal_tokens_and_prefix():
    from workbench import runtime
    from workbench.models import tiny_llama

    # untied: a tiny random tied model just repeats its last token, whatever its weights
    model = tiny_llama(seed=0, tie_word_embeddings=False)[0]
    prompts = [torch.randint(3, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(s))
               for s in range(3)]
    same = bench.greedy_agreement(runtime.PackedModel.from_fp32(model), model, prompts, n_tokens=6)
    assert [r["equal_tokens"] for r in same] == [6, 6, 6]
    assert [r["common_prefix"] for r in same] == [6, 6, 6]
    assert max(r["max_abs_logit_diff"] for r in same) < 1e-4
    other = tiny_llama(seed=1, tie_word_embeddings=False)[0]     # another random model
    rows = bench.greedy_agreement(runtime.PackedModel.from_fp32(model), other, prompts, n_tokens=6)
    assert all(0 <= r["common_prefix"] <= r["equal_tokens"] <= 6 for r in rows)
    assert sum(r["equal_tokens"] for r in rows) < 18
    assert min(r["max_abs_logit_diff"] for r in rows) > 1e-3


def test_roofline_fraction_is_streamed_bytes_per_second_over_the_probe():
    r = bench.SpeedResult("ours-int8", "m", batch=2, threads=1, prompt_len=8, new_tokens=8,
                          prefill_tok_s=1.0, decode_tok_s=200.0, decode_ms_per_token=5.0,
                          streamed_mb=50.0)
    bench.with_roofline(r, {1: 20.0})
    # 100 steps/s (batch 2) x 50 MiB = 5.24 GB/s of a 20 GB/s probe
    assert r.read_probe_gbs == 20.0 and abs(r.roofline - 100 * 50 * 2**20 / 20e9) < 1e-12
    assert bench.with_roofline(r, {}).roofline == 0.0


def test_packed_models_count_the_bytes_a_step_reads(tiny):
    from workbench import runtime

    model = tiny[0]
    packed, fp32 = runtime.pack(model), runtime.PackedModel.from_fp32(model)
    table = packed.summary()
    norms = sum(p.nbytes for n, p in model.named_parameters() if "norm" in n)
    assert packed.streamed_bytes == int(table.nbytes.sum()) + norms      # no embedding table
    assert fp32.streamed_bytes == fp32.nbytes                            # tied: read as the head
    held, streamed = bench._hf_bytes(model)
    assert held == sum(p.nbytes for p in model.parameters()) and streamed == fp32.streamed_bytes


def test_hf_systems_run_the_protocol(tiny):
    model = tiny[0]
    system = bench.hf_system(model)
    pre, dec = bench.tokens_per_sec(system, vocab=model.config.vocab_size, batch=1,
                                    prompt_len=4, new_tokens=2, warmup=0, repeats=1)
    assert pre > 0 and dec > 0 and system.streamed_bytes <= system.weight_bytes


def _kernels_script():
    """benchmarks/kernels.py as a module (importing it runs no benchmark)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "kernels.py"
    spec = importlib.util.spec_from_file_location("kernels_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_settings_quick_env_and_flags(monkeypatch, capsys):
    from workbench.run_configs import KernelBenchConfig

    script = _kernels_script()
    monkeypatch.delenv("WORKBENCH_QUICK", raising=False)
    config, out = script.settings([])
    assert config == KernelBenchConfig() and out.name == "kernels.csv"
    assert script.SHAPES == [(1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]
    assert script.settings(["--quick"]) == (KernelBenchConfig.quick(), out.with_name("kernels-quick.csv"))
    monkeypatch.setenv("WORKBENCH_QUICK", "1")                   # the environment, like --quick
    assert script.settings([]) == script.settings(["--quick"])
    config, out = script.settings(["--threads", "2", "--shapes", "64x32,32x64"])   # flags win
    assert (config.threads, config.shapes) == ((2,), ((64, 32), (32, 64)))
    assert (config.batches, config.sparsities) == ((1,), (0.0, 0.7)) and out.name == "kernels-quick.csv"
    with pytest.raises(SystemExit):
        script.settings(["--shapes", "4096"])
    assert "shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.settings(["--threads", "two"])
    assert "--threads" in capsys.readouterr().err
