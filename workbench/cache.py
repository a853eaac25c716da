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
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Re-exported: callers write files and hash configs through cache.* as they always have.
from workbench.atomic import atomic_directory as atomic_directory
from workbench.atomic import write_bytes_atomic as write_bytes_atomic
from workbench.atomic import write_json_atomic as write_json_atomic
from workbench.atomic import write_text_atomic as write_text_atomic
from workbench.fingerprints import fingerprint_data as fingerprint_data
from workbench.fingerprints import fingerprint_model as fingerprint_model
from workbench.jsonable import hash_json as hash_json
from workbench.jsonable import to_jsonable as to_jsonable
from workbench.provenance import provenance as provenance
from workbench.provenance import workbench_version as workbench_version


def cache_root() -> Path:
    """$WORKBENCH_CACHE, else ~/.cache/workbench. Not created here: callers create on write."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/workbench").expanduser()


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
