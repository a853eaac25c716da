"""The evaluation functions score a packed model (workbench.runtime.PackedModel) through its
HF face: perplexity equals the W8A8 fake-quant HF model's, greedy task accuracy runs on the
runtime's own batched generate and agrees with HF generate on the same weights, and the
lm-eval bridge accepts it."""

import copy

import pytest
import torch

from workbench import data, evaluate
from workbench.models import tiny_llama
from workbench.packed_lm import PackedCausalLM, as_causal_lm
from workbench.pruning import PruneConfig, prune_
from workbench.quant import QuantConfig, quantize_
from workbench.runtime import PackedModel, pack

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sparse():
    model, tok = tiny_llama(seed=0)
    prune_(model, None, PruneConfig(method="magnitude", sparsity=0.6))
    return model, tok


def _corpus(n=2000, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def test_packed_perplexity_equals_fake_quant_perplexity(sparse):
    model, tok = sparse
    fake = copy.deepcopy(model)
    quantize_(fake, QuantConfig(weights="per_channel", activations="per_token"))
    packed = pack(model, lm_head="fp32", n_threads=1)
    ref = evaluate.perplexity(fake, tok, _corpus(), seqlen=64, batch_size=3)
    got = evaluate.perplexity(packed, tok, _corpus(), seqlen=64, batch_size=3)
    assert got.n_tokens == ref.n_tokens and got.n_windows == ref.n_windows == 31
    assert got.perplexity == pytest.approx(ref.perplexity, rel=1e-3)
    # and the FP32 loop of the runtime equals the HF FP32 model
    dense = evaluate.perplexity(model, tok, _corpus(), seqlen=64)
    loop = evaluate.perplexity(PackedModel.from_fp32(model), tok, _corpus(), seqlen=64)
    assert loop.perplexity == pytest.approx(dense.perplexity, rel=1e-5)
    assert abs(got.perplexity - dense.perplexity) > 1e-6 * dense.perplexity   # INT8 did something


def test_packed_task_accuracy_matches_hf_generation_on_the_same_weights(sparse):
    model, tok = sparse
    task = data.arith_task("one_step", "test", n=6)
    # the runtime's FP32 loop and HF generate greedy-decode the same weights: same completions
    hf = evaluate.task_accuracy(model, tok, task, fewshot=1, batch_size=4, max_new_tokens=12)
    loop = evaluate.task_accuracy(PackedModel.from_fp32(model), tok, task, fewshot=1,
                                  batch_size=4, max_new_tokens=12)
    assert [r["completion"] for r in loop.records] == [r["completion"] for r in hf.records]
    assert loop.accuracy == hf.accuracy and loop.n == 6
    packed = evaluate.task_accuracy(pack(model, n_threads=1), tok, task, fewshot=1, batch_size=4,
                                    max_new_tokens=12)
    assert packed.n == 6 and 0 <= packed.accuracy <= 1 and all(r["completion"] for r in packed.records)


def test_face_generate_follows_hf_arguments(sparse):
    model, tok = sparse
    lm = as_causal_lm(PackedModel.from_fp32(model), eos_token_id=tok.eos_token_id)
    assert isinstance(lm, PackedCausalLM) and as_causal_lm(lm) is lm and as_causal_lm(model) is model
    ids = torch.tensor([[5, 6, 7, 8], [tok.pad_token_id, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    out = lm.generate(input_ids=ids, attention_mask=mask, max_length=10)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_length=10, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert out.shape[1] <= 10 and torch.equal(out, ref[:, :out.shape[1]])
    assert torch.allclose(lm(ids).logits, model(ids).logits, atol=1e-4)
    with pytest.raises(ValueError, match="greedily"):
        lm.generate(input_ids=ids, max_new_tokens=2, do_sample=True)
    with pytest.raises(TypeError):
        PackedCausalLM(model)


def test_lm_eval_accepts_a_packed_model(sparse):
    pytest.importorskip("lm_eval")
    model, tok = sparse
    result = evaluate.lm_eval_tasks(pack(model, n_threads=1), tok, ["wb_arith_one_step"], limit=2,
                                    n_test=4, n_train=8, max_gen_toks=8)
    assert result.n_samples["wb_arith_one_step"] == 2
    assert 0.0 <= result.metrics["wb_arith_one_step"]["exact_match,strict-match"] <= 1.0
