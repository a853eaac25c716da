"""Content hashes: what a cache key says of the model weights and the data that went in.

    fingerprint_model(model)      # class, config and every state_dict tensor's bytes
    fingerprint_data(calib)       # tensors, arrays, strings, numbers and containers of them

Both are full sha256 hex digests; dtype and shape enter them, so equal values in two dtypes
fingerprint differently. workbench.cache keys every record with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import torch

from workbench.jsonable import to_jsonable


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


__all__ = ["fingerprint_data", "fingerprint_model"]
