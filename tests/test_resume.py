"""Interrupted runs resume: a sparsity sweep killed between points recomputes only the points
it had not finished, and a recovery run killed in the middle of a training run continues from
that run's last checkpoint; both end with the results of an uninterrupted run. The runs are
real subprocesses on a tiny checkpoint, killed with SIGKILL (no cleanup code runs)."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from workbench.models import tiny_llama

SCRIPT = r"""
import json, sys
import torch
torch.set_num_threads(1)
from workbench import data, load_model
mode, ckpt = sys.argv[1], sys.argv[2]
model, tok = load_model(ckpt)
calib = data.calibration_set(tok, "pydoc", nsamples=2, seqlen=64)
if mode == "sweep":
    from workbench import sweep
    from workbench.pruning import PruneConfig
    grid = [PruneConfig(method="sparsegpt", sparsity=s) for s in (0.3, 0.5, 0.7)]
    frame = sweep.prune_sweep(ckpt, grid, calib, {"ppl": {"seqlen": 64, "max_windows": 2}},
                              on_row=lambda row: print("ROW", flush=True))
    print("RESULT" + frame.drop(columns=["prune_s"]).to_json())
else:
    from workbench.deploy import DeployConfig
    from workbench.finetune import SFTConfig
    from workbench.recovery import RecoveryConfig, run_recovery
    from workbench.training import TrainConfig
    config = RecoveryConfig(
        sparsities=(0.5,), train_n=8, dev_n=2, nsamples=2, calib_seqlen=64, eval_n=2,
        fewshot=1, ppl_seqlen=64, ppl_max_windows=1, checkpoint_every=1,
        sft=SFTConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512),
        train=TrainConfig(lr=1e-3, steps=12, batch_size=2, seqlen=512, warmup=1),
        packed_methods=("SquareHead+CE",),
        deploy=DeployConfig(smoothings=("none",), smoothing="none", profile_samples=2,
                            w8a8_windows=1, speed_prompt=4, speed_new_tokens=2,
                            speed_repeats=1))
    result = run_recovery(model, tok, config, on_row=lambda row: print("ROW", flush=True))
    keep = ["seed", "stage", "sparsity", "method", "steps", "acc", "ppl", "packed_acc",
            "packed_ppl", "size_mb"]
    print("RESULT" + json.dumps({"table": result.table[keep].to_json(),
                                 "losses": result.losses.to_json()}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-ckpt")
    model, tok = tiny_llama(seed=3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _start(mode, checkpoint, cache):
    env = {**os.environ, "WORKBENCH_CACHE": str(cache), "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": "1", "WORKBENCH_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(checkpoint)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(mode, checkpoint, cache) -> str:
    proc = _start(mode, checkpoint, cache)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return next(line for line in out.splitlines() if line.startswith("RESULT"))[len("RESULT"):]


def _frame(text: str) -> pd.DataFrame:
    return pd.read_json(io.StringIO(text))


def _latest_step(root: Path) -> int:
    """The newest committed checkpoint step under root (a step directory can exist before
    latest.json points at it; only the latter is resumed from)."""
    steps = [0]
    for path in root.rglob("latest.json") if root.is_dir() else []:
        try:
            steps.append(int(json.loads(path.read_text())["step"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass                                    # being replaced right now
    return max(steps)


def _entries(cache: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")}


def test_a_killed_sweep_recomputes_only_the_points_it_had_not_finished(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    proc = _start("sweep", checkpoint, cache)
    rows = 0
    for line in proc.stdout:                        # dense row, then the first pruned point
        rows += line.startswith("ROW")
        if rows == 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    finished = _entries(cache)
    resumed = _frame(_finish("sweep", checkpoint, cache))
    kept = {p: t for p, t in _entries(cache).items() if p in finished}
    assert kept == finished                          # finished points were read, not rewritten
    assert len(_entries(cache)) > len(finished)      # the unfinished ones were computed
    fresh = _frame(_finish("sweep", checkpoint, tmp_path / "fresh"))
    pd.testing.assert_frame_equal(resumed, fresh)


def test_a_killed_recovery_run_continues_from_its_last_checkpoint(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    proc = _start("recovery", checkpoint, cache)
    ckpt_root = cache / "checkpoints" / "distill"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if _latest_step(ckpt_root) >= 3:            # latest.json: the checkpoint's commit point
            proc.send_signal(signal.SIGKILL)        # inside the first recovery run
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before a checkpoint was seen"
    resumed = json.loads(_finish("recovery", checkpoint, cache))
    records = [json.loads(p.read_text())["record"] for p in (cache / "results").rglob("*.json")]
    resumed_from = [r.get("resumed_from", 0) for r in records]
    assert max(resumed_from) >= 3                   # a training run restarted from its checkpoint
    fresh = json.loads(_finish("recovery", checkpoint, tmp_path / "fresh"))
    for part in ("table", "losses"):
        pd.testing.assert_frame_equal(_frame(resumed[part]), _frame(fresh[part]))
