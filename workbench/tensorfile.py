"""Safetensors files whose tensors start on 64-byte boundaries, read back memory-mapped.

The layout is safetensors' own (https://github.com/huggingface/safetensors, "Format"): an 8-byte
little-endian header length N, a JSON header naming each tensor's dtype, shape and byte range,
then the data, with no holes. Any safetensors reader opens these files. Two choices serve the
runtime's kernels, whose weight buffers want 64-byte alignment (packing.CACHE_LINE):

  * the header is padded with spaces (the format allows trailing whitespace) so the data start
    8 + N is a multiple of ALIGN;
  * a tensor whose size is not a multiple of ALIGN is followed by a filler entry
    ("__pad__.<k>", uint8), since the format forbids gaps between tensors.

`read` maps the file once (np.memmap, copy-on-write: a write to an array changes this process's
page, never the file) and returns views into it: nothing is copied, and the kernels use the
buffers in place. The CRC32 of every tensor is kept in the header's
`__metadata__`, so a flipped byte is reported with the name of the tensor it is in; a truncated
file, a header that is not JSON, an unknown dtype or a shape that disagrees with its byte range
is reported the same way (TensorFileError, a ValueError naming the file and the tensor).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from workbench.atomic import atomic_file

ALIGN = 64
PAD_PREFIX = "__pad__."
_CRC_KEY = "workbench.crc32"
_DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "I32": np.int32,
           "I64": np.int64, "U64": np.uint64, "F16": np.float16, "F32": np.float32,
           "F64": np.float64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 2 ** 20          # safetensors' own limit on the header's size


class TensorFileError(ValueError):
    """A tensor file that cannot be read as written: names the file and, where known, the tensor."""


def _bytes(arr: np.ndarray) -> memoryview:
    """arr's bytes, flat, without a copy (reshape(-1) first: memoryview cannot cast a view
    with a zero in its shape)."""
    return memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B")


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(_bytes(arr))


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray],
          metadata: dict[str, str] | None = None) -> Path:
    """Write tensors (name -> NumPy array) as an aligned safetensors file; returns its path.
    Written to a temp file beside `path`, then renamed: a failure leaves no partial file."""
    path = Path(path)
    entries, offset, pad = {}, 0, 0
    arrays = []
    for name, arr in tensors.items():
        if not isinstance(name, str) or name.startswith(PAD_PREFIX) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is reserved or not a string")
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _CODES:
            raise TypeError(f"tensor {name!r}: dtype {arr.dtype} is not storable")
        entries[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape),
                         "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
        if offset % ALIGN:
            gap = ALIGN - offset % ALIGN
            entries[f"{PAD_PREFIX}{pad}"] = {"dtype": "U8", "shape": [gap],
                                             "data_offsets": [offset, offset + gap]}
            arrays.append(np.zeros(gap, np.uint8))
            pad, offset = pad + 1, offset + gap
    meta = dict(metadata or {})
    meta[_CRC_KEY] = json.dumps({n: _crc(a) for n, a in tensors.items()})
    header = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % ALIGN)
    with atomic_file(path) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for arr in arrays:
            f.write(_bytes(arr))
    return path


def _header(path: Path, size: int, raw: np.ndarray) -> tuple[dict, int]:
    if size < 8:
        raise TensorFileError(f"{path}: {size} bytes, too short for a safetensors header")
    n = int(raw[:8].view("<u8")[0])
    if n > min(_MAX_HEADER, size - 8):
        raise TensorFileError(f"{path}: header length {n} does not fit a {size}-byte file "
                              "(truncated or not a safetensors file)")
    try:
        header = json.loads(raw[8:8 + n].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TensorFileError(f"{path}: the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: the header is not a JSON object")
    return header, 8 + n


def read(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """(name -> array view of the mapped file, metadata) of a safetensors file.
    verify: check every tensor's CRC32 against the one written (reads each byte once; a
    file without stored CRCs, written by another tool, is read unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tensor file")
    size = path.stat().st_size
    raw = np.memmap(path, dtype=np.uint8, mode="c") if size else np.zeros(0, np.uint8)
    header, start = _header(path, size, raw)
    meta = header.pop("__metadata__", None) or {}
    crcs = json.loads(meta.get(_CRC_KEY, "{}")) if verify else {}
    out = {}
    for name, entry in header.items():
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]])
            shape = tuple(int(s) for s in entry["shape"])
            lo, hi = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise TensorFileError(f"{path}: tensor {name!r} has a malformed entry {entry!r}") from None
        if hi - lo != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or lo > hi:
            raise TensorFileError(f"{path}: tensor {name!r} shape {shape} {entry['dtype']} does "
                                  f"not match its byte range {lo}..{hi}")
        if start + hi > size:
            raise TensorFileError(f"{path}: tensor {name!r} ends at byte {start + hi}, the file "
                                  f"has {size} (truncated)")
        if name.startswith(PAD_PREFIX):
            continue
        arr = raw[start + lo:start + hi].view(dtype).reshape(shape)
        if name in crcs and _crc(arr) != crcs[name]:
            raise TensorFileError(f"{path}: tensor {name!r} fails its CRC32 check (corrupted)")
        out[name] = arr
    missing = sorted(set(crcs) - set(out))
    if missing:
        raise TensorFileError(f"{path}: tensors {missing[:5]} are listed as written but absent")
    meta = {k: v for k, v in meta.items() if k != _CRC_KEY}
    return out, meta


__all__ = ["ALIGN", "TensorFileError", "read", "write"]
