"""The packed format on disk and the Hugging Face export: a saved packed model loads
memory-mapped to bit-identical logits on both engines; bad files give errors naming the file
and tensor; a failed save leaves nothing half-written; to_hf loads in plain transformers to
identical logits; the recipe (the chain of configs) travels with every saved model."""

import json

import numpy as np
import pytest
import torch

from workbench import formats, packed_io, recipe, runtime, tensorfile
from workbench.formats import open_model, to_hf
from workbench.kernels import SparseInt8Linear
from workbench.models import load_model, tiny_llama
from workbench.pruning import PruneConfig, prune_
from workbench.quant import QuantConfig, quantize_

VOCAB = 259


def _ids(B, T, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pruned():
    model, tok = tiny_llama(seed=3)
    prune_(model, None, PruneConfig(method="magnitude", sparsity=0.6))
    return model, tok


def _logits(pm, ids, steps=4):
    """Prefill logits, then `steps` greedy decode steps' logits, stacked."""
    out = [pm.prefill(ids, max_new_tokens=steps)]
    for _ in range(steps):
        out.append(pm.decode_step(out[-1].argmax(-1)))
    return torch.stack(out)


def _base_memmap(arr) -> bool:
    while arr is not None and not isinstance(arr, np.memmap):
        arr = arr.base
    return isinstance(arr, np.memmap)


@pytest.mark.parametrize("engine", ["native", "torch"])
@pytest.mark.parametrize("lm_head", ["int8", "fp32"])
def test_saved_packed_model_loads_bit_identical(pruned, tmp_path, engine, lm_head):
    model, tok = pruned
    plan = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.k_proj"]   # FP32, unfused q/k/v
    pm = runtime.pack(model, plan=plan, lm_head=lm_head, engine=engine)
    pm.save(tmp_path / "p", tokenizer=tok)
    back = runtime.load_packed(tmp_path / "p", engine=engine)
    ids = _ids(2, 7)
    assert torch.equal(_logits(back, ids), _logits(pm, ids))
    assert back.summary().equals(pm.summary())
    assert back.nbytes == pm.nbytes and back.tied == pm.tied
    # the kernels read the mapped file in place, 64-byte aligned: nothing was copied
    packed = [m.packed for b in back.layers for m in b.modules() if isinstance(m, SparseInt8Linear)]
    assert packed and all(_base_memmap(p.values) and p.values.ctypes.data % 64 == 0 for p in packed)
    assert back.layers[1].down_proj.weight.shape == (64, 160)
    assert not hasattr(back.layers[0], "qkv") and hasattr(back.layers[0], "gate_up")


def test_packed_directory_carries_tokenizer_recipe_and_provenance(pruned, tmp_path):
    model, tok = pruned
    pm = runtime.pack(model)
    pm.save(tmp_path / "p", tokenizer=tok)
    config = json.loads((tmp_path / "p" / packed_io.CONFIG_FILE).read_text())
    assert [s["step"] for s in config["recipe"]] == ["prune", "pack"]
    assert config["recipe"][0]["config"]["sparsity"] == 0.6
    assert config["format_version"] == packed_io.FORMAT_VERSION and config["provenance"]["git_commit"]
    loaded, tok2, kind = open_model(tmp_path / "p")
    assert kind == "packed" and isinstance(loaded, runtime.PackedModel)
    assert tok2("a b").input_ids == tok("a b").input_ids
    assert loaded.recipe == config["recipe"]
    # any safetensors reader opens the weights file
    from safetensors.numpy import load_file

    plain = load_file(tmp_path / "p" / packed_io.WEIGHTS_FILE)
    assert np.array_equal(plain["layers.0.qkv.values"], pm.layers[0].qkv.inner.packed.values)


def test_a_failed_save_leaves_the_old_directory(pruned, tmp_path):
    model, tok = pruned
    pm = runtime.pack(model)
    pm.save(tmp_path / "p")
    before = sorted(p.name for p in (tmp_path / "p").iterdir())

    class Broken:
        def save_pretrained(self, path):
            (path / "tokenizer.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        pm.save(tmp_path / "p", tokenizer=Broken())
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]        # no temp dir left
    runtime.load_packed(tmp_path / "p")


@pytest.fixture
def saved(pruned, tmp_path):
    runtime.pack(pruned[0]).save(tmp_path / "p")
    return tmp_path / "p"


def test_truncated_weights_name_the_file_and_tensor(saved):
    file = saved / packed_io.WEIGHTS_FILE
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"weights\.safetensors: tensor '.*' ends at byte .* \(truncated\)"):
        runtime.load_packed(saved)
    file.write_bytes(data[:5])
    with pytest.raises(ValueError, match="too short"):
        runtime.load_packed(saved)


def test_a_flipped_byte_names_its_tensor(saved):
    arrays, _ = tensorfile.read(saved / packed_io.WEIGHTS_FILE)
    raw = bytearray((saved / packed_io.WEIGHTS_FILE).read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:start])
    lo = header["layers.1.gate_up.values"]["data_offsets"][0]
    raw[start + lo] ^= 0x5A
    (saved / packed_io.WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="'layers.1.gate_up.values' fails its CRC32 check"):
        runtime.load_packed(saved)
    # unchecked, the kernel's own structure check (values against the stored row sums) refuses it
    with pytest.raises(ValueError, match="'layers.1.gate_up' is not a valid packed layer.*row sum"):
        runtime.load_packed(saved, verify=False)


