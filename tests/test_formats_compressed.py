"""The compressed-tensors sparse-bitmask + INT8 format: our writer and reader agree exactly
(weights are q * scale, zeros kept, logits and packed logits the same), a directory built by
hand from the documented layout loads, compressed-tensors==0.14.0.1 itself reads ours and
writes what we read, and bad directories give errors naming the file and tensor."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from workbench import formats, runtime
from workbench.arch import layer_linears
from workbench.models import load_model, tiny_llama
from workbench.pruning import PruneConfig, prune_
from workbench.quant import quantize_weight

VOCAB = 259
LIB = ("compressed-tensors==0.14.0.1 not installed: pip install -e .[compressed] (that pulls "
       "transformers<5; to keep ours: pip install --no-deps compressed-tensors==0.14.0.1 loguru)")


def _ids(B=2, T=7, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _quantized_copy(model):
    """model with every decoder linear holding q * scale: what the format stores."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for mod in layer_linears(out).values():
            q, scale = quantize_weight(mod.weight, "per_channel")
            mod.weight.copy_(q.float() * scale[:, None])
    return out


@pytest.fixture(scope="module")
def pruned():
    model, tok = tiny_llama(seed=3)
    prune_(model, None, PruneConfig(method="magnitude", sparsity=0.5))
    return model, tok


@pytest.fixture(scope="module")
def saved(pruned, tmp_path_factory):
    return formats.to_compressed_tensors(*pruned, tmp_path_factory.mktemp("ct") / "m")


def _copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "copy")


