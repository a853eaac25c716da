"""Atomic writes: a file or directory holds either its old content or all of the new, never part.

Every writer of the workbench (cache entries, result files, checkpoints, GGUF and safetensors
files, model directories) goes through here. The new content is written beside its target, in
the same directory, so the final `os.replace` is a rename within one filesystem (atomic on
POSIX); a file is fsynced before the rename, and made world-readable like any written file
(temp files are created 0600, temp directories 0700). On failure the temp is removed and the
target is left as it was.

    with atomic_file("out.bin") as f:          # an open file
        f.write(data)
    with atomic_path("m.safetensors") as tmp:  # a path, for writers that open files by name
        save_file(tensors, tmp)
    with atomic_directory("ckpt") as tmp:      # a directory built in tmp, then swapped in
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from workbench.jsonable import json_default

FILE_MODE = 0o644
DIR_MODE = 0o755


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file beside path (yielded, already created) for a writer that opens files by name;
    when the block succeeds it is fsynced, made 0644 and renamed onto path, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """An open temp file beside path (mode "wb", or "w" for UTF-8 text), renamed onto path when
    the block succeeds (atomic_path)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if mode == "wb" else "utf-8") as f:
        yield f


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write data to path so that path holds either its old content or all of data, never part."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """obj as key-sorted JSON (dataclasses, numpy, tensors and Paths converted as
    jsonable.json_default does), written atomically."""
    # Serialized before the temp file exists: an unserializable object leaves no trace.
    text = json.dumps(obj, sort_keys=True, indent=indent, default=json_default)
    return write_text_atomic(path, text + "\n")


# ---------------------------------------------------------------- directories

def temp_directory(target: str | Path) -> Path:
    """A new empty directory beside target, to build target's replacement in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


def swap_directory(tmp: str | Path, target: str | Path) -> Path:
    """Put the finished directory tmp in target's place (made 0755), deleting the old target.
    Two renames, so a crash between them can leave no target, never a partial one."""
    tmp, target = Path(tmp), Path(target)
    os.chmod(tmp, DIR_MODE)
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, target)
    return target


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Build a directory in a temp dir beside target (yielded), then swap it in for target on
    success (swap_directory): a failure leaves the old target (or none), never a half-written
    one."""
    tmp = temp_directory(target)
    try:
        yield tmp
        swap_directory(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
