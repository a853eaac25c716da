"""INT8 quantizers and W8A8 fake-quant: error bounds, kernel parity, the quantize_ step."""

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench import kernels
from workbench.arch import UnsupportedArchitectureError, layer_linears
from workbench.cache import hash_json
from workbench.models import tiny_llama
from workbench.quant import (
    QuantConfig,
    QuantReport,
    W8A8Linear,
    fake_quant_activation,
    fake_quant_weight,
    quantize_,
    quantize_weight,
)


def _ids(n=4, L=24, seed=0):
    return torch.randint(0, 259, (n, L), generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def fp32():
    model, _ = tiny_llama(seed=0)
    with torch.no_grad():
        logits = model(_ids()).logits
    return model, logits


# ---------------------------------------------------------------- pure quantizers

def test_weight_per_channel_error_within_half_step():
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    w[5] = 0.0                                   # a zero row: scale 0, no NaN
    q, scale = quantize_weight(w, "per_channel")
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (16,)
    fq = fake_quant_weight(w, "per_channel")
    assert torch.isfinite(fq).all() and scale[5] == 0 and (fq[5] == 0).all()
    err = (fq - w).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-6)).all()
    # the largest entry of every nonzero row lands on ±127
    nonzero = scale > 0
    assert (q.abs().amax(dim=1)[nonzero] == 127).all()


def test_weight_per_tensor_error_within_half_step():
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(2))
    q, scale = quantize_weight(w, "per_tensor")
    assert scale.shape == (1,)
    assert scale.item() == pytest.approx(w.abs().max().item() / 127)
    assert ((fake_quant_weight(w, "per_tensor") - w).abs() <= scale / 2 * (1 + 1e-6)).all()
    # per-tensor is coarser than per-channel on rows of different magnitude
    w[0] *= 50
    assert ((fake_quant_weight(w, "per_tensor") - w).norm()
            > (fake_quant_weight(w, "per_channel") - w).norm())


def test_per_token_activation_equals_kernel_reference_exactly():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, 33, generator=g)
    x[..., 4] *= 300.0                           # an outlier channel
    x[1, 2] = 0.0                                # a zero token
    x[0, 0, :3] = torch.tensor([127.0, 0.5, 1.5])  # a row with scale 1: exact ties
    x[0, 0, 3:] = 0.0
    flat = x.reshape(-1, 33).numpy()
    q_ref, s_ref = kernels.quantize_per_token_ref(flat)
    expected = torch.from_numpy(q_ref.astype("float32") * s_ref[:, None]).reshape(x.shape)
    got = fake_quant_activation(x, "per_token")
    assert torch.equal(got, expected)
    q_c, s_c = kernels.quantize_per_token(x.reshape(-1, 33))  # and the compiled kernel
    assert torch.equal(got, (q_c.float() * s_c[:, None]).reshape(x.shape))


def test_per_tensor_dynamic_activation_error_bound():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4))
    scale = x.abs().max() / 127
    err = (fake_quant_activation(x, "per_tensor") - x).abs()
    assert (err <= scale / 2 * (1 + 1e-6)).all()
    assert err.max() > 0


def test_static_scale_clamps_out_of_range_to_127_steps():
    scale = 0.01
    x = torch.tensor([[0.5, -0.2, 3.0, -7.0, 1.27, 0.004]])
    y = fake_quant_activation(x, "per_tensor_static", static_scale=scale)
    s32 = torch.tensor(scale)
    assert y[0, 2] == 127 * s32 and y[0, 3] == -127 * s32          # clamped
    inside = x.abs() <= 127 * scale
    assert ((y - x).abs()[inside] <= scale / 2 * (1 + 1e-5)).all()
    with pytest.raises(ValueError, match="static_scale"):
        fake_quant_activation(x, "per_tensor_static")


