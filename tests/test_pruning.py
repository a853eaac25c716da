"""SparseGPT, Wanda and magnitude pruning: exact sparsity, N:M patterns, the OBS update, error
ordering on correlated inputs, and the sequential driver on tiny models."""

import pytest
import torch

from workbench import arch, data
from workbench.baselines import magnitude_prune, wanda_prune
from workbench.models import tiny_llama
from workbench.pruning import PruneConfig, current_masks, prune_
from workbench.sparsegpt import HessianAccumulator, reconstruction_error, sparsify_weight


def _layer_problem(rows=48, cols=96, tokens=2048, seed=0, outliers=True):
    """W and H = 2/n XᵀX for inputs with correlated channels and a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5
    X = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 2 * mix)   # correlated
    if outliers:
        X[:, :4] *= 25.0
    acc = HessianAccumulator(cols)
    for chunk in X.split(500):
        acc.add_batch(chunk)
    W = torch.randn(rows, cols, generator=g)
    return W, acc.H, X


def test_hessian_is_running_mean_of_2xxt():
    _, H, X = _layer_problem(tokens=1234)
    torch.testing.assert_close(H, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("shape,blocksize", [((48, 96), 32), ((17, 129), 128), ((5, 7), 4)])
def test_sparsegpt_exact_unstructured_sparsity(sparsity, shape, blocksize):
    rows, cols = shape
    W, H, _ = _layer_problem(rows, cols, tokens=512)
    Wp, mask = sparsify_weight(W, H, sparsity, blocksize=blocksize)
    assert int(mask.sum()) == round(sparsity * rows * cols)
    assert torch.equal(Wp == 0, mask)
    assert torch.isfinite(Wp).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_for_every_method(n, m):
    W, H, X = _layer_problem(32, 64)
    norms = X.norm(dim=0)
    for Wp, mask in (sparsify_weight(W, H, 0, prune_n=n, prune_m=m, blocksize=32),
                     wanda_prune(W, norms, 0, prune_n=n, prune_m=m),
                     magnitude_prune(W, 0, prune_n=n, prune_m=m)):
        groups = mask.reshape(32, 64 // m, m)
        assert (groups.sum(-1) == n).all()
        assert torch.equal(Wp == 0, mask)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_error_ordering_sparsegpt_wanda_magnitude(sparsity):
    W, H, X = _layer_problem()
    e_sgpt = reconstruction_error(W, sparsify_weight(W, H, sparsity, blocksize=32)[0], H)
    e_wanda = reconstruction_error(W, wanda_prune(W, X.norm(dim=0), sparsity)[0], H)
    e_mag = reconstruction_error(W, magnitude_prune(W, sparsity)[0], H)
    assert e_sgpt < e_wanda < e_mag, (e_sgpt, e_wanda, e_mag)


def test_reconstruction_error_matches_direct_computation():
    W, H, X = _layer_problem()
    Wp = magnitude_prune(W, 0.5)[0]
    direct = ((X @ (W - Wp).t()) ** 2).sum() / ((X @ W.t()) ** 2).sum()
    assert reconstruction_error(W, Wp, H) == pytest.approx(float(direct), rel=1e-3)


@pytest.mark.parametrize("blocksize", [4, 128])
def test_single_weight_removal_is_the_closed_form_obs_update(blocksize):
    """Pruning w_0 of one row must give δ = −w_0 / [H⁻¹]_00 · H⁻¹[0, :] (Hassibi & Stork 1993)."""
    cols = 10
    _, H, _ = _layer_problem(1, cols, tokens=256, outliers=False)
    w = torch.randn(1, cols, generator=torch.Generator().manual_seed(1)) + 3.0
    w[0, 0] = 1e-3                                     # the least salient weight: pruned first
    # 0.13 puts the one pruned weight's quota in the first block for both block sizes; with
    # blocksize 4 the update reaches later blocks through the lazy batch update.
    Wp, mask = sparsify_weight(w, H, sparsity=0.13, blocksize=blocksize, percdamp=0.01)
    assert mask[0, 0] and int(mask.sum()) == 1
    Hd = H.double() + 0.01 * torch.diag(H).mean().double() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(Hd)
    expected = w.double() - w[0, 0].double() / Hinv[0, 0] * Hinv[0:1, :]
    torch.testing.assert_close(Wp.double(), expected, rtol=1e-4, atol=1e-6)


def test_dead_inputs_are_zeroed_not_nan():
    W, H, _ = _layer_problem(8, 16, outliers=False)
    H[3, :] = 0
    H[:, 3] = 0
    Wp, _ = sparsify_weight(W, H, 0.25, blocksize=8)
    assert (Wp[:, 3] == 0).all() and torch.isfinite(Wp).all()


def test_cholesky_failure_is_retried_with_more_dampening_or_raises():
    W = torch.randn(4, 3)
    slightly_indefinite = torch.diag(torch.tensor([1.0, 1.0, -1e-6]))
    Wp, mask = sparsify_weight(W, slightly_indefinite, 1 / 3, percdamp=0.0)
    assert torch.isfinite(Wp).all() and int(mask.sum()) == 4
    hopeless = torch.diag(torch.tensor([1.0, 1.0, -10.0]))
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        sparsify_weight(W, hopeless, 0.5, percdamp=0.0)


@pytest.mark.parametrize("bad", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(structure="4:2"),
                                 dict(structure="2:2"), dict(structure="half"), dict(method="obs")])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        PruneConfig(**bad)


def test_pure_functions_reject_bad_input():
    W, H, _ = _layer_problem(4, 8)
    with pytest.raises(ValueError, match="sparsity"):
        sparsify_weight(W, H, 1.2)
    with pytest.raises(ValueError, match="N < M"):
        sparsify_weight(W, H, 0, prune_n=4, prune_m=4)
    with pytest.raises(ValueError, match="H must be"):
        sparsify_weight(W, H[:4, :4], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        sparsify_weight(W, H * float("nan"), 0.5)
    with pytest.raises(ValueError, match="input_norm"):
        wanda_prune(W, torch.ones(3), 0.5)


# ---------------------------------------------------------------- the driver on tiny models

@pytest.fixture(scope="module")
def calib():
    _, tok = tiny_llama()
    return data.calibration_set(tok, nsamples=8, seqlen=64)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
@pytest.mark.parametrize("structure,sparsity", [("unstructured", 0.6), ("2:4", 0.5)])
def test_prune_reaches_target_and_leaves_embeddings(method, structure, sparsity, calib):
    model, _ = tiny_llama(seed=1)
    embed = model.model.embed_tokens.weight.clone()
    report = prune_(model, calib, PruneConfig(method=method, sparsity=sparsity, structure=structure,
                                              blocksize=32))
    linears = arch.layer_linears(model)
    assert set(report.masks) == set(linears)
    for name, lin in linears.items():
        rows, cols = lin.weight.shape
        # Wanda's quota is per output row; SparseGPT and magnitude hit the matrix count exactly
        expected = rows * round(sparsity * cols) if method == "wanda" else round(sparsity * rows * cols)
        assert int((lin.weight == 0).sum()) == expected, name
        assert torch.equal(report.masks[name], lin.weight == 0)
    assert report.sparsity == pytest.approx(sparsity, abs=1 / 64)   # per-row rounding (Wanda)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    assert torch.equal(current_masks(model)["model.layers.1.mlp.up_proj"],
                       report.masks["model.layers.1.mlp.up_proj"])


def test_targets_and_ignore(calib):
    model, _ = tiny_llama(seed=1)
    before = {n: lin.weight.clone() for n, lin in arch.layer_linears(model).items()}
    report = prune_(model, calib, PruneConfig(method="wanda", sparsity=0.5, targets=("*mlp*",),
                                              ignore=("down_proj",)))
    pruned = {r["name"] for r in report.layers}
    assert pruned == {f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")}
    for name, lin in arch.layer_linears(model).items():
        if name not in pruned:
            assert torch.equal(lin.weight, before[name]), name
    with pytest.raises(ValueError, match="no decoder Linear"):
        prune_(model, calib, PruneConfig(targets=("nothing_like_this",)))


def test_blocks_are_calibrated_on_pruned_outputs(calib):
    """Pruning both blocks at once equals pruning block 0, then block 1 on the pruned model."""
    cfg = dict(method="sparsegpt", sparsity=0.5, blocksize=32)
    together, _ = tiny_llama(seed=2)
    prune_(together, calib, PruneConfig(**cfg))
    stepwise, _ = tiny_llama(seed=2)
    prune_(stepwise, calib, PruneConfig(**cfg, targets=("model.layers.0.*",)))
    prune_(stepwise, calib, PruneConfig(**cfg, targets=("model.layers.1.*",)))
    for (name, a), b in zip(arch.layer_linears(together).items(),
                            arch.layer_linears(stepwise).values(), strict=True):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0, msg=name)


def test_driver_errors(calib):
    model, _ = tiny_llama()
    with pytest.raises(TypeError, match="calib"):
        prune_(model, calib.float(), PruneConfig())
    with pytest.raises(TypeError, match="calib"):
        prune_(model, None, PruneConfig(method="wanda"))
    prune_(model, None, PruneConfig(method="magnitude"))          # needs no data
    broken, _ = tiny_llama()
    broken.model.embed_tokens.weight.data[:] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prune_(broken, calib, PruneConfig(method="sparsegpt"))
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300))
    with pytest.raises(arch.UnsupportedArchitectureError):
        prune_(gpt2, calib, PruneConfig())
