"""workbench.sweep's cached points on a tiny random Llama: prune_point, prune_sweep and
selective_w8a8_table give what pruning, smoothing, quantizing and scoring the model directly
gives, read their points back from the cache instead of recomputing them, and keep their
rows in the order asked for."""

from __future__ import annotations

import copy

import pytest

import workbench.quant
import workbench.sweep as sweep
from workbench import cache, data, evaluate
from workbench.arch import layer_linears
from workbench.models import load_model, tiny_tokenizer
from workbench.profiling import profile_activations
from workbench.pruning import PruneConfig, prune_
from workbench.quant import QuantConfig, quantize_
from workbench.smoothing import SmoothConfig, smooth_

TASKS = {"ppl": {"seqlen": 64, "max_windows": 2}}
GRID = [PruneConfig(method="magnitude", sparsity=0.5), PruneConfig(method="wanda", structure="2:4"),
        PruneConfig(method="sparsegpt", sparsity=0.6)]


@pytest.fixture
def model_dir(tiny_checkpoint, tmp_path, monkeypatch):
    """A saved tiny Llama; pruned weights go under tmp_path, not the user's cache."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return str(tiny_checkpoint)


@pytest.fixture
def store(tmp_path):
    return cache.ResultCache(tmp_path / "results")


@pytest.fixture(scope="module")
def calib():
    return data.calibration_set(tiny_tokenizer(), "pydoc", nsamples=4, seqlen=64)


@pytest.fixture(scope="module")
def eval_corpus():
    return data.perplexity_corpus("pydoc", "eval")


def _ppl(model, tok, seqlen=64, max_windows=2) -> float:
    """The reference score: the pydoc eval split, as sweep.task_inputs("ppl") reads it."""
    corpus = data.perplexity_corpus("pydoc", "eval")
    return evaluate.perplexity(model, tok, corpus, seqlen=seqlen, max_windows=max_windows).perplexity


def _forbid(monkeypatch, module, *names):
    for name in names:
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} was called"))


# ---------------------------------------------------------------- prune_point

@pytest.mark.parametrize("config", [GRID[1], GRID[2]], ids=["wanda-2:4", "sparsegpt-0.6"])
def test_prune_point_scores_what_pruning_directly_gives(model_dir, store, calib, config):
    row = sweep.prune_point(model_dir, config, calib, TASKS, store)
    model, tok = load_model(model_dir)
    report = prune_(model, calib, config)
    # the same pruning and scoring in the same process: the same bits
    assert row["ppl"] == _ppl(model, tok)
    assert row["sparsity"] == report.sparsity and row["target"] == config.sparsity
    # the mean OBS error over the pruned matrices; Wanda measures none
    errors = [r["rel_error"] for r in report.layers if r["rel_error"] is not None]
    if config.method == "sparsegpt":
        assert len(errors) == len(report.layers) == 14
        assert row["mean_rel_error"] == pytest.approx(sum(errors) / len(errors), rel=1e-12)
    else:
        assert errors == [] and row["mean_rel_error"] is None
    assert (row["method"], row["structure"], row["quant"]) == (config.method, config.structure,
                                                               "fp32")


def test_prune_point_dense_and_quantized_rows(model_dir, store, calib):
    dense = sweep.prune_point(model_dir, None, calib, TASKS, store)
    model, tok = load_model(model_dir)
    assert (dense["method"], dense["sparsity"], dense["ppl"]) == ("dense", 0.0, _ppl(model, tok))
    quant = QuantConfig(activations="per_token")
    row = sweep.prune_point(model_dir, GRID[0], calib, TASKS, store, quant=quant)
    prune_(model, calib, GRID[0])
    quantize_(model, quant)
    assert (row["quant"], row["ppl"]) == ("int8", _ppl(model, tok))


def test_prune_point_reads_the_cache_the_second_time(model_dir, store, calib, monkeypatch):
    base = load_model(model_dir)
    config = GRID[2]
    assert sweep.prune_point(model_dir, config, calib, TASKS, store, base=base,
                             compute=False) is None
    first = sweep.prune_point(model_dir, config, calib, TASKS, store, base=base)
    n_records = len(store)
    with monkeypatch.context() as patch:
        _forbid(patch, sweep, "prune_", "evaluate_cached")
        assert sweep.prune_point(model_dir, config, calib, TASKS, store, base=base) == first
        assert sweep.prune_point(model_dir, config, calib, TASKS, store, base=base,
                                 compute=False) == first
    assert len(store) == n_records
    # other scores of the same point: scored again, the pruned weights read back
    _forbid(monkeypatch, sweep, "prune_")
    other = sweep.prune_point(model_dir, config, calib, {"ppl": {"seqlen": 32, "max_windows": 3}},
                              store, base=base)
    model, tok = load_model(model_dir)
    prune_(model, calib, config)
    assert other["ppl"] == _ppl(model, tok, seqlen=32, max_windows=3)
    assert other["sparsity"] == first["sparsity"]


# ---------------------------------------------------------------- prune_sweep

def test_prune_sweep_rows_follow_the_grid_and_reach_on_row(model_dir, store, calib, monkeypatch):
    seen = []
    frame = sweep.prune_sweep(model_dir, GRID, calib, TASKS, store, on_row=seen.append)
    expected = [("dense", "-", 0.0)] + [(c.method, c.structure, c.sparsity) for c in GRID]
    assert list(zip(frame.method, frame.structure, frame.target, strict=True)) == expected
    assert sorted(r["method"] for r in seen) == sorted(m for m, _, _ in expected)
    by_config = {(r["method"], r["structure"], r["target"]): r for r in seen}
    assert len(by_config) == len(expected)
    for i, key in enumerate(expected):
        assert frame.ppl[i] == by_config[key]["ppl"]
        assert frame.sparsity[i] == by_config[key]["sparsity"]
    # each row is its prune_point record, and the dense row scores the unpruned model
    base = load_model(model_dir)
    for i, config in enumerate([None, *GRID]):
        point = sweep.prune_point(model_dir, config, calib, TASKS, store, base=base, compute=False)
        assert point is not None and (frame.ppl[i], frame.sparsity[i]) == (point["ppl"],
                                                                           point["sparsity"])
    assert frame.ppl[0] == _ppl(*base)
    # each target reached exactly: round(target x size) zeros in every matrix
    sizes = [lin.weight.numel() for lin in layer_linears(base[0]).values()]
    assert list(frame.sparsity) == [sum(round(t * n) for n in sizes) / sum(sizes)
                                    for t in frame.target]
    # a second sweep: every row from the cache, none recomputed
    n_records = len(store)
    _forbid(monkeypatch, sweep, "prune_", "evaluate_cached")
    again = sweep.prune_sweep(model_dir, GRID, calib, TASKS, store)
    assert list(again.ppl) == list(frame.ppl) and len(store) == n_records


# ---------------------------------------------------------------- selective_w8a8_table

def test_selective_w8a8_table_rows_against_direct_computation(model_dir, store, calib,
                                                               eval_corpus, monkeypatch):
    order = list(reversed(layer_linears(load_model(model_dir)[0])))    # some ranking
    ks = (0, 2, len(order))
    kw = dict(sparsity=0.5, prune_method="magnitude", smoothing="smoothquant:0.5",
              activations="per_tensor", seqlen=64, max_windows=2, profile_samples=4, label="rev")
    frame = sweep.selective_w8a8_table(model_dir, calib, eval_corpus, order, ks=ks, store=store, **kw)
    assert list(frame.k) == list(ks) and set(frame.label) == {"rev"}
    assert list(frame.kept) == [", ".join(order[:k]) for k in ks]
    # directly: prune, smooth with the pruned model's profile, then quantize all or nothing
    model, tok = load_model(model_dir)
    prune_(model, calib, PruneConfig(method="magnitude", sparsity=0.5))
    smoothed = copy.deepcopy(model)
    smooth_(smoothed, profile_activations(model, calib[:4]),
            SmoothConfig(method="smoothquant", alpha=0.5))
    quantized = copy.deepcopy(smoothed)
    quantize_(quantized, QuantConfig(activations="per_tensor"))
    assert frame.perplexity[0] == _ppl(quantized, tok)
    # every layer kept FP32: the smoothed model unquantized, which smoothing keeps equal to
    # the pruned one up to float rounding
    assert frame.perplexity[2] == _ppl(smoothed, tok)
    assert frame.perplexity[2] == pytest.approx(_ppl(model, tok), rel=1e-4)
    assert frame.perplexity[0] != frame.perplexity[2]
    # a second table: every row from the cache
    _forbid(monkeypatch, workbench.quant, "quantize_")
    _forbid(monkeypatch, sweep, "pruned_model")
    again = sweep.selective_w8a8_table(model_dir, calib, eval_corpus, order, ks=ks, store=store, **kw)
    assert list(again.perplexity) == list(frame.perplexity)


def test_selective_w8a8_table_k0_is_the_w8a8_table_point(model_dir, store, calib, eval_corpus,
                                                         monkeypatch):
    table = sweep.w8a8_table(model_dir, calib, eval_corpus, sparsities=(0.0,),
                             smoothings=("none",), activations=("per_token",), seqlen=64,
                             max_windows=2, profile_samples=4, store=store)
    _forbid(monkeypatch, workbench.quant, "quantize_")
    frame = sweep.selective_w8a8_table(model_dir, calib, eval_corpus, ["model.layers.0.mlp.up_proj"],
                                       ks=(0,), activations="per_token", seqlen=64, max_windows=2,
                                       profile_samples=4, store=store)
    row = table[table.smoothing == "none"].iloc[0]
    assert frame.perplexity[0] == row.perplexity


def test_selective_w8a8_table_rejects_k_outside_the_order(model_dir, store, calib, eval_corpus):
    with pytest.raises(ValueError, match=r"every k must lie in \[0, 1\]"):
        sweep.selective_w8a8_table(model_dir, calib, eval_corpus, ["model.layers.0.mlp.up_proj"],
                                   ks=(0, 2), store=store)
