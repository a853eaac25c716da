"""The recovery experiment (SFT teacher -> SparseGPT -> CE vs SquareHead+CE -> W8A8 + pack,
scored on the packed model) end to end on a tiny model: every row and column present, the
sparsity pattern kept by both students and by the packed models, Wilson intervals, seeds,
the whole second run read back from the cache, and the distill CLI's files and usage errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

import workbench.deploy as deploy
import workbench.evaluate as evaluate
import workbench.recovery as recovery
import workbench.sweep as sweep
from workbench import cli
from workbench.deploy import DeployConfig
from workbench.finetune import SFTConfig
from workbench.models import tiny_llama
from workbench.recovery import COLUMNS, RecoveryConfig, run_recovery
from workbench.stats import wilson_interval
from workbench.training import TrainConfig

SPARSITIES = (0.5, 0.7)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny matrices: a second thread only adds contention
    yield
    torch.set_num_threads(threads)


def _config(**kw):
    small = dict(sparsities=SPARSITIES, train_n=8, dev_n=2, nsamples=2, calib_seqlen=64,
                 eval_n=2, fewshot=1, ppl_seqlen=64, ppl_max_windows=2, checkpoint_every=1,
                 sft=SFTConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512),
                 train=TrainConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512, warmup=1),
                 packed_methods=("SFT", "sparsegpt", "SquareHead+CE"),
                 deploy=DeployConfig(smoothings=("none", "lae"), profile_samples=2,
                                     w8a8_windows=1, speed_prompt=8, speed_new_tokens=4,
                                     speed_repeats=1))
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
    assert table.acc.between(0, 1).all() and (table.ppl > 1).all() and (table.n == 2).all()
    for _, row in table.iterrows():     # the interval of k/n with k = acc * n
        assert (row.acc_lo, row.acc_hi) == wilson_interval(round(row.acc * 2), 2)
    assert table.train_min.isna().tolist() == [True, False] + [True, False, False] * len(SPARSITIES)
    assert table.sparsity[:2].tolist() == [0.0, 0.0]
    assert table.target.tolist() == [0.0, 0.0] + [s for s in SPARSITIES for _ in range(3)]
    # packed rows: accuracy, perplexity, speed and size of the packed W8A8 model itself
    packed = table.method.isin(["SFT", "sparsegpt", "SquareHead+CE"])
    assert table.loc[packed, ["packed_acc", "packed_acc_lo", "packed_ppl", "decode_tok_s",
                              "fp32_decode_tok_s", "speedup", "size_mb"]].notna().all().all()
    assert table.loc[~packed, ["packed_acc", "speedup"]].isna().all().all()
    assert (table.loc[packed, "packed_ppl"] != table.loc[packed, "ppl"]).all()     # W8A8 differs
    sizes = table.loc[packed, "size_mb"].tolist()
    assert sizes[0] > sizes[1]                          # 50% sparse packs smaller than dense
    assert set(first.w8a8.smoothing) == {"none", "lae"} and len(first.w8a8) == 2 * packed.sum()
    # The students keep the one-shot model's sparsity, zero for zero.
    for i, s in enumerate(SPARSITIES):
        rows = table.iloc[2 + 3 * i: 5 + 3 * i]
        assert rows.sparsity.iloc[0] == pytest.approx(s, abs=0.01)
        assert (rows.sparsity == rows.sparsity.iloc[0]).all()
        ce = _zeros(first.weights[f"CE@{s}/seed0"])
        sh = _zeros(first.weights[f"SquareHead+CE@{s}/seed0"])
        assert ce.keys() == sh.keys() and len(ce) == 14
        assert all(torch.equal(ce[k], sh[k]) for k in ce)
    # One curve per training run, every step logged; CE-only runs skip the teacher.
    curves = first.losses
    assert len(curves) == 3 + 2 * len(SPARSITIES) * 3
    assert curves.groupby(["stage", "method", "sparsity"]).step.max().eq(3).all()
    sh_rows = curves[(curves.stage == "student") & (curves.method == "SquareHead+CE")]
    assert sh_rows[["squarehead", "ce"]].notna().all().all()
    assert curves.loc[curves.method == "CE", "squarehead"].isna().all()
    assert len(first.computed) == 2 + 3 * len(SPARSITIES)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not list((tmp_path / "cache" / "checkpoints").glob("*/*"))    # removed once stored

    # Second run: nothing is trained, pruned, packed or scored again.
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a cached stage")

    with monkeypatch.context() as patch:
        for module, name in ((recovery, "finetune_"), (recovery, "distill_"), (sweep, "prune_"),
                             (evaluate, "task_accuracy"), (evaluate, "perplexity"),
                             (deploy, "smoothed_copy")):
            patch.setattr(module, name, refuse)
        second = run_recovery(model, tok, _config())
    assert second.computed == []
    assert second.table.equals(table) and second.losses.equals(curves)

    # Another recovery lr retrains the students only: the teacher and one-shot models are reused.
    third = run_recovery(model, tok, _config(train=TrainConfig(lr=5e-4, steps=3, batch_size=2,
                                                                seqlen=512, warmup=1)))
    assert sorted(third.computed) == sorted(f"{m}@{s}/seed0" for m in recovery.RECOVERY_METHODS
                                            for s in SPARSITIES)
    assert third.table.iloc[:2].equals(table.iloc[:2])
    assert all(p.startswith(str(tmp_path / "cache")) for p in third.weights.values())


def test_seeds_change_the_data_order_and_are_summarized():
    model, tok = tiny_llama(seed=0)
    result = run_recovery(model, tok, _config(sparsities=(0.5,), seeds=(0, 1), packed_methods=()))
    table = result.table
    assert table.seed.tolist() == [0] * 5 + [1] * 5
    teacher = table[table.stage == "teacher"]
    assert teacher.ppl.iloc[0] != teacher.ppl.iloc[1]           # another SFT data order
    summary = result.summary
    assert summary.n_seeds.eq(2).all() and len(summary) == 5
    sh = table[table.method == "SquareHead+CE"].acc
    row = summary[summary.method == "SquareHead+CE"].iloc[0]
    assert row.acc_mean == pytest.approx(sh.mean()) and row.acc_max == sh.max()
    assert result.meta["teacher_fingerprints"]["0"] != result.meta["teacher_fingerprints"]["1"]


def test_dev_plateau_runs_report_their_curve_and_best_step():
    model, tok = tiny_llama(seed=0)
    config = _config(sparsities=(0.5,), packed_methods=(),
                     sft=SFTConfig(lr=1e-3, steps=3, batch_size=2, seqlen=512, eval_every=1),
                     train=TrainConfig(lr=1e-3, steps=4, batch_size=2, seqlen=512, eval_every=2,
                                       patience=1))
    result = run_recovery(model, tok, config)
    dev = result.dev
    assert set(dev.stage) == {"teacher", "student"} and (dev.n == 2).all()
    assert (dev.score_lo <= dev.score).all() and (dev.score <= dev.score_hi).all()
    assert dev[dev.stage == "teacher"].step.tolist() == [0, 1, 2, 3]
    students = result.table[result.table.stage == "student"]
    # a random tiny model scores 0 throughout: ties keep step 0, patience 1 stops at step 2
    assert students.best_step.tolist() == [0, 0] and students.stopped_early.all()
    assert students.steps.tolist() == [2, 2]


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
    assert RecoveryConfig().distill_config("CE", seed=7).seed == 7
    for kw, match in (({"seeds": ()}, "seeds"), ({"seeds": (1, 1)}, "seeds"),
                      ({"packed_methods": ("W8A8",)}, "packed_methods"), ({"dev_n": 0}, "dev_n")):
        with pytest.raises(ValueError, match=match):
            RecoveryConfig(**kw)
    with pytest.raises(ValueError, match="smoothing"):
        DeployConfig(smoothing="smoothquant:2")
    quick, reproduce, experiments = (RecoveryConfig.quick(), RecoveryConfig.reproduce(),
                                     RecoveryConfig.experiments())
    assert experiments.seeds == (0, 1, 2) and experiments.sparsities == (0.5, 0.6, 0.7, 0.8)
    assert min(experiments.eval_n, reproduce.eval_n) >= 200 and quick.eval_n < 200
    assert experiments.train.eval_every and experiments.train.patience


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


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
    assert all(r["packed_acc"] is not None for r in record["rows"][1:])
    assert (out / "tiny-quick.md").read_text().startswith("|   seed")
    assert (out / "tiny-quick.csv").is_file()
    assert (out / "tiny-quick-losses.csv").read_text().startswith("seed,stage,method,sparsity,step,loss")
    for part in ("dev", "w8a8", "summary"):
        assert (out / f"tiny-quick-{part}.csv").is_file()
    assert cli.distill_config("--size experiments").seeds == (0, 1, 2)
    assert cli.distill_config("--seeds 3,4 --sparsities 0.6").seeds == (3, 4)


@pytest.mark.parametrize("flags,message", [(["--sparsities", "0.5,1.2"], "sparsities"),
                                           (["--sparsities", "half"], "half"),
                                           (["--steps", "0"], "steps"),
                                           (["--lr", "-1"], "lr"),
                                           (["--eval-n", "0"], "eval_n"),
                                           (["--seeds", "-1"], "seeds")])
def test_distill_cli_usage_errors(flags, message, capsys, monkeypatch):
    # Bad input is refused before any model is loaded.
    monkeypatch.setattr("workbench.models.load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert cli.main(["distill", *flags]) == 2
    assert message in capsys.readouterr().err


def test_named_sizes_are_the_classmethods_and_the_cli_offers_the_same():
    from workbench import cli_distill, recovery

    assert recovery.SIZES == cli_distill.RECOVERY_SIZES
    assert RecoveryConfig.sized("quick") == RecoveryConfig.quick()
    assert RecoveryConfig.sized("reproduce") == RecoveryConfig.reproduce()
    assert RecoveryConfig.sized("full") == RecoveryConfig()
    assert RecoveryConfig.sized("experiments", eval_n=3) == RecoveryConfig.experiments(eval_n=3)
    with pytest.raises(ValueError, match="recovery size must be one of quick, reproduce"):
        RecoveryConfig.sized("huge")
