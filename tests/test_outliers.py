import copy
import math

import pandas as pd
import pytest
import torch

from workbench.arch import layer_linears
from workbench.models import tiny_llama
from workbench.outliers import (
    QuantPlan,
    SensitivityResult,
    compare_rankings,
    measure_layer_sensitivity,
    rank_outlier_layers,
)
from workbench.profiling import ActivationProfile, ChannelStats


def _stats(lo, hi):
    lo, hi = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    return ChannelStats(absmax=torch.maximum(hi, -lo), min=lo, max=hi)


def _profile(layers: dict[str, ChannelStats]) -> ActivationProfile:
    return ActivationProfile(layers=layers, block_output_absmax=[1.0],
                             block_output_absmax_first_token=[1.0], block_output_absmax_rest=[1.0],
                             include_first_token=True, n_sequences=1, n_tokens=1)


L = [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
#           per-channel range   absmax      channels > 6
HAND = {
    L[0]: _stats([-1, -1], [1, 1]),         # [2, 2]    → 2    [1, 1]    0
    L[1]: _stats([-50, 0], [50, 1]),        # [100, 1]  → 100  [50, 1]   1
    L[2]: _stats([0, -10], [1, 10]),        # [1, 20]   → 20   [1, 10]   1
    L[3]: _stats([-30, 0], [-20, 0]),       # [10, 0]   → 10   [30, 0]   1
}


def test_rank_by_range_on_hand_made_profile():
    r = rank_outlier_layers(_profile(HAND), k=3, metric="range")
    assert list(r.frame["name"]) == [L[1], L[2], L[3], L[0]]
    assert list(r.frame["rank"]) == [1, 2, 3, 4]
    assert list(r.frame["range"]) == [100.0, 20.0, 10.0, 2.0]
    assert r.top == [L[1], L[2], L[3]]
    assert r.ratio_top_to_kth == 10.0          # 100 / 10
    assert (r.metric, r.k) == ("range", 3)


def test_rank_by_absmax_p99_and_outlier_count():
    p = _profile(HAND)
    r = rank_outlier_layers(p, k=2, metric="absmax")
    assert r.top == [L[1], L[3]] and r.ratio_top_to_kth == 50.0 / 30.0
    r = rank_outlier_layers(p, k=4, metric="p99")
    # p99 of two channels [a, b], a <= b: a + 0.99 (b − a)
    assert r.frame["p99"].tolist() == pytest.approx([1 + 0.99 * 49, 0.99 * 30, 1 + 0.99 * 9, 1.0])
    assert r.top == [L[1], L[3], L[2], L[0]]
    r = rank_outlier_layers(p, k=3, metric="n_outliers")
    assert r.top == [L[1], L[2], L[3]]        # a three-way tie keeps layer order
    assert r.ratio_top_to_kth == 1.0


def test_ratio_guards_division_by_zero():
    zero = _stats([0, 0], [0, 0])
    assert rank_outlier_layers(_profile({L[0]: HAND[L[1]], L[1]: zero}), k=2).ratio_top_to_kth == math.inf
    assert math.isnan(rank_outlier_layers(_profile({L[0]: zero, L[1]: zero}), k=2).ratio_top_to_kth)


@pytest.mark.parametrize("kwargs", [dict(metric="rnage"), dict(k=0), dict(k=5), dict(k=2.0)])
def test_bad_metric_or_k_is_rejected(kwargs):
    with pytest.raises(ValueError):
        rank_outlier_layers(_profile(HAND), **kwargs)


def test_plan_keeps_the_top_layers():
    plan = rank_outlier_layers(_profile(HAND), k=2).plan()
    assert plan.keep_fp32 == (L[1], L[2])
    assert L[1] in plan and L[2] in plan and L[0] not in plan
    assert plan.metric == "range" and "= 5.0x" in plan.note      # 100 / 20
    d = plan.to_dict()
    assert d == {"keep_fp32": [L[1], L[2]], "metric": "range", "note": plan.note}
    assert QuantPlan.from_dict(d) == plan
    assert "x" not in QuantPlan()
    with pytest.raises(TypeError):
        QuantPlan(keep_fp32="model.layers.0.mlp.up_proj")
    assert QuantPlan(keep_fp32=["a"]).keep_fp32 == ("a",)


# ---------------------------------------------------------------- measured mode


def _calib(n=4, length=16):
    return torch.randint(0, 259, (n, length), generator=torch.Generator().manual_seed(2))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_identity_quantizer_gives_zero_deltas_exactly():
    model, _ = tiny_llama(seed=0)
    res = measure_layer_sensitivity(model, _calib(), quantize_layer=lambda lin: lin, batch_size=3)
    assert len(res.frame) == 14
    assert set(res.frame["name"]) == set(layer_linears(model))
    assert (res.frame["delta"] == 0.0).all()
    assert math.isfinite(res.baseline_loss) and res.baseline_loss > 0
    assert res.n_tokens == 4 * 15


def test_zeroing_a_copy_leaves_the_model_unchanged():
    model, _ = tiny_llama(seed=0)
    model.train()
    before = _state(model)

    def zeroed_copy(lin):
        new = copy.deepcopy(lin)
        with torch.no_grad():
            new.weight.zero_()
        return new

    res = measure_layer_sensitivity(model, _calib(), quantize_layer=zeroed_copy)
    assert _same_state(before, model.state_dict())
    assert all(m is layer_linears(model)[n] for n, m in layer_linears(model).items())
    assert (res.frame["delta"] != 0).all()
    assert model.training                       # the mode it had before


def test_in_place_quantizer_cannot_leak_into_the_model():
    model, _ = tiny_llama(seed=0)
    before = _state(model)

    def rounds_in_place(lin):
        with torch.no_grad():
            lin.weight.mul_(0.0)
        return lin

    res = measure_layer_sensitivity(model, _calib(), quantize_layer=rounds_in_place,
                                    layers=["model.layers.0.mlp.up_proj"])
    assert _same_state(before, model.state_dict())
    assert res.frame["delta"][0] != 0


def test_one_heavily_perturbed_layer_ranks_first():
    # A random model predicts near-uniformly, so a perturbation may as well lower its loss.
    # Make the baseline good first: with tied embeddings scaled up, the residual stream alone
    # predicts "the next token is this one", which is right on sequences of a repeated token.
    model, _ = tiny_llama(seed=0)
    with torch.no_grad():
        model.get_submodule("model.embed_tokens").weight.mul_(50.0)
    calib = torch.randint(0, 256, (4, 1), generator=torch.Generator().manual_seed(3)).repeat(1, 16)
    target_name = "model.layers.1.self_attn.v_proj"
    target = layer_linears(model)[target_name]

    def perturb_target(lin):
        if lin is not target:
            return lin
        new = copy.deepcopy(lin)
        with torch.no_grad():
            new.weight.mul_(1000.0)             # attention output now swamps the residual
        return new

    res = measure_layer_sensitivity(model, calib, quantize_layer=perturb_target)
    assert res.baseline_loss < 0.5
    assert res.top(1) == [target_name]
    assert res.frame["delta"][0] > 1.0
    assert (res.frame["delta"][1:] == 0).all()
    assert res.plan(1).keep_fp32 == (target_name,)


def test_module_restored_when_quantizer_fails():
    model, _ = tiny_llama(seed=0)
    originals = dict(layer_linears(model))
    calls = []

    def fails_on_second(lin):
        calls.append(lin)
        if len(calls) == 2:
            raise RuntimeError("cannot quantize")
        return torch.nn.Identity()

    with pytest.raises(RuntimeError, match="cannot quantize"):
        measure_layer_sensitivity(model, _calib(n=2), quantize_layer=fails_on_second)
    assert layer_linears(model) == originals
    assert not model.training


def test_layer_subset_and_unknown_layers():
    model, _ = tiny_llama(seed=0)
    names = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    res = measure_layer_sensitivity(model, _calib(n=2), quantize_layer=lambda lin: lin, layers=names)
    assert sorted(res.frame["name"]) == sorted(names)
    with pytest.raises(ValueError, match="model.layers.9"):
        measure_layer_sensitivity(model, _calib(n=2), quantize_layer=lambda lin: lin,
                                  layers=["model.layers.9.mlp.up_proj"])
    with pytest.raises(ValueError, match="2 tokens"):
        measure_layer_sensitivity(model, _calib(length=1), quantize_layer=lambda lin: lin)


# ---------------------------------------------------------------- agreement


NAMES = [f"model.layers.{i}.mlp.up_proj" for i in range(10)]


def _ranking(k=10):
    # layer i has range 10 − i: the heuristic ranks layer 0 first
    layers = {n: _stats([0.0], [float(10 - i)]) for i, n in enumerate(NAMES)}
    return rank_outlier_layers(_profile(layers), k=k)


def _measured(deltas):
    frame = pd.DataFrame({"name": NAMES, "loss": [3.0 + d for d in deltas], "delta": deltas})
    frame = frame.sort_values("delta", ascending=False).reset_index(drop=True)
    frame["rank"] = range(1, len(frame) + 1)
    return SensitivityResult(frame=frame, baseline_loss=3.0)


def test_identical_rankings_agree_fully():
    out = compare_rankings(_ranking(), _measured([1.0 - 0.1 * i for i in range(10)]), k=10)
    assert out["overlap"] == 10 and out["jaccard"] == 1.0
    assert out["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert out["n_layers"] == 10


def test_reversed_rankings_disagree_fully():
    measured = _measured([0.1 * i for i in range(10)])
    out = compare_rankings(_ranking(), measured, k=3)
    assert out["spearman"] == pytest.approx(-1.0, abs=1e-12)
    assert out["overlap"] == 0 and out["jaccard"] == 0.0
    assert out["heuristic_top"] == NAMES[:3] and out["measured_top"] == NAMES[::-1][:3]
    partial = compare_rankings(_ranking(), measured, k=6)   # top-6 sets share layers 4 and 5
    assert partial["overlap"] == 2 and partial["jaccard"] == pytest.approx(2 / 10)


def test_replayed_losses_equal_full_forward_losses():
    """Rerunning only the layers from the changed one on equals a whole forward pass."""
    from workbench.outliers import mean_next_token_loss

    model, _ = tiny_llama(seed=0)
    model.eval()
    calib = _calib()

    def zeroed_copy(lin):
        new = copy.deepcopy(lin)
        with torch.no_grad():
            new.weight.mul_(0.5)
        return new

    res = measure_layer_sensitivity(model, calib, quantize_layer=zeroed_copy, batch_size=3)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child)
        setattr(parent, child, zeroed_copy(original))
        try:
            full = mean_next_token_loss(model, calib, batch_size=3)
        finally:
            setattr(parent, child, original)
        got = float(res.frame.set_index("name").loc[name, "loss"])
        assert got == pytest.approx(full, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------- the one next-token loss


def _reference_loss(model, calib) -> float:
    """Mean next-token NLL written out plainly, one sequence and one position at a time, in
    float64: -log softmax(logits[t])[token t + 1], averaged over every predicted position."""
    total, count = 0.0, 0
    with torch.no_grad():
        for seq in calib:
            logp = torch.log_softmax(model(input_ids=seq[None]).logits[0].double(), dim=-1)  # [L, V]
            for t in range(seq.numel() - 1):
                total -= float(logp[t, seq[t + 1]])
                count += 1
    return total / count


def test_outliers_loss_is_evaluates_one_and_matches_a_plain_reference():
    from workbench import evaluate, outliers

    assert outliers.mean_next_token_loss is evaluate.mean_next_token_loss
    model, _ = tiny_llama(seed=0)
    calib = _calib(n=5)
    ref = _reference_loss(model, calib)
    for batch_size in (1, 2, 5, 8):             # batches of 1, uneven, exact, larger than n
        assert outliers.mean_next_token_loss(model, calib, batch_size) == pytest.approx(ref, rel=1e-5)


def test_sensitivity_losses_match_a_plain_reference():
    """Baseline, replayed and full-forward losses of measure_layer_sensitivity all equal the
    plain reference on the model with that one layer replaced."""
    model, _ = tiny_llama(seed=1)
    model.eval()
    calib = _calib(n=3, length=12)

    def halved(lin):
        new = copy.deepcopy(lin)
        with torch.no_grad():
            new.weight.mul_(0.5)
        return new

    names = ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.up_proj"]
    res = measure_layer_sensitivity(model, calib, quantize_layer=halved, layers=names, batch_size=2)
    assert res.baseline_loss == pytest.approx(_reference_loss(model, calib), rel=1e-5)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child)
        setattr(parent, child, halved(original))
        try:
            ref = _reference_loss(model, calib)
        finally:
            setattr(parent, child, original)
        got = float(res.frame.set_index("name").loc[name, "loss"])
        assert got == pytest.approx(ref, rel=1e-5)
        assert got != pytest.approx(res.baseline_loss, rel=1e-9)   # the change is seen


def test_next_token_nll_counts_every_predicted_position_in_float32():
    from workbench.evaluate import next_token_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    total, count = next_token_nll([(logits[:1], ids[:1]), (logits[1:], ids[1:])])
    want = -torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).sum()
    assert count == 2 * 4
    assert total == pytest.approx(float(want), rel=1e-6)
    # bf16 logits are widened before the softmax: the loss is that of the widened values
    half = logits.bfloat16()
    total16, _ = next_token_nll([(half, ids)])
    assert total16 == next_token_nll([(half.float(), ids)])[0]
