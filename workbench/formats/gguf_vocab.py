"""The tokenizer.* keys of a GGUF file: copied from another GGUF, or built from a Hugging Face
byte-level BPE tokenizer.

Built keys, as llama.cpp's vocabulary loader (llama-vocab.cpp) reads them:
  * tokenizer.ggml.model = "gpt2": byte-level BPE, tokens in their byte-to-unicode spelling
    ("Ġ" for a space), exactly as the Hugging Face vocabulary stores them;
  * tokens in id order and their types: CONTROL for special tokens, USER_DEFINED for other
    added tokens (matched verbatim in text), NORMAL for the rest;
  * merges as "left right" strings in rank order, from the backend tokenizer's JSON;
  * tokenizer.ggml.pre, the pre-tokenizer (see `llamacpp_pre`);
  * bos / eos / pad / unk ids, whether BOS / EOS are added, and the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf


def copy_tokenizer(writer: gguf.GGUFWriter, tokenizer_gguf: Path, vocab_size: int) -> None:
    """Every tokenizer.* key of another GGUF file, verbatim (vocab, merges, special ids,
    chat template): the tokenizer llama.cpp already accepted for this model."""
    fields = gguf.GGUFReader(tokenizer_gguf).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"{tokenizer_gguf} holds no tokenizer (no tokenizer.ggml.tokens)")
    if len(tokens.data) != vocab_size:
        raise ValueError(f"{tokenizer_gguf} has {len(tokens.data)} tokens, the model's vocab "
                         f"is {vocab_size}")
    for key, field in fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)


def _is_gpt2_byte_level(pre: dict) -> bool:
    return (pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", False)
            and pre.get("use_regex", True))


def llamacpp_pre(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for a Hugging Face pre-tokenizer (its JSON).

    "gpt-2" for a plain ByteLevel pre-tokenizer: with use_regex, Hugging Face's ByteLevel
    splits text with GPT-2's regex ('s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+|
    ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)), the one regex llama.cpp's GPT2 pre-type applies, so the
    pieces, and hence the token ids, are the same. "smollm" for Digits(individual_digits) then
    that ByteLevel (SmolLM's tokenizer): llama.cpp's SMOLLM pre-type splits off every digit
    (\\p{N}) first, then applies the same GPT-2 regex. Any other pre-tokenizer raises rather
    than tokenize differently from Hugging Face: copy a GGUF's tokenizer instead.
    """
    pre = pre_tokenizer or {}
    if _is_gpt2_byte_level(pre):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0] == {"type": "Digits", "individual_digits": True}
            and _is_gpt2_byte_level(parts[1])):
        return "smollm"
    raise ValueError(f"no llama.cpp pre-tokenizer is known to match {json.dumps(pre_tokenizer)}; "
                     "pass a GGUF file whose tokenizer llama.cpp accepted instead")


def bpe_merges(model: dict) -> list[str]:
    """The merges of a tokenizers BPE model (its JSON) as GGUF's "left right" strings, in rank
    order. tokenizers writes either that form or [left, right] pairs (since 0.20)."""
    merges = []
    for merge in model.get("merges", []):
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"BPE merge {merge!r} is not two space-free symbols; GGUF stores "
                             "merges as 'left right'")
        merges.append(" ".join(pair))
    return merges


def _added_bos_eos(tokenizer) -> tuple[bool, bool]:
    """(BOS prepended, EOS appended): whether tokenizer(text) adds them to the plain ids."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    extra = len(full) > len(plain)
    return (extra and bos is not None and full[0] == bos != plain[0],
            extra and eos is not None and full[-1] == eos != plain[-1])


def write_hf_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """The tokenizer.* keys of a Hugging Face fast byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer; "
                         "GGUF export reads its backend's BPE model")
    spec = json.loads(backend.to_str())
    if spec["model"].get("type") != "BPE" or spec.get("normalizer") is not None:
        raise ValueError(f"the tokenizer is a {spec['model'].get('type')} model with normalizer "
                         f"{spec.get('normalizer')}; GGUF export builds byte-level BPE only")
    pre = llamacpp_pre(spec.get("pre_tokenizer"))
    merges = bpe_merges(spec["model"])
    if not merges:
        # llama.cpp refuses a BPE vocabulary without merges, and gguf cannot store an empty array
        raise ValueError("the tokenizer has no BPE merges; llama.cpp needs at least one")
    n = len(tokenizer)
    if n != vocab_size:
        raise ValueError(f"the tokenizer has {n} tokens, the model's vocab is {vocab_size}")
    if sorted(tokenizer.get_vocab().values()) != list(range(n)):
        raise ValueError("the tokenizer's ids are not 0..n-1; GGUF lists tokens by id")

    added = tokenizer.added_tokens_decoder                  # id -> AddedToken
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    types = [gguf.TokenType.CONTROL if i in special
             else gguf.TokenType.USER_DEFINED if i in added
             else gguf.TokenType.NORMAL for i in range(n)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(n))))
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    add_bos, add_eos = _added_bos_eos(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
