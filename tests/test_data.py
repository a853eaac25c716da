"""workbench.data: corpora split cleanly, calibration windows are deterministic and disjoint,
generated tasks are correct and leak-free, GSM8K parses as the raw file says."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from workbench import data, tasks
from workbench.hub import HubUnreachableError
from workbench.models import tiny_tokenizer

SHARED_GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------- corpora

def test_pydoc_calib_and_eval_partition_the_topics():
    from pydoc_data.topics import topics

    full = "\n\n".join(topics[k] for k in sorted(topics))
    calib = data.perplexity_corpus("pydoc", "calib")
    held_out = data.perplexity_corpus("pydoc", "eval")
    assert calib.text and held_out.text
    assert calib.text + "\n\n" + held_out.text == full
    assert held_out.text not in calib.text and calib.text not in held_out.text
    # calib is the shortest run of whole topics holding at least 60% of the characters
    texts = [topics[k] for k in sorted(topics)]
    heads = [k for k in range(1, len(texts)) if "\n\n".join(texts[:k]) == calib.text]
    assert len(heads) == 1
    head = heads[0]
    total = sum(map(len, texts))
    assert sum(map(len, texts[:head])) >= 0.6 * total > sum(map(len, texts[:head - 1]))
    # deterministic, and the aliases name the same texts
    assert data.perplexity_corpus("pydoc", "train").fingerprint == calib.fingerprint
    assert data.perplexity_corpus("pydoc", "test").fingerprint == held_out.fingerprint
    assert calib.fingerprint != held_out.fingerprint
    assert (calib.name, calib.split, held_out.split) == ("pydoc", "calib", "eval")


def test_local_corpus_rejects_unknown_split():
    with pytest.raises(ValueError, match="calib"):
        data.perplexity_corpus("pydoc", "validation")


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(ValueError) as err:
        data.perplexity_corpus("penn-treebank")
    for name in ("pydoc", "pydocs-prose", "wikitext2", "c4"):
        assert name in str(err.value)


def test_corpus_fingerprint_covers_name_split_and_text():
    base = data.Corpus("a", "eval", "text")
    assert len(base) == 4
    others = [data.Corpus("b", "eval", "text"), data.Corpus("a", "calib", "text"),
              data.Corpus("a", "eval", "text!")]
    assert all(o.fingerprint != base.fingerprint for o in others)
    assert data.Corpus("a", "eval", "text").fingerprint == base.fingerprint


def test_pydocs_prose_reads_sections_in_path_order(tmp_path, monkeypatch):
    files = {"howto/c.rst.txt": "c" * 60, "tutorial/a.rst.txt": "a" * 20,
             "tutorial/b.rst.txt": "b" * 20, "library/z.rst.txt": "not a prose section"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setenv("WORKBENCH_PYDOCS_DIR", str(tmp_path))
    assert data.perplexity_corpus("pydocs-prose", "calib").text == "c" * 60
    assert data.perplexity_corpus("pydocs-prose", "eval").text == "a" * 20 + "\n\n" + "b" * 20


def test_pydocs_prose_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PYDOCS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python3.11-doc"):
        data.perplexity_corpus("pydocs-prose")


def test_wikitext2_from_local_files_joins_rows(tmp_path, offline):
    rows = [" = Title = ", "", " First paragraph . ", " Second . "]
    jsonl = tmp_path / "wiki.test.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    corpus = data.perplexity_corpus("wikitext2", "test", data_files=str(jsonl))
    assert corpus.text == "\n\n".join(rows)
    assert (corpus.name, corpus.split) == ("wikitext2", "test")
    # a dict keyed by our split name, parquet this time, through the same loader
    import pandas as pd

    parquet = tmp_path / "wiki.train.parquet"
    pd.DataFrame({"text": ["alpha", "beta"]}).to_parquet(parquet)
    calib = data.perplexity_corpus("wikitext2", "calib", data_files={"calib": parquet})
    assert (calib.text, calib.split) == ("alpha\n\nbeta", "train")


def test_hub_corpus_offline_fails_fast(offline, monkeypatch):
    """Offline, a hub corpus is refused before any connection is tried or `datasets` is asked
    (either would wait through minutes of retries): both are replaced by recorders that must
    stay unused, so the check is on what is called, not on the clock."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("this test forbids network access")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=refuse))
    with pytest.raises(HubUnreachableError, match="data_files"):
        data.perplexity_corpus("wikitext2", "test")
    with pytest.raises(HubUnreachableError):
        data.perplexity_corpus("c4", "eval")
    assert calls == []
    with pytest.raises(ValueError, match="splits"):
        data.perplexity_corpus("c4", "test")


# ---------------------------------------------------------------- calibration windows

_NUMBERS = " ".join(f"w{i}" for i in range(6000))   # every window of >= 8 bytes is unique


def _stream(text: str) -> torch.Tensor:
    return torch.tensor(tiny_tokenizer()(text, add_special_tokens=False).input_ids)


