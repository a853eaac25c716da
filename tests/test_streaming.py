"""Models larger than memory: bf16 loading, pruning a checkpoint streamed block by block from
disk (equal to pruning it in memory), atomic output, and the memory errors."""

import pytest
import torch

from workbench import arch, data, streaming
from workbench.models import load_model, tiny_llama
from workbench.pruning import PruneConfig, prune_


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama saved in bf16 as a sharded checkpoint (several files and an index)."""
    model, tok = tiny_llama(seed=5, num_hidden_layers=3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-bf16"
    model.to(torch.bfloat16).save_pretrained(path, max_shard_size="60KB")
    tok.save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) > 1
    return path


@pytest.fixture(scope="module")
def calib():
    _, tok = tiny_llama()
    return data.calibration_set(tok, nsamples=4, seqlen=48)


def test_load_model_in_bf16_reads_the_checkpoint_dtype(checkpoint):
    model, _ = load_model(checkpoint, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    fp32, _ = load_model(checkpoint)
    for a, b in zip(model.parameters(), fp32.parameters(), strict=True):
        assert torch.equal(a.float(), b)


@pytest.mark.parametrize("cfg", [
    dict(method="sparsegpt", sparsity=0.5, blocksize=32),
    dict(method="wanda", sparsity=0.6, layer_sparsity="owl", owl_lambda=0.1),
    dict(method="ria", structure="2:4", refine="dsnot")])
def test_streamed_pruning_equals_in_memory_pruning(checkpoint, calib, tmp_path, cfg):
    config = PruneConfig(**cfg)
    out = tmp_path / "pruned"
    report = streaming.prune_checkpoint(checkpoint, calib, config, out)
    in_memory, _ = load_model(checkpoint, dtype=torch.bfloat16)
    expected = prune_(in_memory, calib, config)
    assert report.sparsity == expected.sparsity
    assert [r["target"] for r in report.layers] == [r["target"] for r in expected.layers]
    pruned, tok = load_model(out, dtype=torch.bfloat16)
    assert tok("abc").input_ids                      # tokenizer files came along
    for (name, a), b in zip(pruned.state_dict().items(), in_memory.state_dict().values(), strict=True):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b), name
    for name, mask in report.masks.items():
        assert torch.equal(mask, expected.masks[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]   # no temporary left


def test_blocks_are_freed_after_use(checkpoint):
    model, blocks, dtype = streaming.open_streamed(checkpoint)
    assert dtype == torch.bfloat16
    layers = arch.decoder_layers(model)
    assert all(p.device.type == "meta" for p in layers.parameters())
    assert model.model.embed_tokens.weight.device.type == "cpu"
    layer = blocks.load(1)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in layer.parameters())
    blocks.release(1, final=False)
    assert all(p.device.type == "meta" for p in layers.parameters())


def test_a_failed_streamed_prune_leaves_nothing(checkpoint, calib, tmp_path):
    out = tmp_path / "pruned"
    with pytest.raises(TypeError, match="calib"):
        streaming.prune_checkpoint(checkpoint, calib.float(), PruneConfig(), out)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="differ"):
        streaming.prune_checkpoint(checkpoint, calib, PruneConfig(), checkpoint)
    with pytest.raises(FileNotFoundError, match="config.json"):
        streaming.prune_checkpoint(tmp_path, calib, PruneConfig(), out)


def test_too_large_a_model_says_how_much_memory_it_needs(checkpoint, calib, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match=r"loading tiny-bf16 in float32 needs about .* GiB"):
        load_model(checkpoint)
    with pytest.raises(MemoryError, match=r"streaming tiny-bf16 needs about"):
        streaming.prune_checkpoint(checkpoint, calib, PruneConfig(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_peak_estimate_counts_one_block_not_the_model(checkpoint):
    """More blocks do not raise the estimate; calibration tokens do, linearly."""
    model, _, dtype = streaming.open_streamed(checkpoint)
    deep, _ = tiny_llama(seed=5, num_hidden_layers=12)
    base = streaming.streamed_peak_estimate(model, dtype, calib_tokens=0)
    assert streaming.streamed_peak_estimate(deep, dtype, calib_tokens=0) == base
    more = [streaming.streamed_peak_estimate(model, dtype, calib_tokens=n) - base for n in (100, 200)]
    assert more[1] == 2 * more[0] > 0


def test_shape_checkpoint_is_written_block_by_block_and_loads(tmp_path, monkeypatch, calib):
    from workbench import bench

    monkeypatch.setitem(bench.SHAPES, "mini-shape", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300))
    path = bench.save_shape_checkpoint("mini-shape", tmp_path / "mini")
    assert len(list(path.glob("block-*.safetensors"))) == 2
    model, tok = load_model(path, dtype=torch.bfloat16)
    assert model.config.num_key_value_heads == 2 and model.lm_head.weight.shape == (300, 64)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    q = model.model.layers[1].self_attn.q_proj.weight.detach().float()
    assert 0.015 < float(q.std()) < 0.025
    report = streaming.prune_checkpoint(path, calib, PruneConfig(method="wanda", sparsity=0.5),
                                        tmp_path / "mini-50")
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini", "mini-50"]