def test_none_activations_pass_through():
    x = torch.randn(3, 8)
    assert torch.equal(fake_quant_activation(x, "none"), x)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("kwargs, valid", [
    ({"weights": "per_row"}, "per_channel, per_tensor"),
    ({"activations": "per_channel"}, "per_token, per_tensor, per_tensor_static, none"),
])
def test_config_rejects_unknown_values_listing_valid_ones(kwargs, valid):
    with pytest.raises(ValueError, match=valid):
        QuantConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = QuantConfig(weights="per_tensor", activations="per_tensor_static")
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="bits"):
        QuantConfig.from_dict({"weights": "per_tensor", "bits": 4})


# ---------------------------------------------------------------- module

def test_w8a8_linear_forward_repr_and_static_guard():
    lin = nn.Linear(24, 10)
    mod = W8A8Linear.from_float(lin, QuantConfig(weights="per_tensor", activations="per_tensor"))
    x = torch.randn(2, 3, 24)
    expected = F.linear(fake_quant_activation(x, "per_tensor"),
                        fake_quant_weight(lin.weight, "per_tensor"), lin.bias)
    assert torch.equal(mod(x), expected)
    assert torch.equal(mod.weight_int8.float() * mod.weight_scale[:, None], mod.weight)
    text = repr(mod)
    assert "in_features=24" in text and "out_features=10" in text
    assert "weights=per_tensor" in text and "activations=per_tensor" in text
    with pytest.raises(ValueError, match="act_scale"):
        W8A8Linear.from_float(lin, QuantConfig(activations="per_tensor_static"))
    static = W8A8Linear.from_float(lin, QuantConfig(activations="per_tensor_static"), 0.02)
    assert "act_scale=0.02" in repr(static)


def test_w8a8_linear_keeps_bf16_interface():
    lin = nn.Linear(16, 8).to(torch.bfloat16)
    mod = W8A8Linear.from_float(lin)
    y = mod(torch.randn(4, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and mod.weight.dtype == torch.float32


# ---------------------------------------------------------------- quantize_

@pytest.mark.parametrize("as_plan", [list, lambda names: SimpleNamespace(keep_fp32=tuple(names))])
def test_quantize_swaps_decoder_linears_except_plan(fp32, as_plan):
    model, ref = fp32
    model = copy.deepcopy(model)
    names = list(layer_linears(model))
    keep = [names[0], names[-1]]                   # layer 0 q_proj, last layer down_proj
    embed, head = model.model.embed_tokens, model.lm_head
    head_w = head.weight.clone()
    report = quantize_(model, QuantConfig(), plan=as_plan(keep))
    after = layer_linears(model)
    assert report.kept_fp32 == keep and report.quantized == names[1:-1]
    for name in names:
        assert isinstance(after[name], W8A8Linear) == (name not in keep)
        assert isinstance(after[name], nn.Linear) == (name in keep)
    assert model.model.embed_tokens is embed and model.lm_head is head
    assert type(head) is nn.Linear and torch.equal(head.weight, head_w)
    with torch.no_grad():
        logits = model(_ids()).logits
    err = _rel(logits, ref)
    assert 0 < err < 5e-2                           # close, yet quantization did something
    json.dumps(report.to_dict())


def test_quantize_static_calibrates_scales(fp32):
    model = copy.deepcopy(fp32[0])
    calib = _ids(n=3, L=16, seed=9)
    # the q_proj input absmax, hooked by hand, fixes q_proj's static scale
    seen = []
    name = "model.layers.1.self_attn.q_proj"
    h = model.get_submodule(name).register_forward_pre_hook(
        lambda m, a: seen.append(a[0].abs().max()))
    with torch.no_grad():
        model(calib)
    h.remove()
    cfg = QuantConfig(weights="per_tensor", activations="per_tensor_static")
    report = quantize_(model, cfg, calib=calib, batch_size=2)
    assert set(report.static_scales) == set(report.quantized)
    assert report.static_scales[name] == pytest.approx(max(seen).item() / 127, rel=1e-6)
    assert model.get_submodule(name).act_scale.item() == pytest.approx(report.static_scales[name])
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())
    with torch.no_grad():
        err = _rel(model(_ids()).logits, fp32[1])
    assert 0 < err < 1e-1


def test_quantize_static_without_calib_refuses_and_leaves_model(fp32):
    model = copy.deepcopy(fp32[0])
    with pytest.raises(ValueError, match="calib"):
        quantize_(model, QuantConfig(activations="per_tensor_static"))
    assert all(type(m) is nn.Linear for m in layer_linears(model).values())


def test_quantize_refuses_unknown_plan_names_and_double_quantization(fp32):
    model = copy.deepcopy(fp32[0])
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        quantize_(model, plan=["model.layers.9.mlp.down_proj"])
    assert all(type(m) is nn.Linear for m in layer_linears(model).values())
    with pytest.raises(TypeError, match="one str"):
        quantize_(model, plan="model.layers.0.self_attn.q_proj")
    quantize_(model)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model)


