"""The sweep executors: local and Ray give the same records; a Ray worker killed mid-point is
retried and every point is recorded exactly once; Ctrl-C cancels and a re-run resumes; a cache
the workers cannot reach is refused. The Ray tests run on a local 2-CPU Ray (`ray.init`) with
tiny random models, and skip only when Ray is not installed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from workbench import cache, data, executor
from workbench.executor import ExecutorConfig, Point, as_executor, run_points
from workbench.pruning import PruneConfig
from workbench.sweep import prune_sweep, sweep_points, w8a8_table

TASKS = {"ppl": {"seqlen": 64, "max_windows": 2}}
GRID = [PruneConfig(method="magnitude", sparsity=0.5), PruneConfig(method="wanda", sparsity=0.5),
        PruneConfig(method="sparsegpt", sparsity=0.6)]
ONE_THREAD = {"threads": 1}     # the same torch thread count everywhere: bit-identical records


@pytest.fixture
def model_dir(tiny_checkpoint):
    return str(tiny_checkpoint)


@pytest.fixture
def calib(model_dir):
    from workbench.models import tiny_tokenizer

    return data.calibration_set(tiny_tokenizer(), "pydoc", nsamples=4, seqlen=64)


def _records(root: Path, field: str) -> dict:
    """{key: record} of every cache entry whose record has field ("metrics": sweep rows,
    "smoothing": W8A8 rows), minus the wall-clock field."""
    out = {}
    for path in sorted(root.glob("??/*.json")):
        entry = json.loads(path.read_text())
        if field in entry["record"]:
            out[entry["key"]] = {k: v for k, v in entry["record"].items() if k != "prune_s"}
    return out


# ---------------------------------------------------------------- no Ray needed

def test_executor_config_validates_and_round_trips():
    assert as_executor(None) == ExecutorConfig() == as_executor("local")
    assert as_executor("ray").kind == "ray"
    config = ExecutorConfig("ray", address="10.0.0.1:6379", threads=2, max_retries=1)
    assert ExecutorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for kw, match in (({"kind": "dask"}, "executor must be one of"), ({"threads": 0}, "threads"),
                      ({"max_retries": -1}, "max_retries"), ({"address": "x"}, "address")):
        with pytest.raises(ValueError, match=match):
            ExecutorConfig(**kw)
    with pytest.raises(ValueError, match="unknown ExecutorConfig keys"):
        ExecutorConfig.from_dict({"kind": "local", "nodes": 3})
    with pytest.raises(TypeError, match="executor must be"):
        as_executor(3)


def test_without_ray_the_ray_executor_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    point = Point("p", pow, (2, 3))
    with pytest.raises(ImportError, match=r"pip install -e '\.\[distributed\]'"):
        run_points([point], "ray")


def test_local_points_run_in_order_with_cached_ones_counted_apart():
    points = [Point(f"p{i}", pow, (i, 2)) for i in range(5)]
    stats, seen = {}, []
    results = run_points(points, "local", lookup=lambda p: -1 if p.args[0] % 2 else None,
                         on_result=lambda i, r: seen.append(i), stats=stats)
    assert results == [0, -1, 4, -1, 16]
    assert stats == {"cached": 2, "computed": 3}
    assert seen == [1, 3, 0, 2, 4]          # cached points first, then the computed ones in order


def test_probe_reports_a_directory_it_cannot_read(tmp_path):
    (tmp_path / ".probe-abc").write_text("abc")
    assert executor._probe([str(tmp_path)], "abc")["error"] is None
    assert list(tmp_path.iterdir()) == [tmp_path / ".probe-abc"]     # its own file is gone
    answer = executor._probe([str(tmp_path / "elsewhere")], "abc")
    assert "cannot read the driver's probe file" in answer["error"]


# ---------------------------------------------------------------- on a local Ray

def test_ray_started_for_the_run_is_stopped_after_it(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[distributed]'")
    if ray.is_initialized():
        pytest.fail("a Ray from another test is still running")
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    stats = {}
    assert run_points([Point("p", pow, (2, 10)), Point("q", pow, (3, 2))], "ray",
                      stats=stats) == [1024, 9]
    assert stats == {"cached": 0, "computed": 2} and not ray.is_initialized()
    assert not list(tmp_path.rglob(".probe-*"))



@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[distributed]'")
    # the workers unpickle this module's helpers by value: they cannot import tests/
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield ray
    ray.shutdown()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Two independent cache roots; WORKBENCH_CACHE points at the first."""
    a, b = tmp_path / "cache-a", tmp_path / "cache-b"
    monkeypatch.setenv("WORKBENCH_CACHE", str(a))
    return a, b


