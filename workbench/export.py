"""Where figures and tables go, and how a set of files is written with its provenance.

A saved figure or table is a set of files sharing one name, e.g. results/tables/ppl.{tex,md,csv},
plus a sidecar ppl.json saying what they came from: the caller's config, `cache.provenance()`
(code version, git commit, libraries, CPU) and the sha256 of every file in the set.

Everything is rendered in memory before the first byte reaches disk, so an error in rendering
or in the config leaves no file behind. Each file is then written atomically (workbench.atomic:
temp file in the same directory, fsync, `os.replace`), the sidecar last: a crash between two
files can leave a new file next to an old one, and the sidecar's sha256 entries tell which
files belong together.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from workbench import cache
from workbench.atomic import write_bytes_atomic, write_json_atomic


def results_root(results_dir: str | Path | None = None) -> Path:
    """results_dir, else $WORKBENCH_RESULTS, else the checkout's results/, else ./results."""
    if results_dir is not None:
        return Path(results_dir).expanduser()
    env = os.environ.get("WORKBENCH_RESULTS")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():  # a source or editable checkout
        return repo / "results"
    return Path.cwd() / "results"  # an installed package: site-packages is no place for results


def check_name(name: object) -> str:
    """A file stem: non-empty, no path separators, not hidden (temp files start with a dot)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        raise ValueError(f"name must be a file stem without path separators, got {name!r}")
    if name.startswith(".") or "\0" in name or name != name.strip():
        raise ValueError(
            f"name must not start with '.', hold NUL or surrounding whitespace, got {name!r}"
        )
    return name


def write_result_set(
    directory: Path,
    name: str,
    files: dict[str, bytes],
    meta: dict[str, Any],
    provenance: dict | None = None,
) -> dict[str, Path]:
    """Write directory/{name}.{ext} for each ext in files, then the sidecar {name}.json.

    Returns {ext: path} for every written file, the sidecar under "json".
    """
    if "json" in files:
        raise ValueError("'json' is the sidecar's extension and cannot be one of the files")
    sidecar = {
        "name": name,
        **meta,
        "files": {ext: f"{name}.{ext}" for ext in files},
        "sha256": {ext: hashlib.sha256(data).hexdigest() for ext, data in files.items()},
        "provenance": provenance if provenance is not None else cache.provenance(),
    }
    # Converted before any file is written: an unserializable config leaves nothing behind.
    sidecar = cache.to_jsonable(sidecar)
    paths = {ext: write_bytes_atomic(directory / f"{name}.{ext}", data)
             for ext, data in files.items()}
    paths["json"] = write_json_atomic(directory / f"{name}.json", sidecar)
    return paths


def find_result(relpath: str | Path, results_dir: str | Path | None = None) -> Path | None:
    """An input written by an earlier step: results_root(results_dir)/relpath, else the same
    file in the checkout's results/ (so a run writing into a scratch $WORKBENCH_RESULTS still
    reads the committed benchmark tables), else None."""
    for root in (results_root(results_dir), Path(__file__).resolve().parent.parent / "results"):
        path = root / relpath
        if path.is_file():
            return path
    return None
