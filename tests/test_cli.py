"""`python -m workbench eval` on a tiny local checkpoint: table, record, cache."""

import json

import pytest

from workbench import cli
from workbench.models import tiny_llama


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


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
