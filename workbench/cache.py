"""Content-hashed result store with provenance.

A result is keyed by the hash of what produced it: the step's config, a fingerprint of the
model weights and one of the data, and the workbench version. Each entry is one JSON file

    {"key": key, "record": record, "provenance": {...}, "checksum": hash_json(record)}

written atomically (workbench.atomic: temp file in the same directory, fsync, `os.replace`),
so a crash never leaves half an entry behind; an entry whose checksum does not match is discarded with a
`CacheCorruptionWarning` and recomputed, never trusted.

All hashes are full sha256 hex digests (64 characters).

One key scheme for every computed point of the workbench (a score, a sweep row, a pruned or
trained model), whichever entry point asks for it (CLI, notebook, sweep, recovery driver):

    key = store.key({"step": <what is computed>, **settings}, model_fp=<input model>,
                    data_fp=<input data>)

and one mechanism, `get_or_compute` / `fetch` (record, whether it was cached); points that
also have weights go through workbench.points.cached_model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Re-exported: callers write files and hash configs through cache.* as they always have.
from workbench.atomic import atomic_directory as atomic_directory
from workbench.atomic import write_bytes_atomic as write_bytes_atomic
from workbench.atomic import write_json_atomic as write_json_atomic
from workbench.atomic import write_text_atomic as write_text_atomic
from workbench.cpuinfo import cpu_model, kernel_flags
from workbench.jsonable import hash_json as hash_json
from workbench.jsonable import to_jsonable as to_jsonable


def workbench_version() -> str:
    try:
        return importlib.metadata.version("workbench")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def cache_root() -> Path:
    """$WORKBENCH_CACHE, else ~/.cache/workbench. Not created here: callers create on write."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/workbench").expanduser()


# ---------------------------------------------------------------- fingerprints

def _feed_header(h: Any, *parts: object) -> None:
    # Length-prefixed so that no two different sequences of parts feed the same bytes.
    text = ":".join(str(p) for p in parts).encode("utf-8")
    h.update(len(text).to_bytes(8, "little"))
    h.update(text)


