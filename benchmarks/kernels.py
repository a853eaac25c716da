"""Kernel benchmark: our sparse/dense INT8 Linear against torch FP32 (F.linear) and torch
dynamic INT8 (torch.ao.nn.quantized.dynamic.Linear), all measured in one run.

    python benchmarks/kernels.py [--quick] [--threads 1,2] [--batches 1,16,128]

Its settings are run_configs.KernelBenchConfig: quick() with --quick or WORKBENCH_QUICK=1 (as
`python -m workbench bench kernels`), then the flags given.

Weights come from DRAM, as in decoding: every configuration cycles through a set of distinct
matrices whose total size is at least 4x the last-level cache, so no matrix is still cached
when it is used again. Each timed call is one module forward (Python call included, as a user
would run it); the table reports medians. Effective GB/s = bytes of the weight format / time;
`of_probe` is that as a fraction of a read-bandwidth probe (torch.sum over a 512 MiB buffer,
same thread count, same run). Writes results/kernels/kernels.csv (+ .json with provenance).
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench import kernels as K
from workbench.cli_common import (
    QUICK_ENV,
    UsageError,
    defaults,
    float_list,
    int_list,
    quick_mode,
    shown,
    with_flags,
)
from workbench.run_configs import KernelBenchConfig
from workbench.timing import read_bandwidth

SHAPES = list(KernelBenchConfig().shapes)            # (out, in)
SPARSITIES = list(KernelBenchConfig().sparsities)
ROTATE = 4            # rotating set >= ROTATE x last-level cache


def llc_bytes() -> int:
    for index in range(4, -1, -1):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        if path.is_file():
            text = path.read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * scale
    return 32 << 20


def median_time(fns, x, repeats: int, min_samples: int = 20) -> float:
    """Median seconds per call, cycling through fns (one per distinct matrix) after a warm-up."""
    for fn in fns:
        fn(x)
    samples: list[float] = []
    rounds = max(repeats, -(-min_samples // len(fns)))
    for _ in range(rounds):
        for fn in fns:
            t0 = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _n_matrices(bytes_each: int, llc: int) -> int:
    return max(2, -(-ROTATE * llc // max(bytes_each, 1)))


def _weights(out_f: int, in_f: int, sparsity: float, count: int, seed: int) -> list[torch.Tensor]:
    """Random weights, each zero with probability `sparsity` (unstructured; the achieved
    density is reported per row of the table)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        w = torch.randn(out_f, in_f, generator=g)
        if sparsity:
            w[torch.rand(out_f, in_f, generator=g) < sparsity] = 0.0
        out.append(w)
    return out


def _torch_int8(w: torch.Tensor):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    lin.qconfig = torch.ao.quantization.default_dynamic_qconfig
    return DynamicInt8Linear.from_float(lin)


@torch.inference_mode()
def bench_shape(out_f, in_f, sparsities, batches, threads, repeats, llc, probe, log) -> list[dict]:
    rows = []
    dense_w = _weights(out_f, in_f, 0.0, _n_matrices(out_f * in_f, llc), seed=1)
    fp32 = [lambda x, w=w: F.linear(x, w) for w in dense_w[:_n_matrices(out_f * in_f * 4, llc)]]
    tint8 = [_torch_int8(w) for w in dense_w]
    ours_dense = [K.SparseInt8Linear.from_linear(_linear(w), format="dense") for w in dense_w]
    ours_sparse = {}
    for s in sparsities:
        probe_pack = K.pack_linear(_weights(out_f, in_f, s, 1, seed=2)[0], format="sparse")
        n = _n_matrices(probe_pack.nbytes, llc)
        ours_sparse[s] = [K.SparseInt8Linear.from_linear(_linear(w), format="sparse")
                          for w in _weights(out_f, in_f, s, n, seed=3)]
    for t in threads:
        torch.set_num_threads(t)
        for mods in [ours_dense, *ours_sparse.values()]:
            for m in mods:
                m.n_threads = t
        for b in batches:
            x = torch.randn(b, in_f)
            base = {"fp32": median_time(fp32, x, repeats),
                    "torch_int8": median_time(tint8, x, repeats),
                    "ours_dense_int8": median_time(ours_dense, x, repeats)}
            for s, mods in ours_sparse.items():
                packed = mods[0].packed
                t_s = median_time(mods, x, repeats)
                gbps = packed.nbytes / t_s / 1e9
                row = {"out": out_f, "in": in_f, "batch": b, "threads": t, "sparsity": s,
                       "isa": K.active_isa(), "ours_ms": t_s * 1e3,
                       "ours_dense_int8_ms": base["ours_dense_int8"] * 1e3,
                       "torch_int8_ms": base["torch_int8"] * 1e3, "torch_fp32_ms": base["fp32"] * 1e3,
                       "x_vs_torch_int8": base["torch_int8"] / t_s,
                       "x_vs_ours_dense_int8": base["ours_dense_int8"] / t_s,
                       "x_vs_torch_fp32": base["fp32"] / t_s,
                       "density": packed.density, "bytes_per_weight": packed.bytes_per_weight, "weight_GBps": gbps,
                       "of_probe": gbps / probe[t], "matrices": len(mods)}
                rows.append(row)
                log(row)
    return rows


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    return lin


