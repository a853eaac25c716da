"""Baselines the sparse-INT8 kernels must beat: batch-1 GEMV with torch FP32 and torch dynamic
INT8, timed with weights cold in cache (as in decoding, where every weight comes from DRAM).

    python benchmarks/gemv_baselines.py [--threads 1,2] [--repeats 30]

Each configuration cycles through a set of distinct matrices whose total size is at least
4x the last-level cache, so no matrix is still cached when it is used again. Prints medians,
effective read bandwidth (weight bytes / time) and the INT8 / FP32 speed ratio from one run;
writes results/kernels/gemv_baselines.csv. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]   # (out, in)


def _llc_bytes() -> int:
    for index in range(4, -1, -1):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        if path.is_file():
            text = path.read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * scale
    return 32 << 20


def _time(fns, x, repeats: int) -> float:
    """Median seconds per call, cycling through fns (one per distinct matrix) after a warm-up."""
    for fn in fns:
        fn(x)
    samples = []
    for _ in range(repeats):
        for fn in fns:
            t0 = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@torch.inference_mode()
def run(threads: list[int], repeats: int, llc: int) -> list[dict]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    rows = []
    for out_f, in_f in SHAPES:
        n_fp32 = max(2, -(-4 * llc // (out_f * in_f * 4)))
        n_int8 = max(2, -(-4 * llc // (out_f * in_f)))
        weights = [torch.randn(out_f, in_f) for _ in range(max(n_fp32, n_int8))]
        fp32 = [lambda x, w=w: F.linear(x, w) for w in weights[:n_fp32]]
        int8 = []
        for w in weights[:n_int8]:
            lin = torch.nn.Linear(in_f, out_f, bias=False)
            lin.weight.data.copy_(w)
            q = DynamicInt8Linear.from_float(_with_qconfig(lin))
            int8.append(q)
        x = torch.randn(1, in_f)
        for t in threads:
            torch.set_num_threads(t)
            t_fp32 = _time(fp32, x, repeats)
            t_int8 = _time(int8, x, repeats)
            rows.append({"out": out_f, "in": in_f, "threads": t, "fp32_ms": t_fp32 * 1e3,
                         "int8_ms": t_int8 * 1e3,
                         "fp32_GBps": out_f * in_f * 4 / t_fp32 / 1e9,
                         "int8_GBps": out_f * in_f / t_int8 / 1e9,
                         "int8_over_fp32": t_fp32 / t_int8,
                         "matrices_fp32": n_fp32, "matrices_int8": n_int8})
            print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in rows[-1].items()), flush=True)
    return rows


def _with_qconfig(lin):
    lin.qconfig = torch.ao.quantization.default_dynamic_qconfig
    return lin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="results/kernels/gemv_baselines.csv")
    args = parser.parse_args()
    import pandas as pd

    from workbench import cache

    llc = _llc_bytes()
    print(f"last-level cache {llc >> 20} MiB; rotating >= 4x that per configuration; "
          f"torch {torch.__version__}, quantized engine {torch.backends.quantized.engine}")
    rows = run([int(t) for t in args.threads.split(",")], args.repeats, llc)
    frame = pd.DataFrame(rows)
    cache.write_text_atomic(args.out, frame.to_csv(index=False))
    cache.write_json_atomic(Path(args.out).with_suffix(".json"),
                            {"llc_bytes": llc, "repeats": args.repeats, "rows": rows,
                             "provenance": cache.provenance()})
    print(frame.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
