"""workbench.atomic, the one home of atomic writes: a target holds its old content or all of the
new, never part; a failure at any point leaves the old target and no temp file; written files
are world-readable; and every writer of the package goes through it."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from workbench import atomic, cache


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Crash(Exception):
    """A failure in the middle of a write."""


def test_atomic_file_writes_all_or_nothing(tmp_path: Path):
    path = tmp_path / "deep" / "out.bin"
    with atomic.atomic_file(path) as f:
        f.write(b"first ")
        assert not path.exists()                    # nothing at the target before success
        f.write(b"part")
    assert path.read_bytes() == b"first part"
    assert _mode(path) == 0o644                     # not mkstemp's 0600
    assert os.listdir(path.parent) == ["out.bin"]
    with atomic.atomic_file(path, "w") as f:
        f.write("ünïcode")
    assert path.read_text(encoding="utf-8") == "ünïcode"


def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path: Path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(Crash), atomic.atomic_file(path) as f:
        f.write(b"half of the new")
        raise Crash
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]

    fresh = tmp_path / "fresh.bin"
    with pytest.raises(Crash), atomic.atomic_path(fresh) as tmp:
        tmp.write_bytes(b"half")
        raise Crash
    assert not fresh.exists() and os.listdir(tmp_path) == ["out.bin"]


def test_failure_at_fsync_or_rename_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    for name in ("fsync", "replace"):
        with monkeypatch.context() as m:
            def broken(*args, name=name):
                raise OSError(f"{name} failed")
            m.setattr(atomic.os, name, broken)
            with pytest.raises(OSError, match=f"{name} failed"):
                atomic.write_bytes_atomic(path, b"new content")
        assert path.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_path_serves_writers_that_open_files_by_name(tmp_path: Path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with atomic.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".weights.bin.")
        with open(tmp, "wb") as f:                  # what safetensors / gguf writers do
            f.write(b"new")
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new" and _mode(path) == 0o644
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_bad_mode_is_refused_before_anything_is_created(tmp_path: Path):
    with pytest.raises(ValueError, match="mode must be"), atomic.atomic_file(tmp_path / "x", "a"):
        pass
    assert os.listdir(tmp_path) == []


def test_write_json_atomic_converts_like_jsonable(tmp_path: Path):
    obj = {"p": Path("/x"), "s": {3, 1}, "t": (1, 2)}
    atomic.write_json_atomic(tmp_path / "o.json", obj)
    assert json.loads((tmp_path / "o.json").read_text()) == {"p": "/x", "s": [1, 3], "t": [1, 2]}


def test_atomic_directory_swaps_in_only_on_success(tmp_path: Path):
    target = tmp_path / "ckpt"
    with atomic.atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1" and _mode(target) == 0o755
    with pytest.raises(Crash), atomic.atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("half")
        raise Crash
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic.atomic_directory(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]     # replaced, not merged
    assert os.listdir(tmp_path) == ["ckpt"]                            # no temp, no old copy


def test_cache_names_are_the_atomic_helpers():
    # cache.* stays the import path of existing callers; it must be the same code.
    for name in ("write_bytes_atomic", "write_text_atomic", "write_json_atomic",
                 "atomic_directory"):
        assert getattr(cache, name) is getattr(atomic, name)


def test_no_module_rolls_its_own_temp_and_rename():
    """Only workbench/atomic.py creates temp files to rename into place: a second copy of the
    temp + fsync + os.replace dance is what this module replaced."""
    package = Path(atomic.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "atomic.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("mkstemp", "mkdtemp",
                                                                  "NamedTemporaryFile"):
                offenders.append(f"{path.relative_to(package)}:{node.lineno} {node.attr}")
            if (isinstance(node, ast.Attribute) and node.attr == "replace"
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                offenders.append(f"{path.relative_to(package)}:{node.lineno} os.replace")
    assert offenders == []
