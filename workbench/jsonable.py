"""The canonical JSON form of the workbench's records and configs, and its hash.

Cache keys (workbench.cache) are hash_json of a config, so the conversion here decides which
configs count as equal: a dataclass becomes the dict of its fields, a tuple a list, numpy and
torch values Python numbers, a Path its string, a set its sorted list.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def json_default(obj: Any) -> Any:
    """The `default=` hook of json.dumps: one non-JSON object -> something JSON can encode."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Shallow on purpose: dataclasses.asdict would deep-copy any tensors in the fields.
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(x) for x in obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def to_jsonable(obj: Any) -> Any:
    """Canonical JSON form: dataclass -> dict, tuple -> list, numpy/torch -> Python, Path -> str.

    Dict keys must already be str: json.dumps would turn 1 and "1" into the same key, and two
    different configs must never hash alike.
    """
    # Enums and numpy scalars first: IntEnum and np.float64 are also int / float subclasses.
    if isinstance(obj, (enum.Enum, np.generic)):
        return to_jsonable(json_default(obj))
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"dict keys must be str, got {type(k).__name__} key {k!r}")
            out[k] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    return to_jsonable(json_default(obj))


def hash_json(obj: Any) -> str:
    """sha256 hex of the compact, key-sorted JSON of to_jsonable(obj)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