# Hashes of QuantConfig.to_dict() before targets / ignore existed: cached W8A8 and sensitivity
# points are keyed by them.
PINNED_KEYS = [
    (dict(), "99526d53f4ae55469a5d0ca036458962fd9b56a1425be1b9ac7f8fe91bf529d7"),
    (dict(activations="per_tensor"), "82e765214bc229c6efab4418630659856e8d28e3658c38e55a19a1fff2804a2b"),
    (dict(weights="per_tensor", activations="per_tensor_static"),
     "d1f53e8c669cfa4eaa20f38bf85a4760eb926ed046a30a4f2313fe67cc1fd065")]


@pytest.mark.parametrize("kwargs,key", PINNED_KEYS)
def test_cache_keys_of_quant_configs_are_pinned(kwargs, key):
    assert hash_json(QuantConfig(**kwargs).to_dict()) == key


def test_selection_fields_round_trip_and_are_checked():
    cfg = QuantConfig(targets=("model.layers.0.*",), ignore=("down_proj",))
    assert cfg.to_dict()["ignore"] == ["down_proj"]
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="ignore"):
        QuantConfig(ignore="down_proj")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.weights = "per_tensor"


def test_new_and_old_call_forms_quantize_alike(fp32):
    """quantize_(model, calib, config, plan=...) and the older (model, config, plan, calib,
    batch_size), positional or by keyword, give the same scales and the same model."""
    calib = _ids(n=3, L=16, seed=9)
    cfg = QuantConfig(weights="per_tensor", activations="per_tensor_static")
    plan = ["model.layers.0.mlp.down_proj"]
    calls = [lambda m: quantize_(m, calib, cfg, plan=plan, batch_size=2),
             lambda m: quantize_(m, cfg, plan, calib, 2),
             lambda m: quantize_(m, cfg, plan=plan, calib=calib, batch_size=2),
             lambda m: quantize_(m, config=cfg, plan=plan, calib=calib, batch_size=2)]
    reports, logits = [], []
    for call in calls:
        model = copy.deepcopy(fp32[0])
        reports.append(call(model))
        with torch.no_grad():
            logits.append(model(_ids()).logits)
    for r, out in zip(reports[1:], logits[1:], strict=True):
        assert r.static_scales == reports[0].static_scales and r.kept_fp32 == plan
        assert torch.equal(out, logits[0])


def test_call_form_mistakes_are_type_errors(fp32):
    model = copy.deepcopy(fp32[0])
    calib = _ids(n=2, L=8)
    with pytest.raises(TypeError, match="twice"):
        quantize_(model, calib, QuantConfig(), calib=calib)
    with pytest.raises(TypeError, match="plan twice"):
        quantize_(model, QuantConfig(), ["a"], plan=["b"])
    with pytest.raises(TypeError, match="token ids"):
        quantize_(model, ["model.layers.0.mlp.down_proj"])
    with pytest.raises(TypeError, match="by keyword"):
        quantize_(model, calib, QuantConfig(), None, 8)
    with pytest.raises(TypeError, match="QuantConfig"):
        quantize_(model, calib, {"weights": "per_channel"})
    assert all(type(m) is nn.Linear for m in layer_linears(model).values())


