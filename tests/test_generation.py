"""Streaming generation (workbench.generation) and the `generate` / `chat` CLI on tiny models:
the stream's greedy tokens equal PackedModel.generate's and Hugging Face generate's, a stop
token ends it, its counts and timings, the streamed text; the CLI on a saved checkpoint, a
scripted chat, bad --model paths, and `--save` on prune and distill."""

import builtins
import json

import pytest
import torch

from workbench import cli, formats, generation, runtime
from workbench.models import load_model, tiny_llama


@pytest.fixture(scope="module")
def varied():
    """A tiny Llama whose greedy continuation is not one repeated token (init std 0.3)."""
    return tiny_llama(seed=0, initializer_range=0.3)


@pytest.fixture
def prompt(varied):
    return generation.prompt_ids(varied[1], "Hello there")                     # [1, T]


def _new(out: torch.Tensor, T: int) -> list[int]:
    return out[0, T:].tolist()


# ---------------------------------------------------------------- the stream

def test_greedy_stream_equals_packed_generate(varied, prompt):
    packed = runtime.pack(varied[0])
    T = prompt.shape[1]
    got = list(generation.stream_tokens(packed, prompt, 24))
    assert got == _new(packed.generate(prompt, 24), T) and len(set(got)) > 3


def test_sampled_stream_equals_packed_generate(varied, prompt):
    packed = runtime.pack(varied[0])
    got = list(generation.stream_tokens(packed, prompt, 16, do_sample=True, temperature=0.8,
                                        top_k=5, seed=3))
    want = packed.generate(prompt, 16, do_sample=True, temperature=0.8, top_k=5, seed=3)
    assert got == _new(want, prompt.shape[1])


def test_hf_and_fp32_runtimes_equal_hf_greedy_generate(varied, prompt):
    model, tok = varied
    T = prompt.shape[1]
    want = _new(model.generate(prompt, max_new_tokens=24, do_sample=False,
                               pad_token_id=tok.pad_token_id), T)
    want = want[:want.index(tok.eos_token_id)] if tok.eos_token_id in want else want
    runner, label = generation.prepare(model, "hf")
    assert runner is model and label == "hf"
    assert list(generation.stream_tokens(model, prompt, 24)) == want
    fp32, label = generation.prepare(model, "fp32")
    assert label == "fp32" and generation.packed_runtime(fp32) == "fp32"
    assert list(generation.stream_tokens(fp32, prompt, 24)) == want
    with torch.inference_mode():           # and their logits agree to float32 rounding
        torch.testing.assert_close(fp32.forward_logits(prompt), model(prompt).logits,
                                   rtol=1e-4, atol=1e-4)


def test_stop_token_ends_the_stream_and_stats_count_tokens(varied, prompt):
    packed = runtime.pack(varied[0])
    full = list(generation.stream_tokens(packed, prompt, 24))
    i = next(i for i, t in enumerate(full) if i >= 2 and t not in full[:i])   # a first occurrence
    stream = generation.stream_tokens(packed, prompt, 24, stop_ids=[full[i]])
    assert list(stream) == full[:i]
    s = stream.stats
    assert s.stopped == "stop" and s.generated == i and s.decode_tokens == i
    assert s.prefill_tokens == prompt.shape[1]
    assert s.prefill_s > 0 and s.decode_s > 0 and s.prefill_tok_s > 0 and s.decode_tok_s > 0
    whole = generation.stream_tokens(packed, prompt, 5)
    assert len(list(whole)) == 5 and whole.stats.decode_tokens == 4
    assert whole.stats.stopped == "length"
    assert "prefill " in whole.stats.summary() and " | decode 4 tokens " in whole.stats.summary()


def test_stop_ids_from_tokenizer_and_generation_config(varied):
    model, tok = varied
    assert generation.stop_ids(model, tok) == (tok.eos_token_id,)
    assert generation.stop_ids(runtime.pack(model), tok) == (tok.eos_token_id,)


