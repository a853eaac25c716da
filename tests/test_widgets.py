"""SparsityExplorer driven as a user would: set widget values, press the button."""

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from workbench.roofline import bytes_per_weight, model_bytes, speedup_ceiling  # noqa: E402
from workbench.widgets import SparsityExplorer  # noqa: E402


def sweep_frame() -> pd.DataFrame:
    rows = [{"method": "dense", "structure": "-", "target": 0.0, "sparsity": 0.0, "ppl": 11.0,
             "arith": 0.35}]
    for method, scale in (("sparsegpt", 1.0), ("magnitude", 4.0)):
        for s in (0.5, 0.7):
            rows.append({"method": method, "structure": "unstructured", "target": s,
                         "sparsity": s - 1e-4, "ppl": 11.0 + scale * 20 * s, "arith": 0.35 - s / 3})
        rows.append({"method": method, "structure": "2:4", "target": 0.5, "sparsity": 0.5,
                     "ppl": 40.0 * scale, "arith": 0.1})
    rows.append({"method": "sparsegpt", "structure": "unstructured", "target": 0.9, "sparsity": 0.9,
                 "ppl": 900.0, "arith": 0.0})
    return pd.DataFrame(rows)


class FakeLab:
    """Stands in for sweep.prune_point / sweep.generation_sample and their cache."""

    def __init__(self):
        self.computed, self.samples = [], {}

    def compute_point(self, method, sparsity, quant):
        self.computed.append((method, sparsity, quant))
        return {"method": method, "structure": "unstructured", "target": sparsity,
                "sparsity": sparsity, "quant": quant, "ppl": 123.0, "arith": 0.05}

    def sample(self, method, sparsity, quant, compute):
        key = (method, sparsity, quant)
        if key not in self.samples and compute:
            self.samples[key] = f"sample of {method} at {sparsity:.0%}"
        return self.samples.get(key)


def test_slider_snaps_to_the_sweep_grid_and_numbers_follow():
    ex = SparsityExplorer(sweep_frame(), n_weights=1_000_000)
    assert [v for _, v in ex.sparsity.options] == [0.0, 0.5, 0.7, 0.9]   # no 2:4 stop
    assert ex.sparsity.continuous_update is False
    assert ex.values()["perplexity"] == "11.00"                          # 0%: the dense row
    ex.method.value = "sparsegpt"
    ex.sparsity.value = 0.5
    assert ex.values()["perplexity"] == "21.00" and ex.values()["arith accuracy"] == "18.3%"
    assert "21.00" in ex.numbers.value
    ex.method.value = "magnitude"
    assert ex.values()["perplexity"] == "51.00"
    ex.sparsity.value = 0.7
    assert ex.values()["perplexity"] == "67.00"


def test_model_size_follows_the_packed_format_formula():
    ex = SparsityExplorer(sweep_frame(), n_weights=1_000_000)
    ex.method.value = "sparsegpt"
    ex.sparsity.value = 0.7
    assert ex.values()["decoder weights"] == "4.0 MB"                   # FP32: 4 B/w
    ex.quant.value = "int8"
    assert ex.values()["bytes/weight"] == "0.425"                        # 0.125 + density
    assert ex.values()["decoder weights"] == "0.4 MB"
    ex.sparsity.value = 0.0
    assert ex.values()["bytes/weight"] == "1.000"                        # dense INT8
    assert bytes_per_weight("sparse", 0.5) == pytest.approx(0.625)
    assert speedup_ceiling("auto", 0.7) == pytest.approx(4 / 0.425)
    assert model_bytes(10, 0.9, "int8") == pytest.approx(10 * 0.225)


def test_missing_point_is_computed_only_by_the_button():
    lab = FakeLab()
    ex = SparsityExplorer(sweep_frame(), compute_point=lab.compute_point, sample=lab.sample)
    ex.method.value = "magnitude"
    ex.sparsity.value = 0.9                       # in the grid (sparsegpt has it), not for magnitude
    assert ex.point() is None and ex.values()["perplexity"] == "not computed"
    assert lab.computed == [] and ex.button.description == "compute this point"
    assert not ex.button.disabled
    ex.button.click()
    assert lab.computed == [("magnitude", 0.9, "fp32")]
    assert ex.values()["perplexity"] == "123.00"
    assert ex.button.description == "generate a sample"
    ex.sparsity.value = 0.5                       # moving away and back computes nothing
    ex.sparsity.value = 0.9
    assert lab.computed == [("magnitude", 0.9, "fp32")] and lab.samples == {}


def test_sample_generation_is_cached_per_point():
    lab = FakeLab()
    ex = SparsityExplorer(sweep_frame(), compute_point=lab.compute_point, sample=lab.sample)
    ex.method.value = "sparsegpt"
    ex.sparsity.value = 0.5
    assert "no sample" in ex.sample_text.value
    ex.button.click()
    assert "sample of sparsegpt at 50%" in ex.sample_text.value
    assert ex.button.disabled and ex.button.description == "sample cached"
    ex.sparsity.value = 0.7
    assert "no sample" in ex.sample_text.value
    ex.sparsity.value = 0.5
    assert "sample of sparsegpt at 50%" in ex.sample_text.value and len(lab.samples) == 1


def test_a_failing_computation_is_reported_in_the_widget():
    def broken(method, sparsity, quant):
        raise RuntimeError("out of memory")

    ex = SparsityExplorer(sweep_frame(), compute_point=broken)
    ex.method.value = "magnitude"
    ex.sparsity.value = 0.9
    ex.button.click()
    assert "out of memory" in ex.status.value and ex.point() is None


def test_without_compute_the_button_is_disabled_and_int8_without_scores_says_so():
    ex = SparsityExplorer(sweep_frame())
    ex.method.value = "magnitude"
    ex.sparsity.value = 0.9
    assert ex.button.disabled
    ex.quant.value = "int8"                       # this sweep has no INT8 rows
    assert ex.values()["perplexity"] == "not computed"
    assert "no INT8 scores" in ex.note.value
    ex.quant.value = "fp32"
    assert ex.note.value == "" and bytes(ex.curves.value).startswith(b"\x89PNG")


def test_frame_needs_pruned_points():
    with pytest.raises(ValueError, match="no pruned point"):
        SparsityExplorer(sweep_frame().iloc[:1])
