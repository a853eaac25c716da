"""Reading the decode benchmark's tables back: speed-ups against the baseline of the same run."""

import pandas as pd
import pytest

from workbench import roofline


def _row(system, model, threads, ms, layers=None):
    return {"system": system, "model": model, "batch": 1, "threads": threads,
            "decode_tok_s": 1e3 / ms, "decode_ms_per_token": ms, "layers": layers, "rss_mb": 1.0,
            "peak_rss_mb": 2.0}


def test_decode_speedups_divide_by_the_same_runs_baseline():
    frame = pd.DataFrame([_row("hf-fp32", "m", 1, 100.0), _row("ours-sparse-0.7", "m", 1, 20.0),
                          _row("hf-fp32", "m", 2, 50.0), _row("ours-sparse-0.7", "m", 2, 20.0)])
    out = roofline.decode_speedups(frame).set_index(["system", "threads"])
    assert out.loc[("ours-sparse-0.7", 1), "speedup"] == pytest.approx(5.0)
    assert out.loc[("ours-sparse-0.7", 2), "speedup"] == pytest.approx(2.5)
    assert out.loc[("ours-sparse-0.7", 1), "sparsity"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="hf-fp32"):
        roofline.decode_speedups(frame[frame.system != "hf-fp32"])


def test_shape_speedups_use_measured_fp32_else_the_fit():
    big, small = "big-shape (4 layers, random weights)", "small-shape (2 layers, random weights)"
    rows = pd.DataFrame([
        _row("ours-fp32", "big-shape (2 layers, random weights)", 1, 30.0, 2),   # fit points only
        _row("ours-int8", big, 1, 10.0, 4), _row("ours-sparse-0.8", big, 1, 8.0, 4),
        _row("ours-fp32", small, 1, 12.0, 2), _row("ours-sparse-0.7", small, 1, 3.0, 2),
        _row("hf-fp32", "embedded", 1, 5.0)])
    fits = pd.DataFrame([{"model": "big-shape (random weights)", "system": "ours-fp32",
                          "threads": 1, "ms_per_token": 60.0}])
    out = roofline.shape_speedups(rows, fits).set_index(["model", "system"])
    assert out.loc[("big-shape", "ours-int8"), "speedup"] == pytest.approx(6.0)
    assert out.loc[("big-shape", "ours-sparse-0.8"), "fp32_source"] == "fit"
    assert out.loc[("big-shape", "ours-sparse-0.8"), "sparsity"] == pytest.approx(0.8)
    assert out.loc[("small-shape", "ours-sparse-0.7"), "speedup"] == pytest.approx(4.0)
    assert out.loc[("small-shape", "ours-sparse-0.7"), "fp32_source"] == "measured"
    assert ("big-shape", "ours-fp32") not in out.index          # 2 layers is not the full depth
    with pytest.raises(ValueError, match="layers"):
        roofline.shape_speedups(rows.drop(columns="layers"))
