"""The recovery experiment (SFT teacher -> SparseGPT -> CE vs SquareHead+CE) end to end on a
tiny model: every row present, the sparsity pattern kept by both students, the whole second
run read back from the cache, and the distill CLI's files and usage errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

import workbench.recovery as recovery
import workbench.sweep as sweep
from workbench import cli
from workbench.finetune import SFTConfig
from workbench.models import tiny_llama
from workbench.recovery import COLUMNS, RecoveryConfig, run_recovery
from workbench.training import TrainConfig

SPARSITIES = (0.5, 0.7)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


def _config(**kw):
    small = dict(sparsities=SPARSITIES, train_n=8, nsamples=2, calib_seqlen=64, eval_n=2,
                 fewshot=1, ppl_seqlen=64, ppl_max_windows=2,
                 sft=SFTConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512),
                 train=TrainConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512, warmup=1))
    return RecoveryConfig(**{**small, **kw})


def _zeros(path):
    return {k: v == 0 for k, v in load_file(str(path)).items() if ".layers." in k and k.endswith("proj.weight")}


def test_recovery_rows_sparsity_and_cache(monkeypatch, tmp_path):
    model, tok = tiny_llama(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shown = []
    first = run_recovery(model, tok, _config(), on_row=shown.append)
    table = first.table
    assert list(table.columns) == COLUMNS and len(shown) == len(table)
    expected = [("base", "dense"), ("teacher", "SFT")]
    for _ in SPARSITIES:
        expected += [("one-shot", "sparsegpt"), ("student", "CE"), ("student", "SquareHead+CE")]
    assert list(zip(table.stage, table.method, strict=True)) == expected
    assert table.steps.tolist() == [0, 3] + [0, 3, 3] * len(SPARSITIES)
    assert table.arith_acc.between(0, 1).all() and (table.ppl > 1).all()
    assert table.train_min.isna().tolist() == [True, False] + [True, False, False] * len(SPARSITIES)
    assert table.sparsity[:2].tolist() == [0.0, 0.0]
    # The students keep the one-shot model's sparsity, zero for zero.
    for i, s in enumerate(SPARSITIES):
        rows = table.iloc[2 + 3 * i: 5 + 3 * i]
        assert rows.sparsity.iloc[0] == pytest.approx(s, abs=0.01)
        assert (rows.sparsity == rows.sparsity.iloc[0]).all()
        ce, sh = _zeros(first.weights[f"CE@{s}"]), _zeros(first.weights[f"SquareHead+CE@{s}"])
        assert ce.keys() == sh.keys() and len(ce) == 14
        assert all(torch.equal(ce[k], sh[k]) for k in ce)
    # One curve per training run, every step logged with all three losses for the students.
    curves = first.losses
    assert len(curves) == 3 + 2 * len(SPARSITIES) * 3
    assert curves.groupby(["stage", "method", "sparsity"]).step.max().eq(3).all()
    assert curves.loc[curves.stage == "student", ["squarehead", "ce", "kd"]].notna().all().all()
    assert len(first.computed) == 2 + 3 * len(SPARSITIES)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # Second run: nothing is trained, pruned or scored again.
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a cached stage")

    with monkeypatch.context() as patch:
        for module, name in ((recovery, "finetune_"), (recovery, "distill_"), (sweep, "prune_"),
                             (recovery, "task_accuracy"), (recovery, "perplexity")):
            patch.setattr(module, name, refuse)
        second = run_recovery(model, tok, _config())
    assert second.computed == []
    assert second.table.equals(table) and second.losses.equals(curves)

    # Another recovery lr retrains the students only: the teacher and one-shot models are reused.
    third = run_recovery(model, tok, _config(train=TrainConfig(lr=5e-4, steps=3, batch_size=2,
                                                                seqlen=512, warmup=1)))
    assert sorted(third.computed) == sorted(f"{m}@{s}" for m in recovery.RECOVERY_METHODS
                                            for s in SPARSITIES)
    assert third.table.iloc[:2].equals(table.iloc[:2])
    assert all(p.is_relative_to(tmp_path / "cache") for p in third.weights.values())


def test_config_rejects_bad_values():
    for kw, match in (({"sparsities": (0.5, 1.0)}, "sparsities"), ({"sparsities": ()}, "sparsities"),
                      ({"sparsities": (0.5, 0.5)}, "distinct"), ({"eval_n": 0}, "eval_n"),
                      ({"ppl_max_windows": 0}, "ppl_max_windows"), ({"prune_method": "obs"}, "method")):
        with pytest.raises(ValueError, match=match):
            RecoveryConfig(**kw)
    with pytest.raises(TypeError):
        RecoveryConfig(train=RecoveryConfig().distill_config("CE"))   # weights come from the method
    assert RecoveryConfig().distill_config("CE").squarehead == 0.0
    sh = RecoveryConfig().distill_config("SquareHead+CE")
    assert (sh.squarehead, sh.ce, sh.kd, sh.steps) == (1.0, 1.0, 0.0, RecoveryConfig().train.steps)


@pytest.fixture
def checkpoint(tmp_path):
    model, tok = tiny_llama(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_distill_cli_writes_table_and_curves(checkpoint, tmp_path, capsys):
    args = ["distill", "--model", str(checkpoint), "--quick", "--sparsities", "0.5",
            "--nsamples", "2", "--seqlen", "64", "--eval-n", "2", "--name", "tiny",
            "--results", str(tmp_path / "results")]
    assert cli.main(args) == 0
    assert "SquareHead+CE" in capsys.readouterr().out
    out = tmp_path / "results" / "distill"
    record = json.loads((out / "tiny-quick.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["dense", "SFT", "sparsegpt", "CE", "SquareHead+CE"]
    assert record["quick"] is True and record["config"]["nsamples"] == 2
    assert record["config"]["train"]["steps"] == RecoveryConfig.quick().train.steps
    assert (out / "tiny-quick.md").read_text().startswith("| stage")
    assert (out / "tiny-quick.csv").is_file()
    assert (out / "tiny-quick-losses.csv").read_text().startswith("stage,method,sparsity,step,loss")


@pytest.mark.parametrize("flags,message", [(["--sparsities", "0.5,1.2"], "sparsities"),
                                           (["--sparsities", "half"], "half"),
                                           (["--steps", "0"], "steps"),
                                           (["--lr", "-1"], "lr"),
                                           (["--eval-n", "0"], "eval_n")])
def test_distill_cli_usage_errors(flags, message, capsys, monkeypatch):
    # Bad input is refused before any model is loaded.
    monkeypatch.setattr("workbench.models.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert cli.main(["distill", *flags]) == 2
    assert message in capsys.readouterr().err
