import pytest
import torch

from workbench.arch import layer_linears
from workbench.models import tiny_llama
from workbench.profiling import ActivationProfile, ChannelStats, profile_activations

VOCAB = 259  # the tiny tokenizer's size
EMBED = "model.embed_tokens"


def _calib(n=5, length=12, low=0, high=VOCAB, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, length), generator=gen)


def _inputs_of(model, name, calib, batch_size):
    """Every input the named Linear sees, [n, L, in], captured by a hook of our own."""
    seen = []
    handle = dict(model.named_modules())[name].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for b in range(0, calib.shape[0], batch_size):
                model(input_ids=calib[b: b + batch_size], use_cache=False)
    finally:
        handle.remove()
    return torch.cat(seen)


def _no_hooks_left(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("include_first_token", [True, False])
@pytest.mark.parametrize("name", ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
def test_stats_equal_an_independent_computation(tiny, name, include_first_token):
    model, _ = tiny
    calib = _calib()
    profile = profile_activations(model, calib, include_first_token=include_first_token, batch_size=2)
    x = _inputs_of(model, name, calib, batch_size=2)                  # [n, L, in]
    if not include_first_token:
        x = x[:, 1:]
    x = x.reshape(-1, x.shape[-1])
    s = profile.layers[name]
    torch.testing.assert_close(s.absmax, x.abs().amax(0), rtol=0, atol=0)
    torch.testing.assert_close(s.min, x.amin(0), rtol=0, atol=0)
    torch.testing.assert_close(s.max, x.amax(0), rtol=0, atol=0)
    assert s.absmax.dtype == torch.float32
    assert profile.include_first_token is include_first_token
    assert profile.n_sequences == 5
    assert profile.n_tokens == 5 * (12 if include_first_token else 11)


def test_profile_covers_every_linear_in_layer_order_and_leaves_model_alone(tiny):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile = profile_activations(model, _calib(), batch_size=3)
    assert list(profile.layers) == list(layer_linears(model))
    assert len(profile.block_output_absmax) == 2
    for all_, first, rest in zip(profile.block_output_absmax, profile.block_output_absmax_first_token,
                                 profile.block_output_absmax_rest, strict=True):
        assert all_ == max(first, rest) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_first_token_outlier_appears_only_when_included():
    model, _ = tiny_llama(seed=0)
    token, channel = 7, 5
    with torch.no_grad():
        model.get_submodule(EMBED).weight[token, channel] = 1000.0   # a massive activation
    calib = _calib(low=8)                                            # token 7 nowhere ...
    calib[:, 0] = token                                              # ... but at position 0
    incl = profile_activations(model, calib, include_first_token=True, batch_size=2)
    excl = profile_activations(model, calib, include_first_token=False, batch_size=2)
    q0 = "model.layers.0.self_attn.q_proj"
    # After RMSNorm a lone 1000 among values ~0.02 becomes ~sqrt(hidden) = 8.
    assert incl.layers[q0].absmax[channel] > 7.5
    assert excl.layers[q0].absmax[channel] < 5.0
    # Block statistics always separate position 0 from the rest, whatever the setting.
    for p in (incl, excl):
        assert p.block_output_absmax_first_token[0] > 500
        assert p.block_output_absmax_rest[0] < 50
        assert p.block_output_absmax[0] == p.block_output_absmax_first_token[0]
    for name in incl.layers:  # positions 1: are a subset of all positions
        assert torch.all(incl.layers[name].absmax >= excl.layers[name].absmax)
        assert torch.all(incl.layers[name].min <= excl.layers[name].min)


def test_hooks_removed_after_success(tiny):
    model, _ = tiny
    profile_activations(model, _calib(n=2), batch_size=1)
    assert _no_hooks_left(model)


def test_hooks_removed_and_mode_restored_after_bad_token_id():
    model, _ = tiny_llama(seed=0)
    model.train()
    calib = _calib(n=2)
    calib[1, 3] = VOCAB + 10                                         # past the embedding table
    with pytest.raises((IndexError, RuntimeError)):
        profile_activations(model, calib, batch_size=1)
    assert _no_hooks_left(model)
    assert model.training


def test_hooks_removed_after_an_error_mid_forward(monkeypatch):
    model, _ = tiny_llama(seed=0)
    mlp = model.get_submodule("model.layers.1.mlp")

    def boom(*args, **kwargs):
        raise RuntimeError("boom in layer 1")

    monkeypatch.setattr(mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="boom in layer 1"):
        profile_activations(model, _calib(n=2))
    assert _no_hooks_left(model)
    assert not model.training


@pytest.mark.parametrize("include_first_token", [True, False])
def test_nan_activation_raises_naming_the_layer(include_first_token):
    model, _ = tiny_llama(seed=0)
    token = 7
    with torch.no_grad():
        model.get_submodule(EMBED).weight[token, 3] = float("nan")
    calib = _calib(low=8)
    calib[:, 0] = token  # only at position 0: must be caught even when position 0 is skipped
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        profile_activations(model, calib, include_first_token=include_first_token)
    assert _no_hooks_left(model)


@pytest.mark.parametrize("calib, error", [
    ([[1, 2, 3]], TypeError),
    (torch.rand(2, 4), TypeError),
    (torch.ones(4, dtype=torch.long), ValueError),
    (torch.ones(0, 4, dtype=torch.long), ValueError),
])
def test_bad_calib_is_rejected(tiny, calib, error):
    with pytest.raises(error, match="calib"):
        profile_activations(tiny[0], calib)


def test_bad_settings_are_rejected(tiny):
    with pytest.raises(ValueError, match="batch_size"):
        profile_activations(tiny[0], _calib(), batch_size=0)
    with pytest.raises(ValueError, match="2 tokens"):
        profile_activations(tiny[0], _calib(length=1), include_first_token=False)


def test_to_frame_columns_rows_and_values(tiny):
    profile = profile_activations(tiny[0], _calib(), batch_size=5)
    frame = profile.to_frame()
    assert list(frame.columns) == ["name", "layer", "module", "in_features", "range", "absmax",
                                   "p99", "n_outlier_channels"]
    assert len(frame) == 14
    assert list(frame["layer"]) == [0] * 7 + [1] * 7
    assert frame["module"][0] == "self_attn.q_proj" and frame["module"][13] == "mlp.down_proj"
    assert frame["in_features"][13] == 160 and frame["in_features"][0] == 64
    row = frame.iloc[10]
    assert row["range"] == profile.layer_range(row["name"])
    assert row["absmax"] == profile.layer_absmax(row["name"])
    assert (frame["p99"] <= frame["absmax"]).all() and (frame["range"] > 0).all()


def test_channel_level_methods_on_known_stats():
    lo = torch.tensor([-1.0, -7.0, 0.0, 2.0, -3.0])
    hi = torch.tensor([1.0, 3.0, 6.0, 10.0, 2.0])
    stats = ChannelStats(absmax=torch.maximum(hi, -lo), min=lo, max=hi)   # [1, 7, 6, 10, 3]
    p = ActivationProfile(layers={"model.layers.0.mlp.up_proj": stats}, block_output_absmax=[1.0],
                          block_output_absmax_first_token=[1.0], block_output_absmax_rest=[0.5],
                          include_first_token=True, n_sequences=1, n_tokens=4)
    name = "model.layers.0.mlp.up_proj"
    assert p.layer_range(name) == 10.0                  # channel 1: 3 − (−7)
    assert p.layer_absmax(name) == 10.0
    assert p.percentile(name, 50.0) == 6.0              # median of [1, 3, 6, 7, 10]
    assert p.percentile(name, 100.0) == 10.0
    assert p.n_outlier_channels(name) == 2              # 7 and 10; 6 is not > 6
    with pytest.raises(KeyError):
        p.layer_range("nope")
    with pytest.raises(ValueError):
        p.percentile(name, 101.0)


def test_save_load_round_trip(tiny, tmp_path):
    profile = profile_activations(tiny[0], _calib(), include_first_token=False, outlier_threshold=2.5)
    path = profile.save(tmp_path / "sub" / "profile.pt")
    loaded = ActivationProfile.load(path)
    assert list(loaded.layers) == list(profile.layers)
    for name, s in profile.layers.items():
        for field in ("absmax", "min", "max"):
            assert torch.equal(getattr(loaded.layers[name], field), getattr(s, field))
    for field in ("block_output_absmax", "block_output_absmax_first_token",
                  "block_output_absmax_rest", "include_first_token", "n_sequences", "n_tokens",
                  "outlier_threshold"):
        assert getattr(loaded, field) == getattr(profile, field)
    assert loaded.fingerprint == profile.fingerprint
    assert loaded.to_frame().equals(profile.to_frame())
    assert not list(tmp_path.glob("sub/.*.tmp"))        # the atomic write left no temp file


def test_fingerprint_follows_content(tiny):
    profile = profile_activations(tiny[0], _calib(n=2))
    fp = profile.fingerprint
    assert len(fp) == 64
    profile.layers["model.layers.1.mlp.up_proj"].max[0] += 1.0
    assert profile.fingerprint != fp
    profile.layers["model.layers.1.mlp.up_proj"].max[0] -= 1.0
    profile.include_first_token = False
    assert profile.fingerprint != fp
