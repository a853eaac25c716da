"""workbench.arch: every name of every ArchSpec resolves in a tiny model of its family, the one
layer-name parser inverts the names layer_linears gives, and the Llama names the runtime and
the GGUF writer use are arch.LLAMA's."""

from __future__ import annotations

import pytest

from workbench import arch
from workbench.models import tiny_llama


def _tiny(family: str):
    if family == "llama":
        return tiny_llama()[0]
    if family == "opt":
        from transformers import OPTConfig, OPTForCausalLM

        return OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                        ffn_dim=32, num_attention_heads=2,
                                        max_position_embeddings=32, word_embed_proj_dim=16))
    from transformers import MptConfig, MptForCausalLM

    return MptForCausalLM(MptConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, max_seq_len=32))


@pytest.mark.parametrize("family", ["llama", "opt", "mpt"])
def test_every_spec_name_resolves_in_a_tiny_model(family):
    model = _tiny(family)
    spec = arch.get_arch(model)
    assert spec.family == family
    for name in (spec.embed, spec.final_norm, spec.lm_head, spec.backbone):
        model.get_submodule(name)
    for layer in arch.decoder_layers(model):
        for name in (*spec.linears, spec.input_norm, spec.post_norm):
            layer.get_submodule(name)
    # the smoothing maps start at the two norms, attention's first
    assert [norm for norm, _ in spec.smooth_maps] == [spec.input_norm, spec.post_norm]


@pytest.mark.parametrize("family", ["llama", "opt", "mpt"])
def test_split_layer_name_inverts_layer_linears(family):
    model = _tiny(family)
    spec = arch.get_arch(model)
    names = list(arch.layer_linears(model))
    parsed = [arch.split_layer_name(n) for n in names]
    assert parsed == [(i, local) for i in range(len(arch.decoder_layers(model)))
                      for local in spec.linears]


def test_split_layer_name_of_names_outside_the_layers():
    assert arch.split_layer_name("lm_head") == (-1, "lm_head")
    assert arch.split_layer_name("model.embed_tokens") == (-1, "model.embed_tokens")
    assert arch.split_layer_name("model.layers.12.mlp.down_proj") == (12, "mlp.down_proj")
    assert arch.split_layer_name("3.self_attn.q_proj") == (3, "self_attn.q_proj")


def test_profiling_and_outliers_use_the_arch_parser():
    from workbench import outliers, profiling

    assert profiling.split_layer_name is arch.split_layer_name
    assert outliers.split_layer_name is arch.split_layer_name


def test_runtime_and_gguf_names_are_arch_llamas():
    from workbench import blocks
    from workbench.formats import gguf

    # llama.cpp's tensor names (convert_hf_to_gguf.py, LlamaModel), written out independently
    assert gguf.LAYER_TENSORS == {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    assert list(gguf.LAYER_TENSORS) == [  # the file's order
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
    assert blocks.SHORT_NAMES == {
        "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
        "self_attn.o_proj": "o_proj", "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj",
        "mlp.down_proj": "down_proj"}
    model = tiny_llama()[0]
    names = gguf.tensor_names(model.config)
    # tied embeddings: lm_head.weight (in the state_dict) is token_embd, not written again
    assert set(names.values()) == set(model.state_dict()) - {"lm_head.weight"}