def test_ray_and_local_sweeps_give_identical_records(ray_cluster, model_dir, calib, caches,
                                                     monkeypatch):
    a, b = caches
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = prune_sweep(model_dir, GRID, calib, TASKS, store=cache.ResultCache(a / "results"),
                            executor=ExecutorConfig(**ONE_THREAD))
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("WORKBENCH_CACHE", str(b))
    remote = prune_sweep(model_dir, GRID, calib, TASKS, store=cache.ResultCache(b / "results"),
                         executor=ExecutorConfig("ray", **ONE_THREAD))
    assert len(local) == len(GRID) + 1
    cols = [c for c in local.columns if c != "prune_s"]
    assert local[cols].equals(remote[cols])
    assert list(remote["method"]) == ["dense", "magnitude", "wanda", "sparsegpt"]
    left, right = _records(a / "results", "metrics"), _records(b / "results", "metrics")
    assert left and left == right           # same keys, same records, pruned-model fingerprints
    # the pruned weights went to the shared cache root the driver named, not the worker's default
    assert len(list((b / "models" / "pruned").glob("*.safetensors"))) == len(GRID)


def test_ray_w8a8_table_matches_local(ray_cluster, model_dir, calib, caches, monkeypatch):
    corpus = data.perplexity_corpus("pydoc", "eval")
    kw = dict(sparsities=(0.0, 0.5), smoothings=("none", "lae"), activations=("per_token",),
              seqlen=64, max_windows=2, profile_samples=2)
    a, b = caches
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = w8a8_table(model_dir, calib, corpus, store=cache.ResultCache(a / "results"), **kw)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("WORKBENCH_CACHE", str(b))
    remote = w8a8_table(model_dir, calib, corpus, store=cache.ResultCache(b / "results"),
                        executor=ExecutorConfig("ray", **ONE_THREAD), **kw)
    assert len(local) == 2 * 3 and local.equals(remote)
    assert _records(a / "results", "smoothing") == _records(b / "results", "smoothing")


def _kill_once(marker: str, when: str, fn, *args, **kwargs):
    """fn, but the first attempt's worker process is SIGKILLed before (or after) computing."""
    first = not os.path.exists(marker)
    if first and when == "before":
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    result = fn(*args, **kwargs)
    if first and when == "after":                  # the record is written, the reply is lost
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return result


def test_ray_worker_killed_mid_point_is_retried_and_recorded_once(ray_cluster, model_dir, calib,
                                                                  caches, tmp_path):
    a, _ = caches
    store = cache.ResultCache(a / "results")
    points = sweep_points(model_dir, [None, *GRID], calib, TASKS, store)
    markers = {1: str(tmp_path / "killed-before"), 3: str(tmp_path / "killed-after")}
    for i, when in ((1, "before"), (3, "after")):
        p = points[i]
        points[i] = Point(p.label, _kill_once, (markers[i], when, p.fn, *p.args), p.kwargs)
    stats = {}
    rows = run_points(points, ExecutorConfig("ray", threads=1, max_retries=2), store=store,
                      stats=stats)
    assert all(Path(m).is_file() for m in markers.values())      # both workers were killed
    assert stats == {"cached": 0, "computed": len(points)}
    assert [r["method"] for r in rows] == ["dense", "magnitude", "wanda", "sparsegpt"]
    records = _records(a / "results", "metrics")
    assert len(records) == len(points)            # every point exactly once
    # and they are the rows a re-run reads back without computing anything
    again_stats = {}
    again = run_points(points, ExecutorConfig("ray"), store=store, stats=again_stats,
                       lookup=lambda p: None if p.fn is _kill_once else p.fn(*p.args, **p.kwargs))
    assert again == rows and again_stats == {"cached": len(points) - 2, "computed": 2}
    assert _records(a / "results", "metrics") == records


def test_ray_point_without_retries_left_fails_naming_it(ray_cluster, model_dir, calib, caches,
                                                        tmp_path):
    a, _ = caches
    store = cache.ResultCache(a / "results")
    points = sweep_points(model_dir, [None, GRID[0]], calib, TASKS, store)
    p = points[1]
    points[1] = Point(p.label, _kill_once, (str(tmp_path / "k"), "before", p.fn, *p.args), p.kwargs)
    with pytest.raises(RuntimeError, match=r"1 of 2 points failed on Ray.*prune 1: magnitude"):
        run_points(points, ExecutorConfig("ray", threads=1, max_retries=0), store=store)
    assert len(_records(a / "results", "metrics")) == 1       # the other point is kept