def _edit_config(path, fn):
    config = json.loads((path / "config.json").read_text())
    fn(config)
    (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


# ---------------------------------------------------------------- writer -> reader

def test_writer_layout_and_config(saved, pruned):
    config = json.loads((saved / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "int-quantized"
    assert config["sparsity_config"]["format"] == "sparse-bitmask"
    assert config["ignore"] == [] or "lm_head" in config["ignore"][0]
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["symmetric"]) == (8, "channel", True)
    assert config["config_groups"]["group_0"]["input_activations"]["dynamic"] is True
    tensors = load_file(saved / "model.safetensors")
    p = "model.layers.0.mlp.down_proj"
    out, inp = layer_linears(pruned[0])[p].weight.shape
    assert tensors[f"{p}.compressed"].dtype == torch.int8
    assert tensors[f"{p}.bitmask"].dtype == torch.uint8
    assert tuple(tensors[f"{p}.bitmask"].shape) == (out, -(-inp // 8))
    assert tensors[f"{p}.row_offsets"].dtype == torch.int64
    assert tensors[f"{p}.shape"].tolist() == [out, inp]
    assert tuple(tensors[f"{p}.weight_scale"].shape) == (out, 1)
    assert f"{p}.weight" not in tensors
    assert formats.is_compressed_tensors(saved)


def test_reader_gives_q_times_scale_zeros_kept_and_same_logits(saved, pruned):
    model, tok = load_model(saved)
    assert tok is not None and model.workbench_recipe[0]["step"] == "prune"
    for name, mod in layer_linears(pruned[0]).items():
        q, scale = quantize_weight(mod.weight, "per_channel")
        got = layer_linears(model)[name].weight
        assert torch.equal(got, q.float() * scale[:, None]), name
        assert torch.equal(got == 0, q == 0), name
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, _quantized_copy(pruned[0])(ids).logits)


def test_packed_reloaded_model_gives_the_packed_original_logits(saved, pruned):
    model, _ = load_model(saved)
    ids = _ids()
    assert torch.equal(runtime.pack(model).forward_logits(ids),
                       runtime.pack(pruned[0]).forward_logits(ids))


def test_sharded_checkpoint_reads(saved, tmp_path):
    path = _copy(saved, tmp_path)
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for file, names in halves.items():
        save_file({k: tensors[k] for k in names}, path / file, metadata={"format": "pt"})
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ns in halves.items() for k in ns}}))
    model, _ = load_model(path)
    ref, _ = load_model(saved)
    for (n, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def _legacy_names(tensors):
    """SparseML's older writers: P.weight.compressed, P.weight.bitmask, ..."""
    for key in [k for k in tensors if k.rsplit(".", 1)[-1] in ("compressed", "bitmask",
                                                                 "row_offsets", "shape")]:
        stem, _, param = key.rpartition(".")
        tensors[f"{stem}.weight.{param}"] = tensors.pop(key)


def _quantized_only(tensors):
    """format int-quantized without sparsity: int8 P.weight beside P.weight_scale."""
    from workbench.formats.compressed import bitmask_decompress

    for key in [k for k in tensors if k.endswith(".bitmask")]:
        stem = key.removesuffix(".bitmask")
        parts = {p: tensors.pop(f"{stem}.{p}") for p in ("compressed", "bitmask",
                                                          "row_offsets", "shape")}
        tensors[f"{stem}.weight"] = bitmask_decompress(parts, stem)


@pytest.mark.parametrize("variant", [_legacy_names, _quantized_only])
def test_legacy_names_and_quantized_only_directories_read_alike(saved, tmp_path, variant):
    path = _copy(saved, tmp_path)
    _edit_tensors(path, variant)
    if variant is _quantized_only:
        _edit_config(path, lambda c: c["quantization_config"].update(sparsity_config={}))
    model, _ = load_model(path)
    ref, _ = load_model(saved)
    for (n, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_dense_size_is_counted_and_too_large_a_checkpoint_refused_before_reading(
        saved, pruned, monkeypatch):
    from workbench import streaming
    from workbench.formats.compressed import dense_numel

    model = pruned[0]
    dense = {p.data_ptr(): p.numel() for p in model.parameters()}        # tied lm_head once
    assert dense_numel(saved) == sum(dense.values())
    monkeypatch.setattr(streaming, "available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match=r"loading m in float32 needs about"):
        load_model(saved)


# ---------------------------------------------------------------- a hand-made directory

def _pack_bits_by_hand(mask: np.ndarray) -> np.ndarray:
    """bit j % 8 of byte j // 8 of each row: little-endian, as documented."""
    out = np.zeros((mask.shape[0], -(-mask.shape[1] // 8)), dtype=np.uint8)
    for i, j in zip(*np.nonzero(mask), strict=True):
        out[i, j // 8] |= np.uint8(1 << (j % 8))
    return out


def test_hand_made_fixture_loads_to_the_expected_weights(tmp_path):
    ref, tok = tiny_llama(seed=5)
    rng = np.random.default_rng(0)
    tensors, expected = {}, {}
    linears = layer_linears(ref)
    for name, mod in linears.items():
        out, inp = mod.weight.shape
        q = rng.integers(-127, 128, size=(out, inp)).astype(np.int8)
        q[rng.random((out, inp)) < 0.5] = 0
        scale = rng.uniform(1e-3, 1e-2, size=(out, 1)).astype(np.float32)
        mask = q != 0
        tensors[f"{name}.compressed"] = q[mask]
        tensors[f"{name}.bitmask"] = _pack_bits_by_hand(mask)
        tensors[f"{name}.row_offsets"] = np.concatenate(
            [[0], np.cumsum(mask.sum(1))[:-1]]).astype(np.int64)
        tensors[f"{name}.shape"] = np.array([out, inp], dtype=np.int64)
        tensors[f"{name}.weight_scale"] = scale
        expected[f"{name}.weight"] = torch.from_numpy(q.astype(np.float32) * scale)
    for key, value in ref.state_dict().items():
        if key.rsplit(".", 1)[0] not in linears and key != "lm_head.weight":    # tied
            tensors[key] = value.numpy()
            expected[key] = value
    save_numpy(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ref.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    group = {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                                "strategy": "channel", "dynamic": False},
             "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                   "strategy": "token", "dynamic": True}}
    _edit_config(tmp_path, lambda c: c.update(quantization_config={
        "quant_method": "compressed-tensors", "format": "int-quantized",
        "quantization_status": "compressed", "config_groups": {"group_0": group},
        "ignore": ["lm_head"], "sparsity_config": {
            "format": "sparse-bitmask", "targets": ["Linear"], "ignore": ["lm_head"],
            "global_sparsity": 0.5, "sparsity_structure": "unstructured"}}))
    model, _ = load_model(tmp_path)
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---------------------------------------------------------------- errors

def test_other_formats_and_group_wise_scales_are_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    _edit_config(path, lambda c: c["quantization_config"]["sparsity_config"].update(
        format="sparse-24-bitmask"))
    with pytest.raises(ValueError, match="config.json.*sparse-24-bitmask"):
        load_model(path)
    _edit_config(path, lambda c: c["quantization_config"].update(
        format="pack-quantized", sparsity_config={}))
    with pytest.raises(ValueError, match="pack-quantized"):
        load_model(path)
    _edit_config(path, lambda c: c["quantization_config"].update(format="int-quantized"))
    _edit_config(path, lambda c: c["quantization_config"]["config_groups"]["group_0"]
                 ["weights"].update(strategy="group", group_size=16))
    with pytest.raises(ValueError, match="group-wise"):
        load_model(path)


def test_group_wise_scale_tensor_and_nonzero_zero_point_are_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    p = "model.layers.1.self_attn.o_proj"
    _edit_tensors(path, lambda t: t.update({f"{p}.weight_scale": torch.ones(64, 4)}))
    with pytest.raises(ValueError, match=f"{p}.weight_scale.*group-wise"):
        load_model(path)
    shutil.copy(saved / "model.safetensors", path / "model.safetensors")
    _edit_tensors(path, lambda t: t.update({f"{p}.weight_zero_point": torch.ones(64, 1,
                                                                             dtype=torch.int8)}))
    with pytest.raises(ValueError, match=f"{p}.weight_zero_point is nonzero"):
        load_model(path)


def test_missing_misshapen_and_inconsistent_tensors_are_named(saved, tmp_path):
    path = _copy(saved, tmp_path)
    p = "model.layers.0.mlp.up_proj"
    _edit_tensors(path, lambda t: t.pop(f"{p}.row_offsets"))
    with pytest.raises(ValueError, match=f"{p}.row_offsets missing"):
        load_model(path)
    shutil.copy(saved / "model.safetensors", path / "model.safetensors")
    _edit_tensors(path, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ValueError, match="missing model.norm.weight"):
        load_model(path)
    shutil.copy(saved / "model.safetensors", path / "model.safetensors")
    _edit_tensors(path, lambda t: t.update({f"{p}.compressed": t[f"{p}.compressed"][:-3]}))
    with pytest.raises(ValueError, match=f"model.safetensors: {p}.compressed"):
        load_model(path)
    shutil.copy(saved / "model.safetensors", path / "model.safetensors")
    _edit_config(path, lambda c: c.update(intermediate_size=128))
    with pytest.raises(ValueError, match=r"tensor model.layers.0.mlp.\w+_proj.weight has shape"):
        load_model(path)


def test_corrupted_or_truncated_safetensors_name_the_file(saved, tmp_path):
    path = _copy(saved, tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: corrupted or truncated"):
        load_model(path)
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="model.safetensors: corrupted or truncated"):
        load_model(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors: missing"):
        load_model(path)


# ---------------------------------------------------------------- compressed-tensors itself

def _library():
    try:
        import compressed_tensors
    except ImportError as e:           # absent, or installed --no-deps without one of its deps
        pytest.skip(f"{LIB} ({e})")
    if compressed_tensors.__version__ != "0.14.0.1":
        pytest.skip(f"{LIB} (found {compressed_tensors.__version__})")
    return compressed_tensors


def test_round_trip_compressed_tensors_library_decompresses_our_directory(saved, pruned):
    _library()
    from compressed_tensors.compressors import ModelCompressor

    compressor = ModelCompressor.from_pretrained(str(saved))
    stored = load_file(saved / "model.safetensors")
    # the bitmask exactly: its sparsity decompressor gives back our INT8 weights
    dense = dict(compressor.sparsity_compressor.decompress(str(saved)))
    for name, mod in layer_linears(pruned[0]).items():
        q, _ = quantize_weight(mod.weight, "per_channel")
        assert torch.equal(dense[f"{name}.weight"], q), name
    # the whole path: its in-memory scales are float16, so equal to that rounding
    model, _ = tiny_llama(seed=9)
    compressor.decompress(str(saved), model)
    for name, mod in layer_linears(pruned[0]).items():
        q, _ = quantize_weight(mod.weight, "per_channel")
        want = q.float() * stored[f"{name}.weight_scale"]
        torch.testing.assert_close(layer_linears(model)[name].weight.float(), want,
                                   rtol=1e-3, atol=0)


def test_round_trip_compressed_tensors_library_directory_reads_here(pruned, tmp_path):
    _library()
    import copy

    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import BitmaskConfig
    from compressed_tensors.quantization import (
        QuantizationConfig,
        apply_quantization_config,
        preset_name_to_scheme,
    )

    model = copy.deepcopy(pruned[0])
    qconfig = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(
        "W8A8", ["Linear"])}, ignore=["lm_head"], format="int-quantized")
    apply_quantization_config(model, qconfig)
    for mod in layer_linears(model).values():
        _, scale = quantize_weight(mod.weight, "per_channel")
        mod.weight_scale.data = scale[:, None]
    compressor = ModelCompressor(sparsity_config=BitmaskConfig(targets=["Linear"],
                                                               ignore=["lm_head"]),
                                 quantization_config=qconfig)
    state = compressor.compress(model)
    state = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    pruned[0].config.save_pretrained(tmp_path)
    compressor.update_config(str(tmp_path))
    pruned[1].save_pretrained(tmp_path)
    got, _ = load_model(tmp_path)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(got(ids).logits, _quantized_copy(pruned[0])(ids).logits)
