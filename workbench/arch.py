"""Per-architecture tables: where the decoder layers are, which Linear layers and norms they
hold, and which norm feeds which linears (the smoothing maps of SmoothQuant / LAE); and the
one parser of a module's full name into its decoder layer index and local path.

Architecture differences live here as data, so every step walks any supported model with
the same code. Add a family by adding one ArchSpec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no entry in ARCHITECTURES."""


@dataclass(frozen=True)
class ArchSpec:
    family: str
    layers: str                       # dotted path from the CausalLM to the decoder layer list
    linears: tuple[str, ...]          # Linear layers inside one decoder layer, in forward order
    # norm inside a decoder layer -> the linears it feeds (scales folded norm -> linears)
    smooth_maps: tuple[tuple[str, tuple[str, ...]], ...]
    embed: str                        # token embedding
    final_norm: str
    lm_head: str = "lm_head"
    backbone: str = "model"           # the decoder without its LM head: returns hidden states
    input_norm: str = ""              # norm inside a decoder layer before attention
    post_norm: str = ""               # norm inside a decoder layer before the MLP


# The Llama family's names, also read without a model: the runtime's decoder blocks
# (workbench.blocks) and the GGUF tensor map (workbench.formats.gguf) are Llama-only.
LLAMA = ArchSpec(
    family="llama",
    layers="model.layers",
    linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    smooth_maps=(
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ),
    embed="model.embed_tokens",
    final_norm="model.norm",
    input_norm="input_layernorm",
    post_norm="post_attention_layernorm",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "opt": ArchSpec(
        family="opt",
        layers="model.decoder.layers",
        linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                 "self_attn.out_proj", "fc1", "fc2"),
        smooth_maps=(
            ("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("final_layer_norm", ("fc1",)),
        ),
        embed="model.decoder.embed_tokens",
        final_norm="model.decoder.final_layer_norm",
        input_norm="self_attn_layer_norm",
        post_norm="final_layer_norm",
    ),
    "mpt": ArchSpec(
        family="mpt",
        layers="transformer.blocks",
        linears=("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"),
        smooth_maps=(("norm_1", ("attn.Wqkv",)), ("norm_2", ("ffn.up_proj",))),
        embed="transformer.wte",
        final_norm="transformer.norm_f",
        backbone="transformer",
        input_norm="norm_1",
        post_norm="norm_2",
    ),
}


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def get_arch(model_or_config) -> ArchSpec:
    """The ArchSpec for a model or its config; raises UnsupportedArchitectureError otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported: "
            + ", ".join(supported_architectures())
        )
    return ARCHITECTURES[model_type]


def smoothing_maps(model_or_config) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The norm -> linears groups whose scales smoothing may fold, or
    UnsupportedArchitectureError where a norm does not feed those linears: OPT with
    do_layer_norm_before=False (OPT-350m) is post-norm, its layer norms normalize a layer's
    output, so folding scales into them would change the model."""
    spec = get_arch(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    if spec.family == "opt" and not getattr(config, "do_layer_norm_before", True):
        raise UnsupportedArchitectureError(
            "smoothing needs each norm to feed the linears it scales; this OPT model is "
            "post-norm (do_layer_norm_before=False, as OPT-350m), where self_attn_layer_norm "
            "and final_layer_norm normalize the layer's output: quantize it without smoothing")
    return spec.smooth_maps


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a supported CausalLM."""
    return model.get_submodule(get_arch(model).layers)


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack under the LM head (Hugging Face's `model.model` for Llama): its
    forward returns hidden states (last_hidden_state after the final norm), no logits."""
    return model.get_submodule(get_arch(model).backbone)


def lm_head(model: nn.Module) -> nn.Module:
    return model.get_submodule(get_arch(model).lm_head)


def layer_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every decoder Linear by its full module name, in layer then forward order."""
    spec = get_arch(model)
    out: dict[str, nn.Linear] = {}
    # children(), not iteration: names and types only, so a layer list that materializes its
    # layers when iterated (bench's streamed shape models) is not made to
    for i, layer in enumerate(decoder_layers(model).children()):
        for name in spec.linears:
            out[f"{spec.layers}.{i}.{name}"] = layer.get_submodule(name)
    return out


_LAYER_NAME = re.compile(r"^(?:.*?\.)?(\d+)\.(.+)$")  # "model.layers.3.mlp.up_proj" → 3, "mlp.up_proj"


def split_layer_name(name: str) -> tuple[int, str]:
    """(decoder layer index, module path inside the layer) of a full module name, the inverse of
    the names layer_linears gives; (-1, name) if name has no index (lm_head, embeddings)."""
    m = _LAYER_NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else (-1, name)
