"""The bytes roofline of batch-1 decoding, and the measured speeds to hold against it.

Batch-1 decoding streams every weight once per token, so the bytes per weight bound the
speed-up over dense FP32 (4 bytes/weight) from above (DESIGN.md, "Performance model"):

    ceiling = 4 / bytes_per_weight
    FP32 4 B/w;  dense INT8 1 B/w;  our sparse INT8: 1 bit of mask + 1 byte per nonzero,
    i.e. 0.125 + density B/w (per-row scales add a few bytes per row, ignored here).

`kernel_results` reads benchmarks/kernels.py's CSV and `decode_results` the decode benchmark's
CSVs (results/decode/*.csv) when there are any; plots and the explorer read only these frames.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.export import find_result, results_root
from workbench.packing import AUTO_SPARSE_MAX_DENSITY

FP32_BYTES = 4.0
INT8_BYTES = 1.0
MASK_BYTES = 1 / 8          # one bit per weight


def bytes_per_weight(fmt: str, sparsity: float = 0.0) -> float:
    """Bytes per weight of a matrix stored as fmt: "fp32", "int8" (dense rows), "sparse"
    (bitmask + packed INT8 nonzeros) or "auto" (sparse at density <= AUTO_SPARSE_MAX_DENSITY,
    as packing.pack_linear chooses, else dense INT8)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    density = 1.0 - sparsity
    if fmt == "fp32":
        return FP32_BYTES
    if fmt == "int8":
        return INT8_BYTES
    if fmt == "sparse":
        return MASK_BYTES + density
    if fmt == "auto":
        return MASK_BYTES + density if density <= AUTO_SPARSE_MAX_DENSITY else INT8_BYTES
    raise ValueError(f"fmt must be one of fp32, int8, sparse, auto; got {fmt!r}")


def speedup_ceiling(fmt: str, sparsity: float = 0.0) -> float:
    """Upper bound on the memory-bound speed-up over dense FP32: 4 / bytes_per_weight."""
    return FP32_BYTES / bytes_per_weight(fmt, sparsity)


def model_bytes(n_weights: int, sparsity: float, quant: str) -> float:
    """Bytes of n_weights pruned weights at sparsity: quant "fp32" stores them dense
    (4 B/w), "int8" packs them as runtime.pack does by default (format "auto")."""
    return n_weights * bytes_per_weight("fp32" if quant == "fp32" else "auto", sparsity)


def kernel_results(path: str | Path | None = None) -> pd.DataFrame:
    """benchmarks/kernels.py's table (results/kernels/kernels.csv, see export.find_result,
    unless path is given)."""
    found = Path(path) if path is not None else find_result("kernels/kernels.csv")
    if found is None or not found.is_file():
        raise FileNotFoundError(f"{path or 'results/kernels/kernels.csv'} is missing: run "
                                "`make bench-kernels` (idle machine, ~25 min)")
    return pd.read_csv(found)


def decode_results(directory: str | Path | None = None) -> pd.DataFrame | None:
    """Every results/decode/*.csv concatenated (a `source` column names the file), or None
    when the decode benchmark has not written any."""
    if directory is None:
        here = results_root() / "decode"
        directory = here if here.is_dir() else Path(__file__).resolve().parent.parent / "results" / "decode"
    directory = Path(directory)
    files = sorted(directory.glob("*.csv")) if directory.is_dir() else []
    if not files:
        return None
    return pd.concat([pd.read_csv(f).assign(source=f.stem) for f in files], ignore_index=True)


def decode_speedups(frame: pd.DataFrame, baseline: str = "hf-fp32",
                    rate: str = "decode_tok_s") -> pd.DataFrame:
    """The decode benchmark's rows (workbench.bench: a `system` and a tokens/s column per
    model, batch and threads) with `speedup`, tokens/s over the baseline system of the same
    model, batch and threads (same run), and `sparsity`, read from "ours-sparse-S" names (0 for
    the dense systems)."""
    missing = {"system", rate} - set(frame.columns)
    if missing:
        raise ValueError(f"decode results need the columns system and {rate}; missing {sorted(missing)}")
    keys = [c for c in ("source", "model", "batch", "threads") if c in frame.columns]
    base = frame[frame["system"] == baseline][keys + [rate]].rename(columns={rate: "_base"})
    if base.empty:
        raise ValueError(f"no {baseline!r} rows to take speed-ups against")
    out = frame.merge(base, on=keys, how="inner") if keys else frame.assign(_base=base["_base"].iloc[0])
    out["speedup"] = out[rate] / out["_base"]
    sparse = out["system"].str.extract(r"-sparse-([0-9.]+)$")[0].astype(float)
    out["sparsity"] = sparse.fillna(0.0)
    return out.drop(columns="_base")