def test_runtime_options_that_do_not_apply_are_refused(varied):
    model, _ = varied
    packed = runtime.pack(model)
    assert generation.prepare(packed) == (packed, "int8")
    assert generation.prepare(packed, "int8", n_threads=1)[0].n_threads == 1
    for bad in ("fp32", "hf"):
        with pytest.raises(ValueError, match="packed"):
            generation.prepare(packed, bad)
    with pytest.raises(ValueError, match="runtime must be one of"):
        generation.prepare(model, "int4")
    with pytest.raises(ValueError, match="one prompt"):
        generation.stream_tokens(packed, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="temperature"):
        generation.stream_tokens(packed, torch.zeros(1, 3, dtype=torch.long), 4, do_sample=True,
                                 temperature=0)


def test_non_llama_models_run_on_hf_only():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()
    with pytest.raises(ValueError, match="use runtime 'hf'"):
        generation.prepare(model, "int8")
    ids = torch.tensor([[1, 2, 3]])
    stream = generation.stream_tokens(model, ids, 6)
    want = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert list(stream) == _new(want, 3)


def test_stream_text_waits_for_whole_characters():
    tok = tiny_llama(seed=0)[1]
    ids = tok("é ü 日本", add_special_tokens=False).input_ids    # byte tokens: 2-3 per char
    pieces = list(generation.stream_text(tok, iter(ids + [tok.eos_token_id])))
    assert "".join(pieces) == "é ü 日本" and all("\ufffd" not in p for p in pieces)
    assert len(pieces) < len(ids)


def test_prompt_ids_with_and_without_the_chat_template():
    tok = tiny_llama(seed=0)[1]
    chat = tok.decode(generation.prompt_ids(tok, "hi")[0])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(generation.prompt_ids(tok, "hi", chat_template=False)[0]) == "hi"
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        generation.prompt_ids(tok, "hi")


# ---------------------------------------------------------------- the CLI

@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama(seed=0, initializer_range=0.3)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_cli_runtime_names_match_generation():
    assert cli.RUNTIME_NAMES == generation.RUNTIMES


def test_generate_streams_text_and_prints_stats(checkpoint, capsys):
    model, tok = load_model(str(checkpoint))
    ids = generation.prompt_ids(tok, "Hello there")
    want = list(generation.stream_tokens(runtime.pack(model), ids, 12,
                                         stop_ids=generation.stop_ids(model, tok)))
    args = ["generate", "--model", str(checkpoint), "--prompt", "Hello there",
            "--max-new-tokens", "12", "--threads", "1"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode(want, skip_special_tokens=True) + "\n"
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"prefill {ids.shape[1]} tokens ") and " tok/s | decode " in line
    assert line.endswith("(int8 runtime, hf)")
    assert cli.main([*args, "--runtime", "hf", "--no-chat-template"]) == 0
    assert capsys.readouterr().err.strip().endswith("(hf runtime, hf)")


def test_generate_usage_errors(checkpoint, capsys, tmp_path):
    missing = tmp_path / "nowhere"
    assert cli.main(["generate", "--model", str(missing), "--prompt", "x"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(checkpoint), "--prompt", "x",
                     "--temperature", "0.5"]) == 2
    assert "--sample" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(checkpoint), "--prompt", "x", "--sample",
                     "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(checkpoint), "--prompt", "x",
                     "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err


