"""The real embedded model: loading, caching, and accuracy numbers that mean something.

Marked slow (about two minutes together on 2 cores); `make test-fast` skips them.
"""

import shutil

import pytest
import torch

from workbench import cache, data, evaluate, models

pytestmark = pytest.mark.slow


def test_embedded_model_shape(real_model):
    model, tok = real_model
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == \
        ("llama", 30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert model.dtype == torch.float32 and not model.training
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)
    assert getattr(model.config, "quantization_config", None) is None


def test_damaged_model_cache_is_rebuilt(real_model, tmp_path, monkeypatch):
    model, _ = real_model
    cached = models.cache_root() / "models" / "smollm2-135m-fp32"
    assert (cached / "model.safetensors").is_file()      # real_model filled the cache
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    copy = tmp_path / "models" / "smollm2-135m-fp32"
    shutil.copytree(cached, copy)
    with open(copy / "model.safetensors", "r+b") as f:  # flip bytes inside the weights
        f.seek(-4096, 2)
        f.write(b"\xff" * 64)
    rebuilt, _ = models.load_model("smollm2-135m")
    assert cache.fingerprint_model(rebuilt) == cache.fingerprint_model(model)
    again, _ = models.load_model("smollm2-135m")       # and the repaired cache is used as is
    assert cache.fingerprint_model(again) == cache.fingerprint_model(model)


def test_perplexity_on_pydoc_is_sane(real_model):
    model, tok = real_model
    res = evaluate.perplexity(model, tok, data.perplexity_corpus("pydoc", "eval"), seqlen=512,
                              max_windows=8)
    assert res.n_windows == 8 and res.n_tokens == 8 * 511
    # a 135M model on Python's reference docs: far below uniform (49152), not implausibly low
    assert 4.0 < res.perplexity < 40.0


def test_one_step_arith_accuracy_well_above_zero(real_model):
    model, tok = real_model
    res = evaluate.task_accuracy(model, tok, data.arith_task("one_step", "test", n=48), fewshot=3)
    assert res.n == 48
    assert res.accuracy >= 0.15, res.by_kind
    # answers are parsed from the completions, not guessed: most completions state one
    parsed = sum(r["parsed"] is not None for r in res.records)
    assert parsed >= 40


def test_calibration_set_default_fits_the_embedded_tokenizer(real_model):
    _, tok = real_model
    calib = data.calibration_set(tok)
    assert calib.shape == (128, 512) and calib.dtype == torch.long
    assert int(calib.max()) < len(tok)


def test_lm_eval_bridge_with_limit(real_model):
    model, tok = real_model
    res = evaluate.lm_eval_tasks(model, tok, ["wb_arith_one_step"], limit=16, batch_size=16)
    assert res.n_samples["wb_arith_one_step"] == 16
    score = res.metrics["wb_arith_one_step"]["exact_match,strict-match"]
    # the harness sees the same skill as task_accuracy (about a third right on one-step)
    assert 0.1 <= score <= 0.8, score


@pytest.mark.parametrize("method", ["smoothquant", "lae"])
def test_smoothing_preserves_the_embedded_model(real_model, method):
    import copy

    from workbench.profiling import profile_activations
    from workbench.smoothing import SmoothConfig, smooth_

    model, tok = real_model
    calib = data.calibration_set(tok, nsamples=4, seqlen=256, seed=1)
    smoothed = copy.deepcopy(model)
    smooth_(smoothed, profile_activations(model, calib), SmoothConfig(method=method, alpha=0.5))
    probe = data.calibration_set(tok, nsamples=2, seqlen=128, seed=2)
    with torch.no_grad():
        ref, out = model(probe).logits, smoothed(probe).logits
    assert not torch.equal(model.model.layers[0].input_layernorm.weight,
                           smoothed.model.layers[0].input_layernorm.weight)
    rel = float((out - ref).norm() / ref.norm())
    assert rel <= 1e-4, rel