def test_ignore_keeps_layers_fp32_like_a_plan(fp32):
    by_config, by_plan = copy.deepcopy(fp32[0]), copy.deepcopy(fp32[0])
    names = list(layer_linears(by_config))
    down = [n for n in names if n.endswith("down_proj")]
    r1 = quantize_(by_config, config=QuantConfig(ignore=("down_proj",)))
    r2 = quantize_(by_plan, config=QuantConfig(), plan=down)
    assert r1.kept_fp32 == r2.kept_fp32 == down
    assert r1.quantized == r2.quantized == [n for n in names if n not in down]
    with torch.no_grad():
        assert torch.equal(by_config(_ids()).logits, by_plan(_ids()).logits)
    # targets and the plan combine: layer 0 only, less the plan's layer
    model = copy.deepcopy(fp32[0])
    r3 = quantize_(model, config=QuantConfig(targets=("model.layers.0.*",)), plan=[names[0]])
    assert r3.quantized == [n for n in names if n.startswith("model.layers.0.")][1:]
    assert r3.kept_fp32 == [n for n in names if n not in r3.quantized]
    with pytest.raises(ValueError, match="no decoder Linear matches"):
        quantize_(copy.deepcopy(fp32[0]), config=QuantConfig(targets=("lm_head",)))


def test_quant_report_round_trips(fp32):
    model = copy.deepcopy(fp32[0])
    report = quantize_(model, _ids(n=2, L=8), QuantConfig(activations="per_tensor_static"))
    assert QuantReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    with pytest.raises(ValueError, match="unknown QuantReport keys: extra"):
        QuantReport.from_dict({**report.to_dict(), "extra": 1})


def test_pack_selects_layers_like_quantize(fp32):
    from workbench.runtime import pack

    model = fp32[0]
    down = [n for n in layer_linears(model) if n.endswith("down_proj")]
    by_ignore = pack(model, ignore=("down_proj",), lm_head="fp32")
    by_plan = pack(model, plan=down, lm_head="fp32")
    assert by_ignore.recipe[-1] == by_plan.recipe[-1]
    assert by_ignore.recipe[-1]["config"]["plan"] == sorted(down)
    ids = _ids(n=1, L=12)
    assert torch.equal(by_ignore.forward_logits(ids), by_plan.forward_logits(ids))
    with pytest.raises(ValueError, match="targets"):
        pack(model, targets="down_proj")


def test_quantize_refuses_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        quantize_(model)


def test_per_token_fake_quant_matches_the_kernels_quantizer_exactly():
    """The fake-quant model and the packed kernels must round activations identically: a
    regression for 127 / absmax computed as 127 * (1 / absmax), an ulp off."""
    import numpy as np

    from workbench import kernels
    from workbench.quant import _absmax_quantize

    x = torch.tensor([[0.49766236543655396, 0.10776153206825256]])
    q, _ = _absmax_quantize(x, x.abs().amax(1, keepdim=True))
    kq, _ = kernels.quantize_per_token(x.numpy())
    assert q.tolist() == [[127.0, 28.0]] and kq.tolist() == [[127, 28]]
    rows = torch.randn(4000, 96, generator=torch.Generator().manual_seed(0)) * torch.rand(4000, 1)
    q, scale = _absmax_quantize(rows, rows.abs().amax(1, keepdim=True))
    kq, kscale = kernels.quantize_per_token(rows.numpy())
    np.testing.assert_array_equal(q.numpy().astype(np.int8), kq)
    np.testing.assert_array_equal(scale.reshape(-1).numpy(), kscale.reshape(-1))
