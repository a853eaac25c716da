"""Where the points of a sweep run: one after another in this process ("local", the default) or
as Ray tasks on a Ray started for the run or on an existing cluster ("ray").

A point is a call of a module-level function (a prune + score row, a W8A8 row, one recovery
run) whose result is a ResultCache record. The driver first reads every point it can from the
cache; the rest run where the executor says. On Ray each is a task declaring the CPUs it uses
(its torch thread count) and writing its record through the same content-hashed cache, so a
point any worker finished is never computed again and the driver's table is a local run's:

    rows = run_points(points, ExecutorConfig("ray", address="10.0.0.1:6379"), lookup=lookup)

Faults: a worker killed mid-point makes Ray run the task again (at most max_retries times); the
record is written atomically at the end of a point (cache.write_json_atomic), so a killed point
leaves nothing a later read could take for a result. Ctrl-C cancels the submitted tasks; a
re-run reads the finished points back. Every worker must reach the driver's cache directory
(a shared filesystem on a real cluster): `check_shared_cache` proves it on every node before
anything is submitted.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import cache

__all__ = ["EXECUTORS", "ExecutorConfig", "Point", "CacheUnreachableError", "as_executor",
           "run_points", "check_shared_cache", "worker_model", "ray_session"]

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install -e '.[distributed]'  (or: pip install 'ray>=2.40,<3')"


class CacheUnreachableError(RuntimeError):
    """A Ray worker cannot read or write the driver's cache directory."""


@dataclass(frozen=True)
class ExecutorConfig:
    """kind: "local" or "ray". address: an existing Ray cluster ("auto", "host:6379",
    "ray://host:10001"); None means $RAY_ADDRESS, else a Ray started for the run with this
    machine's cores. threads: torch threads (and Ray CPUs) per point; None keeps torch's setting
    locally and means 1 on Ray. max_retries: how often Ray re-runs a point whose worker died."""
    kind: str = "local"
    address: str | None = None
    threads: int | None = None
    max_retries: int = 3

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.kind!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or
                                         not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"executor threads must be an integer >= 1, got {self.threads!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise ValueError(f"executor max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.address is not None and self.kind != "ray":
            raise ValueError("an executor address is for executor='ray' only")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "address": self.address, "threads": self.threads,
                "max_retries": self.max_retries}

    @classmethod
    def from_dict(cls, d: dict) -> ExecutorConfig:
        unknown = set(d) - {"kind", "address", "threads", "max_retries"}
        if unknown:
            raise ValueError(f"unknown ExecutorConfig keys: {sorted(unknown)}")
        return cls(**d)


def as_executor(value: ExecutorConfig | str | None) -> ExecutorConfig:
    """None or "local" -> local; "ray" -> Ray (address from $RAY_ADDRESS or a local Ray)."""
    if value is None:
        return ExecutorConfig()
    if isinstance(value, ExecutorConfig):
        return value
    if isinstance(value, str):
        return ExecutorConfig(kind=value)
    raise TypeError(f"executor must be 'local', 'ray' or an ExecutorConfig, got {type(value).__name__}")


@dataclass(frozen=True)
class Point:
    """fn(*args, **kwargs) -> result, fn importable by a worker (module level). after: indices
    of points whose results this one needs first (read from the cache, not passed in)."""
    label: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    after: tuple[int, ...] = ()


# ---------------------------------------------------------------- inside a worker

_WORKER_MODELS: dict[str, Any] = {}


def worker_model(model_name: str):
    """load_model(model_name), kept for the next point this process runs (a Ray worker runs
    many points of one sweep; loading is seconds, a point may be less). One model at a time."""
    if model_name not in _WORKER_MODELS:
        from workbench.models import load_model

        _WORKER_MODELS.clear()
        _WORKER_MODELS[model_name] = load_model(model_name)
    return _WORKER_MODELS[model_name]


@contextlib.contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_point(cache_dir: str, threads: int, fn: Callable, args: tuple, kwargs: dict, *after):
    """A Ray task: the driver's cache root and thread count, then the point. `after` are the
    results of the points this one waits for (Ray resolves them before it starts)."""
    os.environ["WORKBENCH_CACHE"] = cache_dir
    os.environ.setdefault("TQDM_DISABLE", "1")
    with _threads(threads):
        return fn(*args, **kwargs)


def _probe(paths: list[str], token: str) -> dict:
    """On one node: can it read the driver's token in every cache directory, and write there?"""
    import socket

    host = socket.gethostname()
    for directory in paths:
        try:
            seen = (Path(directory) / f".probe-{token}").read_text()
        except OSError as err:
            return {"host": host, "directory": directory,
                    "error": f"cannot read the driver's probe file ({err.strerror or err})"}
        if seen != token:
            return {"host": host, "directory": directory, "error": "probe file differs"}
        mine = Path(directory) / f".probe-{token}-{uuid.uuid4().hex}"
        try:
            mine.write_text(token)
            mine.unlink()
        except OSError as err:
            return {"host": host, "directory": directory,
                    "error": f"cannot write ({err.strerror or err})"}
    return {"host": host, "directory": None, "error": None}


