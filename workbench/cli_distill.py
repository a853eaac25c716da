"""The distill command: SFT teacher, SparseGPT one-shot, CE vs SquareHead+CE recovery to a dev
plateau at each sparsity, then W8A8 + pack, scored on the packed model (workbench.recovery).
Its config is a RecoveryConfig size (quick, reproduce, full, experiments) with the flags given
replacing its fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from workbench.cli_common import (
    UsageError,
    executor_from,
    float_list,
    int_list,
    quick_mode,
    stem,
    write_frame,
)
from workbench.run_configs import RECOVERY_SIZES as RECOVERY_SIZES  # recovery.SIZES, torch-free


def recovery_config(args, quick: bool):
    """RecoveryConfig from the distill arguments: the size's classmethod (quick with --quick or
    WORKBENCH_QUICK=1), then whatever was given on the command line. Raises UsageError before
    anything is loaded."""
    from workbench.recovery import RecoveryConfig

    size = "quick" if quick else args.size
    base = RecoveryConfig.sized(size)

    def schedule(config, steps, lr):
        changes = {"steps": steps, "warmup": steps // 10} if steps is not None else {}
        given = {"lr": lr, "batch_size": args.batch_size}
        return dataclasses.replace(config, **changes, **{k: v for k, v in given.items() if v is not None})

    given = {"train_n": args.train_n, "nsamples": args.nsamples, "calib_seqlen": args.seqlen,
             "eval_n": args.eval_n, "dev_n": args.dev_n}
    if args.max_windows is not None:
        given["ppl_max_windows"] = args.max_windows or None     # 0: the whole eval split
    sparsities = float_list(args.sparsities, "--sparsities")
    if sparsities is not None:
        given["sparsities"] = sparsities
    if args.seeds is not None:
        given["seeds"] = int_list(args.seeds, "--seeds", low=0)
    try:
        return dataclasses.replace(
            base, sft=schedule(base.sft, args.sft_steps, args.sft_lr),
            train=schedule(base.train, args.steps, args.lr),
            **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise UsageError(str(err)) from None


def cmd_distill(args) -> int:
    """SFT teacher, SparseGPT one-shot, CE vs SquareHead+CE recovery to a dev plateau at each
    sparsity, then W8A8 + pack, scored on the packed model (workbench.recovery)."""
    import pandas as pd

    from workbench import load_model
    from workbench.recovery import run_recovery

    quick = quick_mode(args.quick)
    config = recovery_config(args, quick)
    executor = executor_from(args)
    model, tok = load_model(args.model)
    print(f"model: {args.model}  size: {'quick' if quick else args.size}  sparsities: "
          f"{list(config.sparsities)}  seeds: {list(config.seeds)}  step caps: SFT "
          f"{config.sft.steps}, recovery {config.train.steps}")
    shown = []

    def show(row):
        shown.append(row)
        print(pd.DataFrame([row]).to_string(index=False, header=len(shown) == 1), flush=True)

    result = run_recovery(model, tok, config, on_row=show, executor=executor,
                          model_name=args.model)
    print(result.table.to_string(index=False))
    out_dir = Path(args.results) / "distill"
    name = stem(args, quick)
    write_frame(result.table, out_dir, name, {
        "model": args.model, "quick": quick, **result.meta, "weights": result.weights,
        "computed": result.computed})
    for part in ("losses", "dev", "w8a8", "summary"):
        write_frame(getattr(result, part), out_dir, f"{name}-{part}", {"model": args.model})
    if args.save:
        from workbench.cli_save import save_students

        save_students(Path(args.save), args.model, model, tok, result, config)
    return 0
