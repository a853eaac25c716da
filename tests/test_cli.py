"""`python -m workbench eval` on a tiny local checkpoint: table, record, cache."""

import json

import pytest

from workbench import cli


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tiny_checkpoint


def test_eval_writes_record_and_reuses_cache(checkpoint, tmp_path, capsys):
    args = ["eval", "--model", str(checkpoint), "--tasks", "ppl,arith", "--quick",
            "--results", str(tmp_path / "results")]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert "perplexity" in first and "accuracy" in first
    stem = str(checkpoint).replace("/", "__") + "-quick"
    record = json.loads((tmp_path / "results" / "eval" / f"{stem}.json").read_text())
    assert record["quick"] is True
    assert record["tasks"]["ppl"]["detail"]["n_windows"] == 8
    assert record["tasks"]["arith"]["detail"]["n"] == 32
    assert record["provenance"]["threads"] >= 1
    assert (tmp_path / "results" / "eval" / f"{stem}.md").read_text().startswith("|")
    assert cli.main(args) == 0                       # second run: both from the cache
    second = capsys.readouterr().out
    assert second.count("True") >= 3                 # quick: True, and cached True twice
    again = json.loads((tmp_path / "results" / "eval" / f"{stem}.json").read_text())
    assert again["tasks"]["ppl"]["value"] == record["tasks"]["ppl"]["value"]


def test_quick_mode_from_environment(monkeypatch):
    monkeypatch.setenv("WORKBENCH_QUICK", "1")
    assert cli.quick_mode()
    monkeypatch.setenv("WORKBENCH_QUICK", "0")
    assert not cli.quick_mode() and cli.quick_mode(True)