def _feed_tensor(h: Any, t: torch.Tensor) -> None:
    """dtype, shape and raw bytes of a contiguous CPU copy (no copy if already one)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    _feed_header(h, "tensor", t.dtype, tuple(t.shape))
    # Flatten before reinterpreting: .view(uint8) needs a last dim, and bf16 has no numpy dtype.
    raw = t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    h.update(raw.nbytes.to_bytes(8, "little"))
    h.update(raw.data)  # hashlib reads the buffer directly: no Python loop, no copy


def _feed_data(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        _feed_tensor(h, obj)
    elif isinstance(obj, (np.ndarray, np.generic)):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.hasobject:
            raise TypeError("cannot fingerprint a numpy array of Python objects (dtype=object)")
        _feed_header(h, "ndarray", arr.dtype.str, arr.shape)  # dtype.str includes byte order
        h.update(arr.nbytes.to_bytes(8, "little"))
        h.update(arr.reshape(-1).view(np.uint8).data)
    elif isinstance(obj, str):
        _feed_header(h, "str", obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _feed_header(h, "bytes", len(data))
        h.update(data)
    elif obj is None or isinstance(obj, (bool, int, float)):
        _feed_header(h, type(obj).__name__, repr(obj))
    elif isinstance(obj, (list, tuple)):
        _feed_header(h, "list", len(obj))
        for x in obj:
            _feed_data(h, x)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _feed_data(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    elif isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("cannot fingerprint a dict with non-str keys")
        _feed_header(h, "dict", len(obj))
        for k in sorted(obj):
            _feed_header(h, "key", k)
            _feed_data(h, obj[k])
    else:
        raise TypeError(f"cannot fingerprint an object of type {type(obj).__name__}")


def fingerprint_data(obj: Any) -> str:
    """sha256 hex of the content of obj: str, bytes, numbers, arrays, tensors, containers of them.

    Lists are order-sensitive, dicts key-sorted; dtype and shape enter the hash, so equal
    values in float32 and float64 fingerprint differently.
    """
    h = hashlib.sha256()
    _feed_data(h, obj)
    return h.hexdigest()


def fingerprint_model(model: torch.nn.Module) -> str:
    """sha256 hex of class name, config JSON and each state_dict entry: name, dtype, shape, bytes.

    Tied weights are hashed once; the later names record which earlier name they alias, so
    tying itself is part of the fingerprint. The model is only read.
    """
    h = hashlib.sha256()
    _feed_header(h, "model", type(model).__name__)
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_string"):
        config_json = config.to_json_string()
    elif config is not None:
        config_json = json.dumps(to_jsonable(config), sort_keys=True)
    else:
        config_json = ""
    _feed_header(h, "config", config_json)

    first_name: dict[tuple, str] = {}  # storage identity -> first state_dict name holding it
    for name, value in sorted(model.state_dict().items()):
        _feed_header(h, "entry", name)
        if not isinstance(value, torch.Tensor):
            _feed_data(h, value)  # e.g. extra_state; raises TypeError if it cannot be hashed
            continue
        if value.device.type == "meta":
            raise ValueError(f"{name} is on the meta device: there are no weights to fingerprint")
        # data_ptr alone would merge a tensor with a view of its first rows; add shape/stride.
        ident = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if value.numel() and ident in first_name:
            _feed_header(h, "alias", value.dtype, tuple(value.shape), first_name[ident])
            continue
        first_name[ident] = name
        _feed_tensor(h, value)
    return h.hexdigest()


# ---------------------------------------------------------------- provenance

_LIBRARIES = (
    "torch", "transformers", "numpy", "datasets", "tokenizers",
    "safetensors", "accelerate", "lm-eval", "pandas",
)


def _library_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def provenance() -> dict:
    """Where a result came from: code version, libraries, CPU (workbench.cpuinfo: its model and
    the flags among KERNEL_FLAGS), threads and time (UTC)."""
    commit = _git("rev-parse", "--short", "HEAD")
    # --no-optional-locks: a read-only status must not take .git/index.lock from the user.
    status = _git("--no-optional-locks", "status", "--porcelain")
    return {
        "workbench": workbench_version(),
        "git_commit": (commit or "").strip() or None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {name: _library_version(name) for name in _LIBRARIES},
        "cpu": cpu_model(),
        "cpu_flags": kernel_flags(),
        "threads": torch.get_num_threads(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


_provenance = provenance  # ResultCache.put has a parameter named provenance that shadows it


# ---------------------------------------------------------------- the store

class CacheCorruptionWarning(UserWarning):
    """A cache entry failed validation; it was deleted and will be recomputed."""


_KEY = re.compile(r"[0-9a-f]{64}")


class ResultCache:
    """JSON records under root/<key[:2]>/<key>.json, keyed by config + model + data + version."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_root() / "results"

    def key(self, config: Any, model_fp: str = "", data_fp: str = "") -> str:
        # A config dataclass's type enters the key: PruneConfig and another config class with
        # the same fields and values describe different computations.
        kind = type(config).__qualname__ if dataclasses.is_dataclass(config) else None
        return hash_json({"config": config, "config_type": kind, "model": model_fp,
                          "data": data_fp, "workbench": workbench_version()})

    def path(self, key: str) -> Path:
        # Keys are sha256 hex from key(); anything else could name a path outside root.
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"cache keys are 64 lowercase hex characters, got {key!r}")
        return self.root / key[:2] / f"{key}.json"

    def _discard(self, path: Path, why: str) -> None:
        message = f"corrupted cache entry {path} ({why}); recomputing"
        warnings.warn(message, CacheCorruptionWarning, stacklevel=3)
        with contextlib.suppress(OSError):
            path.unlink()

    def get(self, key: str) -> dict | None:
        """The stored record, or None if absent or corrupted (then warned about and deleted)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            self._discard(path, f"unreadable: {type(err).__name__}")
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            self._discard(path, "wrong key")
            return None
        record = entry.get("record")
        if not isinstance(record, dict) or entry.get("checksum") != hash_json(record):
            self._discard(path, "checksum mismatch")
            return None
        return record

    def put(self, key: str, record: dict, provenance: dict | None = None) -> Path:
        if not isinstance(record, dict):
            raise TypeError(f"cache records must be dicts, got {type(record).__name__}")
        # Checksum the stored form, so the record read back by get() hashes identically.
        record = to_jsonable(record)
        entry = {
            "key": key,
            "record": record,
            "provenance": provenance if provenance is not None else _provenance(),
            "checksum": hash_json(record),
        }
        return write_json_atomic(self.path(key), entry)

    def get_or_compute(
        self,
        config: Any,
        compute: Callable[[], dict],
        model_fp: str = "",
        data_fp: str = "",
        refresh: bool = False,
    ) -> dict:
        """The cached record for these inputs, else compute(), store it and return it as stored."""
        return self.fetch(config, compute, model_fp, data_fp, refresh)[0]

    def fetch(
        self,
        config: Any,
        compute: Callable[[], dict],
        model_fp: str = "",
        data_fp: str = "",
        refresh: bool = False,
    ) -> tuple[dict, bool]:
        """(record, cached): get_or_compute, also saying whether the record was read back."""
        key = self.key(config, model_fp, data_fp)
        if not refresh:
            record = self.get(key)
            if record is not None:
                return record, True
        record = compute()
        self.put(key, record)
        # Return what get() would return next time (tuples as lists, numpy as Python numbers).
        return to_jsonable(record), False

    def _entries(self) -> list[Path]:
        return sorted(self.root.glob("??/*.json"))

    def __contains__(self, key: object) -> bool:
        """An entry file exists; get() still validates it."""
        return isinstance(key, str) and _KEY.fullmatch(key) is not None and self.path(key).is_file()

    def __len__(self) -> int:
        return len(self._entries())

    def clear(self) -> int:
        """Delete every entry (only entries: root may hold other files). Returns how many."""
        entries = self._entries()
        for path in entries:
            path.unlink(missing_ok=True)
        for shard in {p.parent for p in entries}:
            with contextlib.suppress(OSError):  # not empty: left alone
                shard.rmdir()
        return len(entries)