def _starts(rows: torch.Tensor, stream: torch.Tensor) -> list[int]:
    """Where each row sits in the stream: found by its first 8 tokens, which are unique in
    _NUMBERS, then checked whole."""
    tokens, length = stream.tolist(), rows.shape[1]
    where: dict[tuple, list[int]] = {}
    for i in range(len(tokens) - length + 1):
        where.setdefault(tuple(tokens[i:i + 8]), []).append(i)
    found = []
    for row in rows.tolist():
        hits = [i for i in where.get(tuple(row[:8]), []) if tokens[i:i + length] == row]
        assert len(hits) == 1
        found.append(hits[0])
    return found


def test_calibration_set_shape_and_determinism():
    tok = tiny_tokenizer()
    a = data.calibration_set(tok, "pydoc", nsamples=8, seqlen=64, seed=0)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, data.calibration_set(tiny_tokenizer(), "pydoc", nsamples=8, seqlen=64))
    assert not torch.equal(a, data.calibration_set(tok, "pydoc", nsamples=8, seqlen=64, seed=1))
    corpus = data.perplexity_corpus("pydoc", "calib")
    assert torch.equal(a, data.calibration_set(tok, corpus, nsamples=8, seqlen=64))
    assert torch.equal(a, data.calibration_set(tok, corpus.text, nsamples=8, seqlen=64))


def test_calibration_windows_do_not_overlap():
    seqlen, stream = 64, _stream(_NUMBERS)
    offsets = set()
    for seed in range(4):
        rows = data.calibration_set(tiny_tokenizer(), _NUMBERS, nsamples=100, seqlen=seqlen, seed=seed)
        starts = _starts(rows, stream)
        ordered = sorted(starts)
        assert all(b - a >= seqlen for a, b in zip(ordered, ordered[1:], strict=False))
        assert starts != ordered               # returned in random order, not text order
        offsets.add(starts[0] % seqlen)
    assert len(offsets) > 1                    # the slot grid moves with the seed


def test_calibration_set_too_many_samples_names_the_maximum():
    seqlen, ntokens = 100, _stream(_NUMBERS).numel()
    most = ntokens // seqlen
    full = data.calibration_set(tiny_tokenizer(), _NUMBERS, nsamples=most, seqlen=seqlen)
    assert len(set(_starts(full, _stream(_NUMBERS)))) == most
    with pytest.raises(ValueError, match=rf"{ntokens} tokens.*at most {most} samples"):
        data.calibration_set(tiny_tokenizer(), _NUMBERS, nsamples=most + 1, seqlen=seqlen)
    with pytest.raises(ValueError):
        data.calibration_set(tiny_tokenizer(), _NUMBERS, nsamples=0, seqlen=seqlen)
    with pytest.raises(ValueError):
        data.calibration_set(tiny_tokenizer(), _NUMBERS, nsamples=1, seqlen=1)


# ---------------------------------------------------------------- answers

@pytest.mark.parametrize("text, expected", [
    ("The answer is 24.", 24),
    ("the answer is $1,200", 1200),
    ("answer is -3", -3),
    ("The answer is **7**", 7),
    ("The answer is: 2.5.", 2.5),
    ("The answer is 3. No wait, the answer is 5.", 5),
    ("I think it is 12.", None),
    ("no number", None),
])
def test_answer_from_text(text, expected):
    got = data.answer_from_text(text)
    assert got == expected and type(got) is type(expected)


def test_format_number():
    assert [data.format_number(x) for x in (24, 24.0, 0.5, -3)] == ["24", "24", "0.5", "-3"]


# ---------------------------------------------------------------- generated arithmetic

_STEP = re.compile(r"(\d+) ([-+x/]) (\d+) = (\d+)\.")
_MATH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b,
         "/": lambda a, b: a / b}


def _key(item: data.TaskItem) -> tuple:
    """(symbols, operands) recomputed from the solution, checking every step on the way."""
    steps = _STEP.findall(item.solution)
    assert steps and item.solution.endswith(f"The answer is {item.answer}.")
    value = int(steps[0][0])
    for x, sym, y, result in steps:
        assert int(x) == value and _MATH[sym](int(x), int(y)) == int(result)
        value = int(result)
    assert value == item.answer == data.answer_from_text(item.solution)
    operands = (int(steps[0][0]), *(int(s[2]) for s in steps))
    numbers = Counter(int(n) for n in re.findall(r"\d+", item.question))
    assert not Counter(operands) - numbers, "every operand is stated in the question"
    return tuple(s[1] for s in steps), operands


@pytest.mark.parametrize("kind", ["one_step", "two_step"])
def test_arith_answers_are_correct_and_splits_disjoint(kind):
    train, test = data.arith_task(kind, "train", n=500), data.arith_task(kind, "test", n=500)
    assert len(train) == len(test) == 500
    assert len({i.question for i in test}) == 500
    assert not {i.question for i in train} & {i.question for i in test}
    assert not {_key(i) for i in train} & {_key(i) for i in test}
    assert all(isinstance(i.answer, int) and i.answer >= 1 for i in (*train, *test))


