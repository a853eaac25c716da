"""Every architecture workbench.arch claims, through the steps, on a tiny random model of it
(tests/test_arch.py checks that the tables' names resolve): the decoder Linears are the ones
the forward calls, in its order; the pruning driver feeds each block what the model's own
forward feeds it; the smoothing maps preserve the logits; quantization, the outlier replay,
load_model and streamed pruning walk it; the Llama-only lean runtime refuses the rest clearly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench import arch
from workbench.baselines import wanda_prune
from workbench.models import load_model, tiny_tokenizer
from workbench.outliers import measure_layer_sensitivity, rank_outlier_layers
from workbench.profiling import profile_activations
from workbench.pruning import PruneConfig, prune_
from workbench.quant import QuantConfig, W8A8Linear, quantize_
from workbench.smoothing import SmoothConfig, smooth_

VOCAB = len(tiny_tokenizer())     # the tokenizer saved with a checkpoint for load_model


def _config(model_type: str, **extra):
    """A tiny random config: hidden 64, 2 layers, 4 heads."""
    from transformers import LlamaConfig, MistralConfig, MptConfig, OPTConfig, Qwen2Config

    if model_type == "opt":
        return OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                         num_attention_heads=4,
                         **{"word_embed_proj_dim": 64, "max_position_embeddings": 128, **extra})
    if model_type == "mpt":
        return MptConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=128,
                         **extra)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type]
    # GQA (2 KV heads); Mistral's sliding window shorter than the calibration rows, so it acts
    extra = {"sliding_window": 16, **extra} if model_type == "mistral" else extra
    return cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **extra)


def _build(model_type: str, **extra) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_config(model_type, **extra)).eval()


ARCHS = ["llama", "mistral", "qwen2", "opt", "mpt"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> nn.Module:
    return _build(request.param)


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_every_claimed_architecture_is_tested_here():
    assert arch.supported_architectures() == sorted(ARCHS)


# ---------------------------------------------------------------- the tables

def test_tables_name_the_modules_in_forward_order(model, calib):
    spec = arch.get_arch(model)
    layers = arch.decoder_layers(model)
    assert len(layers) == 2
    linears = arch.layer_linears(model)
    # every Linear of the decoder layers, none other, in the order the forward calls them
    inside = {n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.startswith(spec.layers + ".")}
    assert set(linears) == inside and len(linears) == 2 * len(spec.linears)
    called = []
    hooks = [m.register_forward_hook(lambda *_, n=n: called.append(n)) for n, m in linears.items()]
    ref = _logits(model, calib)
    for h in hooks:
        h.remove()
    assert called == list(linears)
    # the norms the smoothing maps and the other steps name are the layers' norms
    for layer in layers:
        for name in (spec.input_norm, spec.post_norm, *(norm for norm, _ in spec.smooth_maps)):
            assert layer.get_submodule(name).weight.shape == (64,)
    assert isinstance(model.get_submodule(spec.embed), nn.Embedding)
    assert model.get_submodule(spec.embed).num_embeddings == VOCAB
    assert model.get_submodule(spec.final_norm).weight.shape == (64,)
    # the backbone returns the final-normed hidden states the LM head turns into the logits
    with torch.no_grad():
        hidden = arch.backbone(model)(calib).last_hidden_state                # [B, T, 64]
        torch.testing.assert_close(arch.lm_head(model)(hidden), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- pruning

@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ria"])
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_prune_reaches_the_target_exactly(model, calib, method, structure):
    pruned = copy.deepcopy(model)
    report = prune_(pruned, calib, PruneConfig(method=method, structure=structure))
    assert report.sparsity == 0.5 and len(report.layers) == len(arch.layer_linears(model))
    for name, lin in arch.layer_linears(pruned).items():
        zeros = lin.weight == 0                                              # [out, in]
        if structure == "2:4":       # 2 of every 4 consecutive weights in a row
            assert (zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all(), name
        else:                        # even widths: half of every matrix
            assert int(zeros.sum()) == zeros.numel() // 2, name


def _wanda_reference(model: nn.Module, calib: torch.Tensor, sparsity: float) -> nn.Module:
    """Wanda the slow way: for each decoder layer in turn, run the whole (partly pruned) model
    over calib, take ||X_j||₂ of every Linear's input from forward hooks, prune that layer."""
    model = copy.deepcopy(model)
    spec = arch.get_arch(model)
    for i in range(len(arch.decoder_layers(model))):
        lins = {n: model.get_submodule(f"{spec.layers}.{i}.{n}") for n in spec.linears}
        sq = {}

        def record(module, args, out, name, sq=sq):
            x = args[0].reshape(-1, args[0].shape[-1]).double()                 # [tokens, in]
            sq[name] = (x * x).sum(0)

        hooks = [lin.register_forward_hook(lambda m, a, o, n=n: record(m, a, o, n))
                 for n, lin in lins.items()]
        _logits(model, calib)
        for h in hooks:
            h.remove()
        for n, lin in lins.items():
            lin.weight.data.copy_(wanda_prune(lin.weight.data, sq[n].sqrt().float(), sparsity)[0])
    return model


