"""Training-step benchmark: the reference path against the fast path, measured in one run.

    python benchmarks/training.py [--quick] [--steps 4] [--batch 8] [--curves 16]

On the embedded model, a recovery step (SquareHead + CE, the dense model as teacher, its
forward included, a 50% magnitude-pruned student) and an SFT step, batch `--batch` of arith
one-step chat examples (65-82 tokens). Paths, each adding one change to the one before:

    reference   fp32, every logit of student and teacher, random batches, foreach AdamW
    +fused      fused AdamW
    +needed     LM head only at the answer positions, teacher without its head (KD off)
    +length     length-bucketed batches
    +bf16-teacher  the frozen teacher's forward in bf16 (the defaults: "fast")
    +bf16       student forwards in bf16 too (autocast; FP32 weights, gradients and losses)

Each path runs one warm-up step, then `--steps` timed steps (wall time of the whole call / steps;
its setup is under a second). s/step, steps/s and the ratio to the reference are printed and
written to results/training/speed.{csv,md,json}. --quick: reference and fast only.

--curves N also trains N recovery steps with: the reference path at seeds 0 and 1 (run-to-run
noise of the data order), the fast path and the all-bf16 path with random batches at seed 0 (the
reference's batches: numeric difference only) and the fast path at seed 0;
results/training/curves.{csv,md,json}.
Run it on an otherwise idle machine: timing is noisy on a shared one.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pandas as pd
import torch

from workbench import cache, data, load_model
from workbench.distill import DistillConfig, distill_
from workbench.finetune import SFTConfig, finetune_
from workbench.pruning import PruneConfig, prune_

REFERENCE = dict(precision="fp32", outputs="all", batching="random", fused_adamw=False)
PATHS = {"reference": {}, "+fused": {"fused_adamw": True}, "+needed": {"outputs": "needed"},
         "+length": {"batching": "length"}, "+bf16-teacher": {"precision": "bf16-teacher"},
         "+bf16": {"precision": "bf16"}}


def path_settings(quick: bool) -> dict[str, dict]:
    """path -> TrainConfig overrides; each path adds its change to the previous ones."""
    out, acc = {}, dict(REFERENCE)
    for name, change in PATHS.items():
        acc = {**acc, **change}
        out[name] = dict(acc)
    if quick:
        out = {"reference": out["reference"], "+bf16-teacher": out["+bf16-teacher"]}
    return out


def run(kind: str, model, student, tok, task, settings: dict, steps: int, batch: int, seed: int = 0):
    """The report of `steps` steps of kind "recovery" or "sft" from fresh copies."""
    common = dict(lr=1e-4, steps=steps, batch_size=batch, seqlen=256, seed=seed, **settings)
    if kind == "recovery":
        return distill_(copy.deepcopy(student), model, task,
                        DistillConfig(squarehead=1.0, ce=1.0, **common), tokenizer=tok)
    return finetune_(copy.deepcopy(model), task, SFTConfig(**common), tokenizer=tok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per path")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--curves", type=int, default=0, help="recovery steps of the loss comparison")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="results/training")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    student = copy.deepcopy(model)
    prune_(student, None, PruneConfig(method="magnitude", sparsity=0.5))
    task = data.arith_task("one_step", "train", n=256)
    out = Path(args.out)
    meta = {"model": "smollm2-135m", "batch": args.batch, "steps": args.steps,
            "threads": torch.get_num_threads(), "student": "magnitude 50%", "train_n": len(task)}
    rows = []
    for name, settings in path_settings(args.quick).items():
        for kind in ("recovery", "sft"):
            run(kind, model, student, tok, task, settings, 1, args.batch)            # warm-up
            report = run(kind, model, student, tok, task, settings, args.steps, args.batch)
            rows.append({"step": kind, "path": name, **settings,
                         "s_per_step": report.seconds / args.steps})
            print(f"{kind:9s} {name:10s} {rows[-1]['s_per_step']:.2f} s/step", flush=True)
    frame = pd.DataFrame(rows)
    frame["steps_per_s"] = 1 / frame["s_per_step"]
    base = frame[frame["path"] == "reference"].set_index("step")["s_per_step"]
    frame["speedup"] = frame["step"].map(base) / frame["s_per_step"]
    print(frame[["step", "path", "s_per_step", "steps_per_s", "speedup"]].to_string(index=False))
    cache.write_text_atomic(out / "speed.csv", frame.to_csv(index=False))
    cache.write_text_atomic(out / "speed.md", frame.to_markdown(index=False, floatfmt=".3g") + "\n")
    cache.write_json_atomic(out / "speed.json", {**meta, "rows": frame.to_dict("records"),
                                                 "provenance": cache.provenance()})
    if args.curves:
        paths = path_settings(False)
        fast = paths["+bf16-teacher"]
        runs = {"reference seed 0": (REFERENCE, 0), "reference seed 1": (REFERENCE, 1),
                "fast, random batches, seed 0": ({**fast, "batching": "random"}, 0),
                "all-bf16, random batches, seed 0": ({**paths["+bf16"], "batching": "random"}, 0),
                "fast seed 0": (fast, 0)}
        curves = []
        for label, (settings, seed) in runs.items():
            report = run("recovery", model, student, tok, task, settings, args.curves,
                         args.batch, seed)
            curves += [{"run": label, **{k: r[k] for k in ("step", "loss", "squarehead", "ce")}}
                       for r in report.losses]
            print(f"curve {label}: final loss {report.losses[-1]['loss']:.4f}", flush=True)
        wide = pd.DataFrame(curves).pivot(index="step", columns="run", values="loss")
        ref = wide["reference seed 0"]
        summary = pd.DataFrame({
            "run": [c for c in wide.columns if c != "reference seed 0"],
            "mean_abs_diff_vs_ref0": [float((wide[c] - ref).abs().mean())
                                      for c in wide.columns if c != "reference seed 0"],
            "max_rel_diff_vs_ref0": [float(((wide[c] - ref).abs() / ref).max())
                                     for c in wide.columns if c != "reference seed 0"]})
        print(summary.to_string(index=False))
        cache.write_text_atomic(out / "curves.csv", pd.DataFrame(curves).to_csv(index=False))
        cache.write_text_atomic(out / "curves.md", summary.to_markdown(index=False, floatfmt=".4g")
                                + "\n\n" + wide.to_markdown(floatfmt=".4f") + "\n")
        cache.write_json_atomic(out / "curves.json", {
            **meta, "curve_steps": args.curves, "summary": summary.to_dict("records"),
            "runs": {k: {"settings": v[0], "seed": v[1]} for k, v in runs.items()},
            "provenance": cache.provenance()})


if __name__ == "__main__":
    main()
