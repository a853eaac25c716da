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


def test_runtime_system_times_the_lean_loop(tiny):
    from workbench import runtime

    packed = runtime.pack(tiny[0], format="sparse")
    system = bench.runtime_system(packed, new_tokens=4)
    pre, dec = bench.tokens_per_sec(system, vocab=tiny[0].config.vocab_size, prompt_len=6,
                                    new_tokens=4, warmup=0, repeats=1)
    assert pre > 0 and dec > 0


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
