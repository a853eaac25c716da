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
    # Measured 10.907 (the README's 11.15 is over all 63 windows), to the last digit the same
    # at 1 and 2 threads: the score is deterministic given the weights and the corpus. 0.5%
    # covers float summation order on another CPU or BLAS build and is far below what a
    # damaged model moves; a different corpus (pydoc topics come with the CPython build:
    # measured on 3.11.7) shows in the fingerprint in the message
    assert res.perplexity == pytest.approx(10.907, rel=0.005), res.to_dict()


def test_one_step_arith_accuracy_well_above_zero(real_model):
    model, tok = real_model
    res = evaluate.task_accuracy(model, tok, data.arith_task("one_step", "test", n=48), fewshot=3)
    assert res.n == 48
    # Measured 16 of 48 right (0.333; 0.355 over the 200 items in results/eval) and 47 parsed,
    # the same on every run: the 48 items are fixed and decoding is greedy, so the only noise
    # is float rounding flipping a near-tie on another CPU. 2 items either way allows that,
    # and is tighter than the sample's own spread (a 95% interval of about +-6 items)
    right = round(res.accuracy * res.n)
    assert 14 <= right <= 18, res.by_kind
    # answers are parsed from the completions, not guessed: nearly every completion states
    # one (measured 47 of 48; the same 2-item allowance)
    parsed = sum(r["parsed"] is not None for r in res.records)
    assert parsed >= 45, parsed


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
    # the harness sees the same skill as task_accuracy (about a third right on one-step).
    # Measured 6 of 16 (0.375) on every run; 2 items either way for float near-ties, as above
    assert 4 / 16 <= score <= 8 / 16, score


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

