"""The bytes roofline of batch-1 decoding, and the measured speeds to hold against it.

Batch-1 decoding streams every weight once per token, so the bytes per weight bound the
speed-up over dense FP32 (4 bytes/weight) from above:

    ceiling = 4 / bytes_per_weight
    FP32 4 B/w;  dense INT8 1 B/w;  our sparse INT8: 1 bit of mask + 1 byte per nonzero,
    i.e. 0.125 + density B/w (per-row scales add a few bytes per row, ignored here).

How close a measured system comes is the `roofline` column of results/decode/smollm2-135m.md:
its streamed bytes per second over the machine's read bandwidth (workbench.bench).

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


def _decode_dir(directory: str | Path | None) -> Path:
    """The given directory, else results/decode under $WORKBENCH_RESULTS when it has one,
    else the repository's committed results/decode."""
    if directory is not None:
        return Path(directory)
    here = results_root() / "decode"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "results" / "decode"


def decode_results(directory: str | Path | None = None) -> pd.DataFrame | None:
    """Every results/decode/*.csv concatenated (a `source` column names the file), or None
    when the decode benchmark has not written any."""
    directory = _decode_dir(directory)
    files = [f for f in sorted(directory.glob("*.csv"))           # speed tables only
             if not f.stem.endswith(("-fit", "-agreement"))] if directory.is_dir() else []
    if not files:
        return None
    return pd.concat([pd.read_csv(f).assign(source=f.stem) for f in files], ignore_index=True)


def decode_fits(directory: str | Path | None = None) -> pd.DataFrame | None:
    """Every results/decode/*-fit.csv (the shape models' depth fits) concatenated, or None."""
    directory = _decode_dir(directory)
    files = sorted(directory.glob("*-fit.csv")) if directory.is_dir() else []
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else None


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


def shape_speedups(rows: pd.DataFrame, fits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Decode speed of the random-weight shape models at their full depth against dense FP32:
    one row per (model, system, threads) of the packed systems timed at full depth, with
    `fp32_ms` (FP32 ms/token: timed at full depth where it fit in memory, else the depth fit
    from `fits`, flagged by `fp32_source`), `speedup` = fp32_ms / ms_per_token and `sparsity`."""
    if "layers" not in rows.columns:
        raise ValueError("decode results have no `layers` column: no shape-model rows")
    shape = rows[rows["layers"].notna() & rows["model"].str.contains("random weights")].copy()
    shape["base_model"] = shape["model"].str.split(" (", regex=False).str[0]
    depth = shape.groupby("base_model")["layers"].transform("max")
    full = shape[shape["layers"] == depth]
    out = []
    for (model, t), part in full.groupby(["base_model", "threads"]):
        fp32 = part[part["system"] == "ours-fp32"]
        if len(fp32):
            base, source = float(fp32["decode_ms_per_token"].iloc[0]), "measured"
        elif fits is not None and len(fits):
            fit = fits[(fits["model"].str.startswith(model)) & (fits["system"] == "ours-fp32")
                       & (fits["threads"] == t)]
            if not len(fit):
                continue
            base, source = float(fit["ms_per_token"].iloc[0]), "fit"
        else:
            continue
        for _, r in part.iterrows():
            sparsity = 0.0
            if "-sparse-" in r["system"]:
                sparsity = float(r["system"].rsplit("-", 1)[1])
            out.append({"model": model, "system": r["system"], "threads": t,
                        "layers": int(r["layers"]), "ms_per_token": r["decode_ms_per_token"],
                        "fp32_ms": base, "fp32_source": source,
                        "speedup": base / r["decode_ms_per_token"], "sparsity": sparsity,
                        "rss_mb": r.get("rss_mb"), "peak_rss_mb": r.get("peak_rss_mb")})
    return pd.DataFrame(out)
