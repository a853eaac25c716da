"""ResultCache and its parts: atomic writes, stable keys, corruption handling, fingerprints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workbench import cache
from workbench.cache import (
    CacheCorruptionWarning,
    ResultCache,
    fingerprint_data,
    fingerprint_model,
    hash_json,
    provenance,
    to_jsonable,
    write_bytes_atomic,
    write_json_atomic,
)


@dataclass
class PruneConfig:
    sparsity: float = 0.5
    blocksize: int = 128
    pattern: tuple[int, int] | None = None


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ResultCache:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return ResultCache()


# ---------------------------------------------------------------- atomic writes

def test_write_json_atomic_round_trips(tmp_path: Path):
    path = tmp_path / "deep" / "dir" / "out.json"
    obj = {"b": np.float32(0.25), "a": (1, 2), "cfg": PruneConfig(), "p": Path("/x"), "s": {2, 1}}
    write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == {
        "a": [1, 2], "b": 0.25, "cfg": {"sparsity": 0.5, "blocksize": 128, "pattern": None},
        "p": "/x", "s": [1, 2],
    }
    assert os.listdir(path.parent) == ["out.json"]


def test_unserializable_object_leaves_old_file_and_no_temp(tmp_path: Path):
    path = tmp_path / "out.json"
    path.write_text('{"old": true}')
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"x": object()})
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["out.json"]

    fresh = tmp_path / "fresh.json"
    with pytest.raises(TypeError):
        write_json_atomic(fresh, {"x": object()})
    assert not fresh.exists()
    assert os.listdir(tmp_path) == ["out.json"]


def test_failure_after_temp_file_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Fail between writing the temp file and renaming it: the temp must not survive.
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_bytes_atomic(path, b"new content")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


# ---------------------------------------------------------------- keys

def test_key_is_stable_and_sensitive_to_every_input(store: ResultCache):
    base = store.key({"a": 1, "b": [1, 2]}, model_fp="m", data_fp="d")
    assert base == store.key({"b": [1, 2], "a": 1}, model_fp="m", data_fp="d")
    assert len(base) == 64 and int(base, 16) >= 0
    others = {
        store.key({"a": 2, "b": [1, 2]}, model_fp="m", data_fp="d"),
        store.key({"a": 1, "b": [2, 1]}, model_fp="m", data_fp="d"),
        store.key({"a": 1, "b": [1, 2]}, model_fp="m2", data_fp="d"),
        store.key({"a": 1, "b": [1, 2]}, model_fp="m", data_fp="d2"),
    }
    assert base not in others and len(others) == 4


def test_key_accepts_dataclass_configs(store: ResultCache):
    assert store.key(PruneConfig()) == store.key(PruneConfig())
    assert store.key(PruneConfig()) != store.key(PruneConfig(sparsity=0.6))
    # the config class is part of the key: a plain dict with the same fields is another config
    assert store.key(PruneConfig(pattern=(2, 4))) != store.key(
        {"sparsity": 0.5, "blocksize": 128, "pattern": [2, 4]}
    )


def test_to_jsonable_rejects_non_str_keys():
    # {1: x} and {"1": x} would serialize alike; the hash must not merge them.
    with pytest.raises(TypeError, match="keys must be str"):
        hash_json({1: "x"})
    assert to_jsonable({"t": torch.tensor([1, 2]), "n": np.int64(3)}) == {"t": [1, 2], "n": 3}


def test_cache_root_follows_env(store: ResultCache, tmp_path: Path):
    assert store.root == tmp_path / "cache" / "results"
    assert not store.root.exists()  # created on first write, not before


# ---------------------------------------------------------------- get / put / get_or_compute

def test_get_or_compute_computes_once_and_refresh_recomputes(store: ResultCache):
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"ppl": 12.5, "shape": (2, 3), "n": np.int64(len(calls))}

    first = store.get_or_compute(PruneConfig(), compute, model_fp="m")
    second = store.get_or_compute(PruneConfig(), compute, model_fp="m")
    assert len(calls) == 1
    assert first == second == {"ppl": 12.5, "shape": [2, 3], "n": 1}
    assert len(store) == 1 and store.key(PruneConfig(), model_fp="m") in store

    third = store.get_or_compute(PruneConfig(), compute, model_fp="m", refresh=True)
    assert len(calls) == 2 and third["n"] == 2
    assert store.get(store.key(PruneConfig(), model_fp="m"))["n"] == 2

    store.get_or_compute(PruneConfig(), compute, model_fp="other")
    assert len(calls) == 3 and len(store) == 2
    assert store.clear() == 2 and len(store) == 0


def test_entry_holds_record_provenance_and_checksum(store: ResultCache):
    key = store.key({"x": 1})
    path = store.put(key, {"acc": 0.75}, provenance={"who": "test"})
    assert path == store.root / key[:2] / f"{key}.json"
    entry = json.loads(path.read_text())
    assert entry == {
        "key": key, "record": {"acc": 0.75}, "provenance": {"who": "test"},
        "checksum": hash_json({"acc": 0.75}),
    }
    assert store.get(key) == {"acc": 0.75}
    assert store.get(store.key({"x": 2})) is None


def test_put_rejects_non_dict_record(store: ResultCache):
    with pytest.raises(TypeError, match="list"):
        store.put(store.key({}), [1, 2])  # type: ignore[arg-type]
    assert len(store) == 0


def test_path_rejects_keys_that_are_not_hashes(store: ResultCache):
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:20])


def _flip_value(path: Path) -> None:
    entry = json.loads(path.read_text())
    entry["record"]["ppl"] = 1.0  # valid JSON, but the checksum no longer matches
    path.write_text(json.dumps(entry))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xfe not json at all")


def _wrong_key(path: Path) -> None:
    entry = json.loads(path.read_text())
    entry["key"] = "0" * 64
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("corrupt", [_truncate, _flip_value, _garbage, _wrong_key])
def test_corrupted_entry_warns_is_deleted_and_recomputed(store: ResultCache, corrupt):
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"ppl": 9.0}

    store.get_or_compute({"c": 1}, compute)
    key = store.key({"c": 1})
    corrupt(store.path(key))

    with pytest.warns(CacheCorruptionWarning, match="corrupted cache entry"):
        assert store.get(key) is None
    assert not store.path(key).exists()

    corrupt(store.put(key, {"ppl": 9.0}))
    with pytest.warns(CacheCorruptionWarning):
        assert store.get_or_compute({"c": 1}, compute) == {"ppl": 9.0}
    assert len(calls) == 2
    assert store.get(key) == {"ppl": 9.0}  # rewritten valid: no warning, no recompute


# ---------------------------------------------------------------- fingerprints

def test_fingerprint_data_equal_inputs_hash_equal():
    def make() -> dict:
        return {"ids": torch.arange(6).reshape(2, 3), "text": ["a", "b"], "raw": b"\x00",
                "arr": np.linspace(0, 1, 5), "cfg": PruneConfig()}

    assert fingerprint_data(make()) == fingerprint_data(make())
    assert len(fingerprint_data(make())) == 64


def test_fingerprint_data_changes_with_any_element():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    t2 = t.clone()
    t2[2, 3] += 1
    a = np.arange(10, dtype=np.int64)
    a2 = a.copy()
    a2[0] = -1
    assert fingerprint_data(t) != fingerprint_data(t2)
    assert fingerprint_data(a) != fingerprint_data(a2)
    assert fingerprint_data("hello") != fingerprint_data("hellp")
    assert fingerprint_data(["a", "b"]) != fingerprint_data(["b", "a"])
    assert fingerprint_data([t, "x"]) != fingerprint_data([t2, "x"])
    assert fingerprint_data({"a": 1, "b": 2}) == fingerprint_data({"b": 2, "a": 1})
    # Same bytes, different shape: the shape must enter the hash.
    assert fingerprint_data(t) != fingerprint_data(t.reshape(4, 3))
    # A non-contiguous view hashes as its contiguous copy.
    assert fingerprint_data(t.T) == fingerprint_data(t.T.contiguous())


def test_fingerprint_data_sees_dtype():
    assert fingerprint_data(torch.ones(4, dtype=torch.float32)) != fingerprint_data(
        torch.ones(4, dtype=torch.float64)
    )
    assert fingerprint_data(np.ones(4, np.float32)) != fingerprint_data(np.ones(4, np.float64))
    # bfloat16 has no numpy dtype but must still hash.
    assert fingerprint_data(torch.ones(4, dtype=torch.bfloat16)) != fingerprint_data(
        torch.ones(4, dtype=torch.float16)
    )


def test_fingerprint_data_rejects_unknown_types():
    with pytest.raises(TypeError, match="object"):
        fingerprint_data(object())


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def test_fingerprint_model_is_stable_and_read_only():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp = fingerprint_model(model)
    assert fp == fingerprint_model(model) == fingerprint_model(_tiny_model())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fingerprint_model_changes_with_one_weight():
    model = _tiny_model()
    fp = fingerprint_model(model)
    with torch.no_grad():
        model[1].weight[1, 2] += 1e-3
    assert fingerprint_model(model) != fp


def test_fingerprint_model_handles_tied_weights():
    def tied() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
        model[1].weight = model[0].weight  # shared Parameter, like tied LM heads
        return model

    model = tied()
    fp = fingerprint_model(model)
    assert fp == fingerprint_model(tied())
    # Untied copies with equal values are a different model structure.
    untied = tied()
    untied[1].weight = nn.Parameter(untied[0].weight.detach().clone())
    assert fingerprint_model(untied) != fp
    # Editing the shared weight changes the fingerprint.
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0
    assert fingerprint_model(model) != fp


# ---------------------------------------------------------------- provenance

def test_provenance_has_the_listed_fields():
    prov = provenance()
    assert {
        "workbench", "git_commit", "git_dirty", "python", "platform", "libraries",
        "cpu", "cpu_flags", "threads", "timestamp",
    } <= prov.keys()
    assert isinstance(prov["threads"], int) and prov["threads"] >= 1
    assert prov["libraries"]["torch"] is not None and "lm-eval" in prov["libraries"]
    assert prov["cpu_flags"] == sorted(prov["cpu_flags"])
    assert prov["timestamp"].endswith("+00:00")
    assert prov["git_dirty"] in (True, False, None)
    json.dumps(prov)  # must be storable as is