def _rewrite(saved, drop=(), replace=None):
    arrays, meta = tensorfile.read(saved / packed_io.WEIGHTS_FILE)
    arrays = {k: np.array(v) for k, v in arrays.items() if k not in drop}
    arrays.update(replace or {})
    tensorfile.write(saved / packed_io.WEIGHTS_FILE, arrays, meta)


def test_missing_extra_and_misshapen_tensors_are_named(saved):
    _rewrite(saved, drop=["layers.0.o_proj.scale"])
    with pytest.raises(ValueError, match="tensor 'layers.0.o_proj.scale' is missing"):
        runtime.load_packed(saved)
    _rewrite(saved, replace={"layers.0.o_proj.scale": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match=r"'layers.0.o_proj.scale' is float32 \(3,\), the config says float32 \(64,\)"):
        runtime.load_packed(saved)
    _rewrite(saved, replace={"layers.0.o_proj.scale": np.ones(64, np.float32), "stray": np.ones(2)})
    with pytest.raises(ValueError, match=r"tensors \['stray'\] are not in packed.json"):
        runtime.load_packed(saved)


def test_inconsistent_packed_structure_is_refused_not_run(saved):
    arrays, _ = tensorfile.read(saved / packed_io.WEIGHTS_FILE)
    rp = np.array(arrays["layers.0.gate_up.row_ptr"])
    rp[1] += 1                                    # row 0 claims a value its mask does not have
    _rewrite(saved, replace={"layers.0.gate_up.row_ptr": rp})
    with pytest.raises(ValueError, match="layer 'layers.0.gate_up' is not a valid packed layer"):
        runtime.load_packed(saved)


def test_unknown_version_format_and_paths(saved, tmp_path):
    file = saved / packed_io.CONFIG_FILE
    config = json.loads(file.read_text())
    file.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        runtime.load_packed(saved)
    file.write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(ValueError, match="not a workbench-packed config"):
        runtime.load_packed(saved)
    file.write_text("{not json")
    with pytest.raises(ValueError, match="packed.json: not JSON"):
        runtime.load_packed(saved)
    with pytest.raises(FileNotFoundError, match="not a packed model directory"):
        runtime.load_packed(tmp_path / "nowhere")


# ---------------------------------------------------------------- Hugging Face export

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_to_hf_loads_in_plain_transformers_to_identical_logits(pruned, tmp_path, dtype):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_llama(seed=3)
    model.load_state_dict(pruned[0].state_dict())
    recipe.set_recipe(model, recipe.recipe_of(pruned[0]))
    for param in model.parameters():          # as load_model does: RoPE's inv_freq stays FP32,
        param.data = param.data.to(dtype)     # as it is in a model transformers loads
    to_hf(model, tok, tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = _ids(2, 9)
    with torch.no_grad():
        got, want = back(ids).logits, model(ids).logits
        assert torch.equal(got, want), (got - want).abs().max()
    assert back.dtype == dtype
    w = back.model.layers[0].mlp.up_proj.weight
    assert abs((w == 0).float().mean().item() - 0.6) < 0.01
    steps = json.loads((tmp_path / "hf" / recipe.FILE).read_text())["steps"]
    assert [s["step"] for s in steps] == ["prune"]
    loaded, _ = load_model(tmp_path / "hf")
    assert recipe.recipe_of(loaded) == steps
    assert open_model(tmp_path / "hf")[2] == "hf"


def test_to_hf_refuses_fake_quantized_models_and_non_models(tmp_path):
    model, tok = tiny_llama()
    quantize_(model, QuantConfig())
    with pytest.raises(ValueError, match="not nn.Linear"):
        to_hf(model, tok, tmp_path / "hf")
    with pytest.raises(TypeError, match="PackedModel is saved with .save"):
        to_hf(runtime.pack(tiny_llama()[0]), tok, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_formats_names_resolve_lazily():
    assert formats.to_hf is to_hf and "open_model" in dir(formats)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        formats.nope  # noqa: B018


def test_steps_record_their_configs_without_changing_the_fingerprint():
    import copy

    from workbench import cache

    model, _ = tiny_llama(seed=1)
    prune_(model, None, PruneConfig(method="magnitude", sparsity=0.5))
    before = cache.fingerprint_model(model)
    recipe.record(model, "note", {"why": "test"})
    assert cache.fingerprint_model(model) == before
    twin = copy.deepcopy(model)
    quantize_(twin, QuantConfig())
    assert [s["step"] for s in recipe.recipe_of(model)] == ["prune", "note"]
    steps = recipe.recipe_of(twin)
    assert [s["step"] for s in steps] == ["prune", "note", "quantize"]
    assert steps[0]["config"] == json.loads(json.dumps(PruneConfig(method="magnitude", sparsity=0.5).to_dict()))
    assert steps[2]["config"]["kept_fp32"] == []
    with pytest.raises(TypeError, match="step 'bad' is not JSON-serializable"):
        recipe.record(model, "bad", {"x": object()})
    with pytest.raises(ValueError, match="a recipe is a list"):
        recipe.set_recipe(model, [{"no step": 1}])
