"""The bench command: `decode` (tokens/s of whole models, DecodeBenchConfig), `agreement`
(greedy tokens of the runtime against its references, AgreementConfig) and `kernels`
(benchmarks/kernels.py, which reads --quick and WORKBENCH_QUICK itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workbench.cli_common import (
    UsageError,
    int_list,
    names,
    quick_mode,
    stem,
    with_flags,
    write_frame,
)
from workbench.run_configs import AgreementConfig, DecodeBenchConfig

KERNELS_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "kernels.py"


def decode_config(args, quick: bool) -> DecodeBenchConfig:
    """DecodeBenchConfig of the bench arguments; UsageError before anything is built."""
    base = DecodeBenchConfig.quick() if quick else DecodeBenchConfig()
    systems = names(args.systems) or None                # --systems '': all, as before
    return with_flags(base, systems=systems, threads=int_list(args.threads, "--threads"),
                      batches=int_list(args.batches, "--batches"), prompt_len=args.prompt_len,
                      new_tokens=args.new_tokens, repeats=args.repeats,
                      shape_layers=int_list(args.shape_layers, "--shape-layers", empty=True),
                      shape_models=names(args.shape_models))


def decode_systems(config: DecodeBenchConfig) -> tuple[str, ...]:
    """config.systems, or every embedded system plus the llama.cpp peers that are installed."""
    from workbench import bench, peers

    if config.systems is not None:
        return config.systems
    systems = bench.EMBEDDED_SYSTEMS
    if peers.llamacpp_available():
        systems += bench.LLAMACPP_SYSTEMS
    else:
        print("llama.cpp peer not installed (`make peers`): its systems are skipped")
    if peers.llama_bench_path() is not None:
        systems += bench.LLAMABENCH_SYSTEMS
    else:
        print("llama-bench not built (`make peers`): its systems are skipped")
    return systems


def cmd_agreement(args, quick: bool) -> int:
    import pandas as pd

    from workbench import bench

    config = AgreementConfig.quick() if quick else AgreementConfig()
    rows = pd.DataFrame(bench.agreement_table(args.model, **config.to_dict()))
    rows["identical"] = rows["common_prefix"] == rows["n_tokens"]
    summary = rows.groupby("comparison", sort=False).agg(
        prompts=("prompt", "size"), equal_tokens=("equal_tokens", "sum"),
        tokens=("n_tokens", "sum"), identical_prompts=("identical", "sum"),
        mean_common_prefix=("common_prefix", "mean"),
        max_rel_logit_diff=("rel_logit_diff", "max")).reset_index()
    summary["token_agreement"] = summary["equal_tokens"] / summary["tokens"]
    print(summary.to_string(index=False))
    write_frame(summary, Path(args.results) / "decode", f"{stem(args, quick)}-agreement",
                {"model": args.model, "quick": quick, "per_prompt": rows.to_dict("records")})
    return 0


def cmd_decode(args, quick: bool) -> int:
    import pandas as pd

    from workbench import bench

    config = decode_config(args, quick)
    for kind in config.systems or ():
        try:
            bench.check_system(kind)
        except ValueError as err:
            raise UsageError(str(err)) from None
    result = bench.run_decode(
        args.model, decode_systems(config), batches=list(config.batches),
        threads=list(config.threads), prompt_len=config.prompt_len,
        new_tokens=config.new_tokens, repeats=config.repeats,
        shape_models=config.shape_models, shape_layers=list(config.shape_layers))
    out_dir = Path(args.results) / "decode"
    name = stem(args, quick)
    write_frame(pd.DataFrame(result["rows"]), out_dir, name, {"model": args.model, "quick": quick})
    if result["fits"]:
        write_frame(pd.DataFrame(result["fits"]), out_dir, f"{name}-shape-fit",
                    {"note": "random-weight shape models; decode ms/token extrapolated to the "
                             "full depth by a least-squares line over the measured depths"})
    return 0


def cmd_bench(args) -> int:
    """Speed: `decode` (tokens/s of whole models, one run), `agreement` or `kernels`."""
    quick = quick_mode(args.quick)
    if args.what == "kernels":
        if not KERNELS_SCRIPT.is_file():
            raise UsageError(f"{KERNELS_SCRIPT} not found: run from a source checkout")
        return subprocess.call([sys.executable, str(KERNELS_SCRIPT)] + (["--quick"] if quick else []))
    if args.what == "agreement":
        return cmd_agreement(args, quick)
    return cmd_decode(args, quick)