def test_unknown_task_is_an_error(checkpoint, capsys):
    assert cli.main(["eval", "--model", str(checkpoint), "--tasks", "ppl,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_prune_grid_caches_points_and_pruned_weights(checkpoint, tmp_path, capsys):
    args = ["prune", "--model", str(checkpoint), "--methods", "magnitude,wanda", "--sparsities",
            "0.5", "--structures", "unstructured,2:4", "--quick", "--name", "grid",
            "--results", str(tmp_path / "results")]
    assert cli.main(args) == 0
    rows = json.loads((tmp_path / "results" / "pruning" / "grid-quick.json").read_text())["rows"]
    assert [(r["method"], r["structure"]) for r in rows] == [("dense", "-"),
        ("magnitude", "unstructured"), ("magnitude", "2:4"), ("wanda", "unstructured"), ("wanda", "2:4")]
    assert rows[0]["sparsity"] == 0 and all(abs(r["sparsity"] - 0.5) < 0.02 for r in rows[1:])
    assert all(r["ppl"] > 1 for r in rows)
    pruned = list((tmp_path / "cache" / "models" / "pruned").glob("*.safetensors"))
    assert len(pruned) == 4
    assert cli.main(args) == 0                      # second run: every point from the cache
    again = json.loads((tmp_path / "results" / "pruning" / "grid-quick.json").read_text())["rows"]
    assert [r["ppl"] for r in again] == [r["ppl"] for r in rows]


def test_cli_and_library_share_one_record_per_point(checkpoint, tmp_path, monkeypatch):
    """A point computed by `prune` is read back, not recomputed, by the notebooks' library
    call with the same settings (one key scheme), and the other way round."""
    import workbench.sweep as sweep
    from workbench import cache, data
    from workbench.models import load_model
    from workbench.pruning import PruneConfig

    def args(sparsity):
        return ["prune", "--model", str(checkpoint), "--methods", "magnitude", "--sparsities",
                sparsity, "--tasks", "ppl,arith", "--quick", "--nsamples", "4", "--seqlen", "64",
                "--name", "tiny", "--results", str(tmp_path / "results")]

    assert cli.main(args("0.5")) == 0
    rows = json.loads((tmp_path / "results" / "pruning" / "tiny-quick.json").read_text())["rows"]
    base = load_model(str(checkpoint))
    calib = data.calibration_set(base[1], "pydoc", nsamples=4, seqlen=64)
    tasks = {t: cli.EVAL_TASKS[t][2] for t in ("ppl", "arith")}
    store = cache.ResultCache()
    n_records = len(store)
    with monkeypatch.context() as patch:
        for name in ("prune_", "evaluate_cached"):
            patch.setattr(sweep, name, lambda *a, **k: pytest.fail("recomputed a CLI point"))
        row = sweep.prune_point(str(checkpoint), PruneConfig(method="magnitude", sparsity=0.5),
                                calib, tasks, store, base=base)
    assert (row["ppl"], row["arith"]) == (rows[1]["ppl"], rows[1]["arith"])
    assert row["arith_lo"] <= row["arith"] <= row["arith_hi"] and len(store) == n_records
    # a point the library computed first is the CLI's too
    sweep.prune_point(str(checkpoint), PruneConfig(method="magnitude", sparsity=0.7), calib,
                      tasks, store, base=base)
    n_records = len(store)
    monkeypatch.setattr(sweep, "prune_", lambda *a, **k: pytest.fail("recomputed a library point"))
    assert cli.main(args("0.7")) == 0
    assert len(store) == n_records


def test_prune_rejects_bad_grid(checkpoint, capsys):
    assert cli.main(["prune", "--model", str(checkpoint), "--methods", "obs"]) == 2
    assert "method" in capsys.readouterr().err
    assert cli.main(["prune", "--model", str(checkpoint), "--refines", "grow"]) == 2
    assert "refine" in capsys.readouterr().err


def test_prune_grid_of_variants(checkpoint, tmp_path):
    """--layer-sparsities x --refines multiply the grid; OWL is skipped for N:M."""
    args = ["prune", "--model", str(checkpoint), "--methods", "ria", "--sparsities", "0.6",
            "--structures", "unstructured,2:4", "--layer-sparsities", "uniform,owl",
            "--refines", "none,dsnot", "--quick", "--nsamples", "4", "--seqlen", "64",
            "--name", "variants", "--results", str(tmp_path / "results")]
    assert cli.main(args) == 0
    rows = json.loads((tmp_path / "results" / "pruning" / "variants-quick.json").read_text())["rows"]
    got = [(r["structure"], r["layer_sparsity"], r["refine"]) for r in rows[1:]]
    assert got == [("unstructured", "uniform", "none"), ("unstructured", "uniform", "dsnot"),
                   ("unstructured", "owl", "none"), ("unstructured", "owl", "dsnot"),
                   ("2:4", "uniform", "none"), ("2:4", "uniform", "dsnot")]
    assert all(abs(r["sparsity"] - 0.6) < 1e-3 for r in rows[1:5])


def test_quant_table(checkpoint, tmp_path):
    assert cli.main(["quant", "--model", str(checkpoint), "--quick", "--sparsities", "0,0.5",
                     "--smoothings", "none,smoothquant:0.5", "--activations", "per_token",
                     "--name", "q", "--results", str(tmp_path / "results")]) == 0
    rows = json.loads((tmp_path / "results" / "w8a8" / "q-quick.json").read_text())["rows"]
    assert [(r["smoothing"], r["activations"]) for r in rows] == [
        ("fp32", "-"), ("none", "per_token"), ("smoothquant:0.5", "per_token")]
    assert all(r["ppl @ 0% sparse"] > 1 and r["ppl @ 50% sparse"] > 1 for r in rows)


def test_outliers_ranking_and_measured_agreement(checkpoint, tmp_path, capsys):
    args = ["outliers", "--model", str(checkpoint), "--quick", "--k", "3", "--measure",
            "--name", "o", "--results", str(tmp_path / "results")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "largest/3th" in out and "Spearman" in out
    summary = json.loads((tmp_path / "results" / "outliers" / "o-quick-summary.json").read_text())
    for label in ("with_first_token", "without_first_token"):
        assert summary[f"ratio_top_to_kth_{label}"] >= 1.0
        assert 0 <= summary[f"agreement_{label}"]["overlap"] <= 3
    top = json.loads((tmp_path / "results" / "outliers" / "o-quick-top3-with_first_token.json").read_text())
    assert len(top["rows"]) == 3
    measured = json.loads((tmp_path / "results" / "outliers" / "o-quick-measured-per_tensor.json").read_text())
    assert len(measured["rows"]) == 14                 # every decoder Linear of the tiny model


# ---------------------------------------------------------------- quick mode as data


class Reached(Exception):
    """Raised by a stubbed library call: the command got that far, with these settings."""


@pytest.fixture
def reach(monkeypatch, tmp_path):
    """reach(argv, quick_env=False): run a command up to its first expensive library call (no
    model, no data) and return what that call was given, with the calibration set's size."""
    import types

    import pandas as pd
    import torch

    import workbench.bench
    import workbench.cache
    import workbench.data
    import workbench.models
    import workbench.outliers
    import workbench.profiling
    import workbench.sweep

    seen = {}

    def calibration_set(tok, corpus, nsamples, seqlen):
        seen["calib"] = (nsamples, seqlen)
        return torch.zeros(nsamples, seqlen, dtype=torch.long)

    def stop(**given):
        raise Reached(given)

    monkeypatch.setattr(workbench.models, "load_model", lambda name: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(workbench.cache, "fingerprint_model", lambda model: "0" * 64)
    monkeypatch.setattr(workbench.data, "calibration_set", calibration_set)
    monkeypatch.setattr(workbench.data, "perplexity_corpus", lambda *a: None)
    monkeypatch.setattr(workbench.sweep, "evaluate_cached", lambda *a, refresh: stop(
        tasks=a[4], settings=a[5]))
    monkeypatch.setattr(workbench.sweep, "prune_point", lambda *a, **k: stop(tasks=a[3]))
    monkeypatch.setattr(workbench.sweep, "w8a8_table", lambda *a, **k: stop(**k))
    monkeypatch.setattr(workbench.profiling, "cached_profile", lambda *a, **k: None)
    monkeypatch.setattr(workbench.outliers, "rank_outlier_layers", lambda p, k, metric: types.SimpleNamespace(
        ratio_top_to_kth=1.0, frame=pd.DataFrame({"layer": range(k)})))
    monkeypatch.setattr(workbench.outliers, "cached_layer_sensitivity",
                        lambda model, calib, config, **k: stop(rows=calib.shape[0], config=config))
    monkeypatch.setattr(workbench.bench, "run_decode", lambda model, systems, **k: stop(
        systems=systems, **k))
    monkeypatch.setattr(workbench.bench, "agreement_table", lambda model, **k: stop(**k))

    def run(argv, quick_env=False):
        seen.clear()
        if quick_env:
            monkeypatch.setenv("WORKBENCH_QUICK", "1")
        else:
            monkeypatch.delenv("WORKBENCH_QUICK", raising=False)
        with pytest.raises(Reached) as reached:
            cli.main([*argv, "--results", str(tmp_path / "results")])
        return {**seen, **reached.value.args[0]}
    return run


def test_prune_flags_win_over_quick(reach):
    full, quick = cli.EVAL_TASKS["ppl"][1:]
    assert reach(["prune"]) == {"calib": (128, 512), "tasks": {"ppl": full}}
    assert reach(["prune", "--quick"]) == {"calib": (16, 512), "tasks": {"ppl": quick}}
    assert reach(["prune"], quick_env=True) == reach(["prune", "--quick"])
    assert reach(["prune", "--quick", "--nsamples", "8"])["calib"] == (8, 512)
    assert reach(["prune", "--nsamples", "64", "--seqlen", "64"], quick_env=True)["calib"] == (64, 64)
    got = reach(["prune", "--quick", "--tasks", "ppl,gsm8k"])["tasks"]
    assert got == {"ppl": quick, "gsm8k": cli.EVAL_TASKS["gsm8k"][2]}


def test_eval_quick_settings(reach):
    assert reach(["eval"]) == {"tasks": "ppl", "settings": cli.EVAL_TASKS["ppl"][1]}
    assert reach(["eval", "--quick"]) == {"tasks": "ppl", "settings": cli.EVAL_TASKS["ppl"][2]}
    assert reach(["eval", "--tasks", "arith2"], quick_env=True) == {
        "tasks": "arith2", "settings": cli.EVAL_TASKS["arith2"][2]}


def test_quant_flags_win_over_quick(reach):
    full = reach(["quant"])
    assert (full["calib"], full["max_windows"]) == ((128, 512), 16)
    assert full["sparsities"] == [0.0, 0.5] and full["activations"] == ["per_token", "per_tensor"]
    quick = reach(["quant", "--quick"])
    assert (quick["calib"], quick["max_windows"]) == ((16, 512), 4)
    given = reach(["quant", "--quick", "--nsamples", "8", "--max-windows", "2", "--sparsities", "0.7"])
    assert (given["calib"], given["max_windows"], given["sparsities"]) == ((8, 512), 2, [0.7])
    assert reach(["quant", "--max-windows", "6"], quick_env=True)["max_windows"] == 6


def test_outliers_flags_win_over_quick(reach):
    full = reach(["outliers", "--measure"])
    assert (full["calib"], full["rows"], full["config"].activations) == ((32, 512), 4, "per_tensor")
    assert reach(["outliers", "--measure", "--quick"])["calib"] == (4, 512)
    assert reach(["outliers", "--measure", "--quick"])["rows"] == 2
    given = reach(["outliers", "--measure", "--nsamples", "6", "--measure-samples", "3"],
                  quick_env=True)
    assert (given["calib"], given["rows"]) == ((6, 512), 3)


def test_bench_flags_win_over_quick(reach):
    full = reach(["bench", "decode", "--systems", "ours-int8"])
    assert (full["batches"], full["prompt_len"], full["new_tokens"], full["repeats"]) == (
        [1, 8], 128, 128, 3)
    assert full["systems"] == ("ours-int8",) and full["shape_models"] == cli.SHAPE_MODEL_NAMES
    quick = reach(["bench", "decode", "--quick"])
    assert quick["systems"] == ("ours-fp32", "ours-int8", "ours-sparse-0.7")
    assert (quick["batches"], quick["prompt_len"], quick["repeats"], quick["shape_models"]) == (
        [1], 16, 1, ())
    given = reach(["bench", "decode", "--batches", "1,8", "--repeats", "2"], quick_env=True)
    assert (given["batches"], given["repeats"], given["new_tokens"]) == ([1, 8], 2, 16)
    assert reach(["bench", "agreement"]) == {"n_prompts": 20, "n_tokens": 32, "engine_tokens": 64}
    assert reach(["bench", "agreement"], quick_env=True) == {"n_prompts": 4, "n_tokens": 8,
                                                             "engine_tokens": 8}


def test_bad_config_values_are_usage_errors(capsys):
    assert cli.main(["quant", "--max-windows", "0"]) == 2
    assert "max_windows" in capsys.readouterr().err
    assert cli.main(["prune", "--sparsities", "0.5,1.5"]) == 2
    assert "sparsities" in capsys.readouterr().err
    assert cli.main(["outliers", "--measure", "--activations", "per_row"]) == 2
    assert "per_row" in capsys.readouterr().err
    assert cli.main(["bench", "decode", "--prompt-len", "0"]) == 2
    assert "prompt_len" in capsys.readouterr().err


def test_bench_kernels_honours_quick_env(monkeypatch):
    from workbench import cli_bench

    calls = []
    monkeypatch.setattr(cli_bench.subprocess, "call", lambda argv: calls.append(argv[1:]) or 0)
    monkeypatch.delenv("WORKBENCH_QUICK", raising=False)
    assert cli.main(["bench", "kernels"]) == 0
    monkeypatch.setenv("WORKBENCH_QUICK", "1")
    assert cli.main(["bench", "kernels"]) == 0
    assert [[a.rsplit("/", 1)[-1] for a in c] for c in calls] == [["kernels.py"],
                                                                   ["kernels.py", "--quick"]]


def test_help_shows_the_config_defaults(capsys):
    for argv, parts in ((["prune"], ["calibration windows (default 128; --quick 16)"]),
                        (["quant"], ["(default 16; --quick 4)", "(default 0,0.5)"]),
                        (["outliers"], ["(default 32; --quick 4)", "(default 4; --quick 2)"]),
                        (["bench"], ["(default 1,8; --quick 1)", "(default 3; --quick 1)"])):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())          # argparse wraps lines
        assert all(part in text for part in parts), (argv, text)


def test_parsing_does_not_import_torch():
    """The parser reads its defaults from run_configs, which stays torch-free: --help and
    usage errors are instant."""
    import subprocess
    import sys

    code = ("import sys; from workbench import cli; p = cli.build_parser(); p.format_help(); "
            "[p.parse_args([c]) for c in ('eval', 'prune', 'quant', 'outliers')]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_old_names_stay_importable():
    from workbench.cli_common import UsageError, quick_mode

    assert cli.UsageError is UsageError and cli.quick_mode is quick_mode
    assert cli.QUICK_ENV == "WORKBENCH_QUICK" and cli.RECOVERY_SIZES[0] == "quick"
    assert callable(cli.cmd_generate) and callable(cli.cmd_chat) and callable(cli.distill_config)