def _fmt(row: dict) -> str:
    return (f"{row['out']:>5}x{row['in']:<5} b={row['batch']:<3} t={row['threads']} "
            f"s={row['sparsity']:.0%}: ours {row['ours_ms']:.3f} ms | dense-int8 "
            f"{row['ours_dense_int8_ms']:.3f} | torch-int8 {row['torch_int8_ms']:.3f} | fp32 "
            f"{row['torch_fp32_ms']:.3f} || x{row['x_vs_torch_int8']:.2f} vs torch-int8, "
            f"x{row['x_vs_ours_dense_int8']:.2f} vs our dense, x{row['x_vs_torch_fp32']:.1f} vs fp32, "
            f"{row['weight_GBps']:.1f} GB/s ({row['of_probe']:.0%} of probe)")


def _shape_list(text: str | None):
    return None if text is None else tuple(tuple(int(v) for v in s.split("x")) for s in text.split(","))


def settings(argv=None) -> tuple[KernelBenchConfig, Path]:
    """(config, output csv) of a command line: KernelBenchConfig.quick() with --quick or
    WORKBENCH_QUICK=1 (and a -quick output name), else the defaults; then every flag given
    replaces its field, so an explicit flag wins over quick mode."""
    def of(name, show=shown):
        return defaults(KernelBenchConfig, name, show)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", help=f"comma list ({of('threads')})")
    parser.add_argument("--batches", help=f"comma list ({of('batches')})")
    parser.add_argument("--sparsities", help=f"comma list ({of('sparsities')})")
    parser.add_argument("--shapes", help="comma list of OUTxIN ("
                        + of("shapes", lambda v: ",".join(f"{o}x{i}" for o, i in v)) + ")")
    parser.add_argument("--repeats", type=int, help=f"timed rounds at least ({of('repeats')})")
    parser.add_argument("--quick", action="store_true",
                        help=f"KernelBenchConfig.quick() (also ${QUICK_ENV}=1); flags given win")
    parser.add_argument("--out", default="results/kernels/kernels.csv",
                        help="output csv (%(default)s; -quick.csv in quick mode)")
    args = parser.parse_args(argv)
    quick = quick_mode(args.quick)
    try:
        config = with_flags(KernelBenchConfig.quick() if quick else KernelBenchConfig(),
                            shapes=_shape_list(args.shapes), repeats=args.repeats,
                            batches=int_list(args.batches, "--batches"),
                            sparsities=float_list(args.sparsities, "--sparsities"),
                            threads=int_list(args.threads, "--threads"))
    except (UsageError, ValueError) as err:
        parser.error(str(err))
    return config, Path(args.out.replace(".csv", "-quick.csv") if quick else args.out)


def main(argv=None) -> None:
    config, out = settings(argv)
    import pandas as pd

    from workbench import cache

    llc = llc_bytes()
    probe = {t: read_bandwidth(t) for t in config.threads}
    print(f"kernel path {K.active_isa()} (available {K.supported_isas()}); {K.cpu_model()}\n"
          f"weights cold: each configuration rotates through distinct matrices totalling >= "
          f"{ROTATE}x the {llc >> 20} MiB last-level cache\nread-bandwidth probe: "
          + ", ".join(f"{t} thread(s) {gb:.1f} GB/s" for t, gb in probe.items()), flush=True)
    rows = []
    for out_f, in_f in config.shapes:
        rows += bench_shape(out_f, in_f, config.sparsities, config.batches, config.threads,
                            config.repeats, llc, probe, lambda r: print(_fmt(r), flush=True))
    frame = pd.DataFrame(rows)
    cache.write_text_atomic(out, frame.to_csv(index=False))
    cache.write_json_atomic(out.with_suffix(".json"),
                            {"llc_bytes": llc, "rotate_x_llc": ROTATE, "repeats": config.repeats,
                             "read_probe_GBps": probe, "cpu": K.cpu_features(),
                             "provenance": cache.provenance()})
    print(frame.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