# ---------------------------------------------------------------- the driver

def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(f"executor 'ray' needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


@contextlib.contextmanager
def ray_session(config: ExecutorConfig):
    """ray, initialised for this run: an already connected Ray is used as it is (and left
    running); otherwise connect to config.address / $RAY_ADDRESS, or start a local Ray with this
    machine's cores, and shut it down afterwards."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"address": address} if address else {"num_cpus": os.cpu_count() or 1}
    ray.init(include_dashboard=False, logging_level="warning", **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def check_shared_cache(ray, directories: Sequence[Path]) -> None:
    """Raise CacheUnreachableError unless a task on every alive node reads a file the driver
    just wrote into each directory and writes its own there: proof they share the storage."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    written = []
    try:
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".probe-{token}"
            probe.write_text(token)
            written.append(probe)
        probe_task = ray.remote(num_cpus=0, max_retries=0)(_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [probe_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote([str(d) for d in directories], token) for n in nodes]
        for node, answer in zip(nodes, ray.get(refs), strict=True):
            if answer["error"]:
                raise CacheUnreachableError(
                    f"Ray worker on {answer['host']} ({node.get('NodeManagerAddress')}) "
                    f"{answer['error']} in the cache directory {answer['directory']}: every node "
                    f"must reach the driver's cache. Point WORKBENCH_CACHE at storage all nodes "
                    f"share (NFS, a cluster filesystem) and start the workers with it.")
    finally:
        for probe in written:
            probe.unlink(missing_ok=True)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="point")


def run_points(points: Sequence[Point], executor: ExecutorConfig | str | None = None, *,
               lookup: Callable[[Point], Any] | None = None,
               cached: Callable[[Any], bool] | None = None,
               store: cache.ResultCache | None = None, desc: str = "points",
               on_result: Callable[[int, Any], None] | None = None,
               stats: dict | None = None) -> list:
    """The result of every point, in the order given.

    lookup(point) returns a point's result from the cache, or None when it must run (the driver
    asks before submitting anything). cached(result) says whether a result that did run was
    read back by the worker (for the count). One progress bar counts finished points, with those
    read from the cache apart. store: the ResultCache the points write (its directory and the
    cache root are checked on every Ray node). on_result(index, result) as each is ready.
    stats, when given, is filled with the counts {"cached": ..., "computed": ...}."""
    config = as_executor(executor)
    results: list = [None] * len(points)
    done = [False] * len(points)
    bar = _progress(len(points), desc)
    counts = stats if stats is not None else {}
    counts.update(cached=0, computed=0)

    def finish(i: int, result, from_cache: bool) -> None:
        results[i], done[i] = result, True
        counts["cached" if from_cache else "computed"] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update(1)
        if on_result is not None:
            on_result(i, result)

    try:
        if lookup is not None:
            for i, point in enumerate(points):
                hit = lookup(point)
                if hit is not None:
                    finish(i, hit, True)
        todo = [i for i in range(len(points)) if not done[i]]
        if config.kind == "local":
            for i in todo:
                with _threads(config.threads):
                    result = points[i].fn(*points[i].args, **points[i].kwargs)
                finish(i, result, cached is not None and cached(result))
        elif todo:
            _run_on_ray(points, todo, config, store, finish, cached)
    finally:
        bar.close()
    return results


def _run_on_ray(points, todo, config, store, finish, cached) -> None:
    with ray_session(config) as ray:
        roots = {cache.cache_root()} | ({store.root} if store is not None else set())
        check_shared_cache(ray, sorted(roots))
        threads = config.threads or 1
        task = ray.remote(_run_point)
        refs: dict[int, Any] = {}
        for i in todo:                     # in order: a point's `after` are submitted first
            deps = [refs[j] for j in points[i].after if j in refs]
            refs[i] = task.options(num_cpus=threads, max_retries=config.max_retries,
                                   retry_exceptions=False, name=points[i].label).remote(
                str(cache.cache_root()), threads, points[i].fn, points[i].args,
                points[i].kwargs, *deps)
        index = {ref: i for i, ref in refs.items()}
        pending, failed = list(refs.values()), []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = index[ready[0]]
                try:
                    result = ray.get(ready[0])
                except Exception as err:     # the point failed after its retries
                    failed.append(f"{points[i].label}: {type(err).__name__}: {err}")
                    continue
                finish(i, result, cached is not None and cached(result))
        except BaseException:                # Ctrl-C (or a driver error): stop the workers
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(todo)} points failed on Ray (finished "
                               f"points are cached; a re-run resumes): " + "; ".join(failed))