def test_pruning_driver_feeds_blocks_what_the_model_feeds_them(model, calib):
    """The driver captures block 0's inputs (hidden states plus the architecture's own
    arguments: masks, positions, RoPE or ALiBi) and runs the blocks itself; wrong arguments
    would change the activations and so Wanda's masks. Exact: no measured mask differs."""
    ours = copy.deepcopy(model)
    prune_(ours, calib, PruneConfig(method="wanda", sparsity=0.5, batch_size=3))   # 2 batches
    ref = _wanda_reference(model, calib, 0.5)
    for name, lin in arch.layer_linears(ours).items():
        assert torch.equal(lin.weight, ref.get_submodule(name).weight), name


# ---------------------------------------------------------------- smoothing and quantization

@pytest.mark.parametrize("method", ["smoothquant", "lae"])
def test_smoothing_maps_preserve_the_logits(model, calib, method):
    smoothed = copy.deepcopy(model)
    report = smooth_(smoothed, profile_activations(model, calib),
                     SmoothConfig(method=method, alpha=0.5))
    spec = arch.get_arch(model)
    assert len(report.groups) == 2 * len(spec.smooth_maps)
    norm = spec.smooth_maps[0][0]
    assert not torch.equal(arch.decoder_layers(model)[0].get_submodule(norm).weight,
                           arch.decoder_layers(smoothed)[0].get_submodule(norm).weight)
    # measured 2e-7 to 4e-7 relative: float rounding of the folded scales
    assert _rel(_logits(smoothed, calib), _logits(model, calib)) < 1e-5


def test_smoothing_post_norm_opt_is_refused_before_any_weight_changes():
    # OPT with do_layer_norm_before=False (OPT-350m) is post-norm: its layer norms normalize a
    # layer's output, they do not feed q/k/v and fc1, so folding scales into them changed the
    # logits by 0.85 relative when it was allowed; smooth_ refuses it instead
    model = _build("opt", do_layer_norm_before=False, word_embed_proj_dim=32)
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(arch.UnsupportedArchitectureError, match="post-norm"):
        smooth_(model, ids, SmoothConfig(method="smoothquant"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantize_swaps_every_decoder_linear_and_plans_keep_layers(model, calib):
    names = list(arch.layer_linears(model))
    quantized = copy.deepcopy(model)
    quantize_(quantized, QuantConfig(activations="per_token"))
    assert all(isinstance(quantized.get_submodule(n), W8A8Linear) for n in names)
    # W8A8 noise, not a broken model: measured 0.008 to 0.015 relative
    assert _rel(_logits(quantized, calib), _logits(model, calib)) < 0.05
    profile = profile_activations(model, calib)
    assert list(profile.layers) == names
    plan = rank_outlier_layers(profile, k=2).top
    kept = copy.deepcopy(model)
    quantize_(kept, QuantConfig(), plan=plan)
    assert [n for n in names if type(kept.get_submodule(n)) is nn.Linear] == \
        [n for n in names if n in plan]


def test_layer_sensitivity_replay_equals_the_full_forward(model, calib):
    """measure_layer_sensitivity reruns layers i.. from recorded inputs; each loss must be the
    full model's loss with that one layer W8A8-quantized."""
    names = list(arch.layer_linears(model))
    chosen = [names[0], names[-1]]
    result = measure_layer_sensitivity(model, calib, layers=chosen, batch_size=3)
    losses = dict(zip(result.frame.name, result.frame.loss, strict=True))
    for name in chosen:
        swapped = copy.deepcopy(model)
        parent, _, child = name.rpartition(".")
        setattr(swapped.get_submodule(parent), child,
                W8A8Linear.from_float(swapped.get_submodule(name)))
        logits = _logits(swapped, calib)
        want = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), calib[:, 1:].reshape(-1))
        assert losses[name] == pytest.approx(float(want), rel=1e-5), name


# ---------------------------------------------------------------- checkpoints and runtime

def test_load_model_and_streamed_pruning(model, calib, tmp_path):
    from workbench.streaming import prune_checkpoint

    model.save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    loaded, _ = load_model(str(tmp_path / "src"))
    assert loaded.config.model_type == model.config.model_type
    for (name, a), b in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    config = PruneConfig(method="wanda", sparsity=0.5)
    prune_checkpoint(tmp_path / "src", calib, config, tmp_path / "out")
    streamed, _ = load_model(str(tmp_path / "out"))
    in_memory = copy.deepcopy(model)
    prune_(in_memory, calib, config)
    for (name, a), b in zip(streamed.state_dict().items(), in_memory.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_lean_runtime_runs_llama_and_refuses_the_rest_clearly(model):
    from workbench import runtime

    if model.config.model_type == "llama":
        assert runtime.pack(model).forward_logits(torch.zeros(1, 3, dtype=torch.long)).shape \
            == (1, 3, VOCAB)
        return
    with pytest.raises(arch.UnsupportedArchitectureError, match="Llama family only"):
        runtime.pack(model)