def test_ray_interrupted_driver_cancels_and_a_rerun_resumes(ray_cluster, model_dir, calib, caches):
    a, _ = caches
    store = cache.ResultCache(a / "results")

    def interrupt(row):
        raise KeyboardInterrupt

    config = ExecutorConfig("ray", threads=1)
    with pytest.raises(KeyboardInterrupt):
        prune_sweep(model_dir, GRID, calib, TASKS, store=store, executor=config, on_row=interrupt)
    finished = len(_records(a / "results", "metrics"))
    assert 1 <= finished <= len(GRID) + 1
    stats = {}
    points = sweep_points(model_dir, [None, *GRID], calib, TASKS, store)
    from workbench.sweep import prune_point

    rows = run_points(points, config, store=store, stats=stats,
                      lookup=lambda p: prune_point(*p.args, compute=False))
    assert len(rows) == len(GRID) + 1 and stats["cached"] >= 1
    assert stats["cached"] + stats["computed"] == len(GRID) + 1
    assert len(_records(a / "results", "metrics")) == len(GRID) + 1


def _probe_elsewhere(paths, token):
    """What a worker on a node without the shared filesystem sees: other directories."""
    return executor_probe([p + "-on-another-node" for p in paths], token)


executor_probe = executor._probe


def test_ray_refuses_a_cache_the_workers_cannot_reach(ray_cluster, model_dir, calib, caches,
                                                      monkeypatch):
    a, _ = caches
    monkeypatch.setattr(executor, "_probe", _probe_elsewhere)
    with pytest.raises(executor.CacheUnreachableError,
                       match=r"cannot read the driver's probe file.*WORKBENCH_CACHE"):
        prune_sweep(model_dir, GRID[:1], calib, TASKS, store=cache.ResultCache(a / "results"),
                    executor="ray")
    assert not list(a.rglob(".probe-*"))            # the driver's probe files are removed


def test_ray_recovery_run_matches_local(ray_cluster, model_dir, caches, monkeypatch):
    from workbench.deploy import DeployConfig
    from workbench.finetune import SFTConfig
    from workbench.models import load_model
    from workbench.recovery import RecoveryConfig, run_recovery
    from workbench.training import TrainConfig

    config = RecoveryConfig(
        sparsities=(0.5, 0.7), train_n=8, dev_n=2, nsamples=2, calib_seqlen=64, eval_n=2,
        fewshot=1, ppl_seqlen=64, ppl_max_windows=2, checkpoint_every=1,
        sft=SFTConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512),
        train=TrainConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512, warmup=1),
        packed_methods=("SquareHead+CE",),
        deploy=DeployConfig(smoothings=("none",), profile_samples=2, w8a8_windows=1,
                            speed_prompt=8, speed_new_tokens=2, speed_repeats=1))
    model, tok = load_model(model_dir)
    a, b = caches
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_recovery(model, tok, config, cache.ResultCache(a / "results"))
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("WORKBENCH_CACHE", str(b))
    ray_config = dataclasses.replace(config, executor=ExecutorConfig("ray", threads=1))
    assert ray_config.to_dict() == config.to_dict()          # where it runs is not a setting
    remote = run_recovery(model, tok, ray_config, cache.ResultCache(b / "results"),
                          model_name=model_dir)
    timing = ["train_min", "decode_tok_s", "fp32_decode_tok_s", "speedup"]
    assert len(local.table) == 2 + 2 * 3
    assert local.table.drop(columns=timing).equals(remote.table.drop(columns=timing))
    assert local.losses.equals(remote.losses) and local.dev.equals(remote.dev)
    assert remote.computed == []            # the driver only read back what the workers made
    assert len(local.computed) == len(local.table)


def test_ray_cli_flags_write_the_local_table(ray_cluster, model_dir, caches, tmp_path, capsys):
    from workbench.cli import main

    argv = ["prune", "--model", model_dir, "--methods", "magnitude,wanda", "--sparsities", "0.5",
            "--structures", "unstructured,2:4", "--tasks", "ppl", "--nsamples", "2", "--seqlen",
            "64", "--threads-per-point", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*argv, "--results", str(tmp_path / "local")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main([*argv, "--results", str(tmp_path / "ray"), "--executor", "ray"]) == 0

    def rows(where):
        written = json.loads(next((tmp_path / where / "pruning").glob("*.json")).read_text())
        return [{k: v for k, v in r.items() if k != "prune_s"} for r in written["rows"]]

    assert len(rows("local")) == 5 and rows("local") == rows("ray")


def test_ray_cli_usage_errors(monkeypatch, capsys):
    import importlib.util

    from workbench.cli import main

    assert main(["prune", "--address", "10.0.0.1:6379"]) == 2
    assert "use it with --executor ray" in capsys.readouterr().err
    assert main(["quant", "--executor", "ray", "--threads-per-point", "0"]) == 2
    assert "threads must be an integer >= 1" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    assert main(["distill", "--executor", "ray"]) == 2
    assert "pip install -e '.[distributed]'" in capsys.readouterr().err