@pytest.mark.parametrize("kind", ["one_step", "two_step"])
def test_arith_dev_split_is_disjoint_from_train_test_and_the_shots(kind):
    train, dev, test = (data.arith_task(kind, split, n=400) for split in ("train", "dev", "test"))
    keys = {name: {_key(i) for i in task} for name, task in
            (("train", train), ("dev", dev), ("test", test))}
    assert not keys["dev"] & keys["train"] and not keys["dev"] & keys["test"]
    assert not keys["train"] & keys["test"]
    assert not {_key(s) for s in dev.fewshot} & keys["dev"]     # no answer shown in a shot
    assert dev.fewshot == test.fewshot and dev.name == f"arith-{kind}-dev"
    assert len({i.question for i in dev}) == 400
    # every problem has exactly one split, and each split gets a share of them
    for op in tasks._KINDS[kind]:
        parts = [set(tasks._problems(op, s)) for s in ("train", "dev", "test")]
        assert sum(map(len, parts)) == len(set().union(*parts)) and all(parts)


def test_arith_one_step_is_balanced_over_operations():
    task = data.arith_task("one_step", "test", n=200)
    assert task.name == "arith-one_step-test"
    assert Counter(i.kind for i in task) == {"add": 50, "subtract": 50, "multiply": 50, "divide": 50}
    assert {_key(i)[0] for i in task if i.kind == "multiply"} == {("x",)}
    assert len({i.question.split(".")[-2] for i in task if i.kind == "subtract"}) >= 2


def test_arith_two_step_is_balanced_over_chains():
    task = data.arith_task("two_step", "test", n=100)
    assert {i.kind for i in task} == {"two_step"}
    assert sorted(Counter(_key(i)[0] for i in task).values()) == [25, 25, 25, 25]


def test_arith_is_deterministic_by_seed():
    a = data.arith_task("one_step", "test", n=50, seed=3)
    assert a == data.arith_task("one_step", "test", n=50, seed=3)
    assert a.fingerprint == data.arith_task("one_step", "test", n=50, seed=3).fingerprint
    assert a.fingerprint != data.arith_task("one_step", "test", n=50, seed=4).fingerprint
    assert a.to_records()[0]["question"] == a[0].question and len(a.to_records()) == 50


@pytest.mark.parametrize("kind", ["one_step", "two_step"])
def test_arith_fewshot_comes_from_train(kind):
    test, train = data.arith_task(kind, "test", n=1000), data.arith_task(kind, "train", n=300)
    shots = test.fewshot
    assert len(shots) >= 8 and shots == train.fewshot
    assert len({_key(s)[0] for s in shots}) == 4
    for shot in shots:
        symbols, operands = _key(shot)
        op = next(name for name in tasks._KINDS[kind] if tasks._OPS[name].symbols == symbols)
        assert tasks._split_of(op, operands) in ("train", "dev")    # never a test problem
    assert not {s.question for s in shots} & {i.question for i in test}
    assert not {s.question for s in shots} & {i.question for i in train}


def test_arith_rejects_bad_arguments():
    for kwargs in ({"kind": "three_step"}, {"split": "validation"}, {"n": 0}):
        with pytest.raises(ValueError):
            data.arith_task(**kwargs)
    with pytest.raises(ValueError, match="at most"):
        data.arith_task("one_step", "test", n=10**7)


# ---------------------------------------------------------------- GSM8K

def _raw_answer(raw: str) -> int | float:
    number = float(raw.split("####")[1].strip().replace(",", ""))
    return int(number) if number.is_integer() else number


@pytest.mark.skipif(not SHARED_GSM8K.is_dir(), reason="no shared GSM8K copy on this machine")
def test_gsm8k_from_the_shared_files(offline, monkeypatch):
    monkeypatch.delenv("WORKBENCH_GSM8K_DIR", raising=False)
    lines = (SHARED_GSM8K / "test.jsonl").read_text().splitlines()
    raw = {r["question"]: r["answer"] for r in map(json.loads, lines)}
    task = data.gsm8k("test", n=20)
    assert len(task) == 20 and task.name == "gsm8k-test"
    for item in task:
        expected = _raw_answer(raw[item.question])
        assert item.answer == expected and item.kind == "gsm8k"
        assert item.solution.endswith(f"The answer is {expected}.")
        assert "<<" not in item.solution and "####" not in item.solution
    assert task == data.gsm8k("test", n=20) and task != data.gsm8k("test", n=20, seed=1)
    train_lines = (SHARED_GSM8K / "train.jsonl").read_text().splitlines()[:8]
    assert [s.question for s in task.fewshot] == [json.loads(x)["question"] for x in train_lines]
    assert not {s.question for s in task.fewshot} & {i.question for i in data.gsm8k("train")}


def test_gsm8k_local_dir_override_and_missing(tmp_path, offline, monkeypatch):
    row = {"question": "How many?", "answer": "Add 600+400=<<600+400=1000>>1000.\n#### 1,000"}
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("WORKBENCH_GSM8K_DIR", str(tmp_path))
    (item,) = data.gsm8k("test")
    assert item.answer == 1000
    assert item.solution == "Add 600+400=1000.\nThe answer is 1000."
    monkeypatch.setenv("WORKBENCH_GSM8K_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere.*openai/gsm8k"):
        data.gsm8k("test")