def test_chat_keeps_history_and_resets(checkpoint, capsys, monkeypatch):
    lines = iter(["hello", "again", "/reset", "fresh", "/exit", "never read"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    prompts = []
    real = generation.stream_tokens

    def spy(model, input_ids, *a, **k):
        prompts.append(input_ids)
        return real(model, input_ids, *a, **k)

    monkeypatch.setattr(generation, "stream_tokens", spy)
    assert cli.main(["chat", "--model", str(checkpoint), "--max-new-tokens", "6",
                     "--runtime", "fp32"]) == 0
    assert next(lines) == "never read"
    tok = load_model(str(checkpoint))[1]
    first, second, third = (tok.decode(p[0]) for p in prompts)
    assert first == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert second.startswith(first) and second.endswith("<|im_start|>user\nagain<|im_end|>\n"
                                                         "<|im_start|>assistant\n")
    assert third == "<|im_start|>user\nfresh<|im_end|>\n<|im_start|>assistant\n"
    assert capsys.readouterr().err.count("(fp32 runtime, hf)") == 3


def test_chat_ends_at_end_of_input(checkpoint, monkeypatch, capsys):
    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr(builtins, "input", eof)
    assert cli.main(["chat", "--model", str(checkpoint)]) == 0


# ---------------------------------------------------------------- --save

def test_prune_save_writes_loadable_checkpoints(checkpoint, tmp_path, capsys):
    save = tmp_path / "saved"
    assert cli.main(["prune", "--model", str(checkpoint), "--methods", "magnitude",
                     "--sparsities", "0.5", "--structures", "unstructured,2:4", "--tasks", "ppl",
                     "--quick", "--nsamples", "4", "--seqlen", "64", "--name", "s",
                     "--results", str(tmp_path / "results"), "--save", str(save)]) == 0
    assert sorted(p.name for p in save.iterdir()) == ["magnitude-0.5", "magnitude-2of4"]
    model, _ = load_model(str(save / "magnitude-0.5"))
    weights = [m.weight for n, m in model.named_modules() if n.endswith("proj")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(zeros - 0.5) < 0.02
    steps = json.loads((save / "magnitude-2of4" / "recipe.json").read_text())["steps"]
    assert steps[0] == {"step": "load", "config": {"model": str(checkpoint)}}
    assert steps[1]["step"] == "prune" and steps[1]["config"]["structure"] == "2:4"


def test_distill_save_writes_the_students(checkpoint, tmp_path):
    save = tmp_path / "students"
    assert cli.main(["distill", "--model", str(checkpoint), "--quick", "--sparsities", "0.5",
                     "--nsamples", "2", "--seqlen", "64", "--eval-n", "2", "--name", "tiny",
                     "--results", str(tmp_path / "results"), "--save", str(save)]) == 0
    assert sorted(p.name for p in save.iterdir()) == ["CE-0.5-seed0", "SquareHead+CE-0.5-seed0"]
    steps = json.loads((save / "CE-0.5-seed0" / "recipe.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["load", "sft", "prune", "distill"]
    assert steps[3]["config"]["method"] == "CE" and steps[3]["config"]["squarehead"] == 0.0
    assert steps[2]["config"]["sparsity"] == 0.5
    model, _ = load_model(str(save / "SquareHead+CE-0.5-seed0"))
    assert abs(runtime.pack(model).summary()["density"].iloc[0] - 0.5) < 0.05


def test_generate_on_a_to_hf_checkpoint_through_open_model(varied, tmp_path, capsys):
    model, tok = varied
    formats.to_hf(model, tok, tmp_path / "hf")
    assert cli.main(["generate", "--model", str(tmp_path / "hf"), "--prompt", "Hi",
                     "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().err.strip().endswith("(int8 runtime, hf)")


def test_generate_on_a_packed_directory(varied, tmp_path, capsys):
    model, tok = varied
    runtime.pack(model).save(tmp_path / "packed", tokenizer=tok)
    args = ["generate", "--model", str(tmp_path / "packed"), "--prompt", "Hi",
            "--max-new-tokens", "4"]
    assert cli.main(args) == 0
    assert capsys.readouterr().err.strip().endswith("(int8 runtime, packed)")
    assert cli.main([*args, "--runtime", "hf"]) == 2
    assert "packed" in capsys.readouterr().err


def test_open_model_errors_name_the_path(tmp_path, capsys):
    bad = tmp_path / "empty"
    bad.mkdir()
    assert cli.main(["generate", "--model", str(bad), "--prompt", "x"]) == 2
    assert str(bad) in capsys.readouterr().err
