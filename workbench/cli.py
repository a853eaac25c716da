"""`python -m workbench ...`: scripted runs of the workbench steps.

    python -m workbench eval --model smollm2-135m --tasks ppl,arith [--quick]
    python -m workbench prune --methods sparsegpt --sparsities 0.5,0.7 [--save DIR]
    python -m workbench distill [--size reproduce|full|experiments] [--quick] [--save DIR]
    python -m workbench generate --model PATH --prompt TEXT [--runtime int8|fp32|hf] [--sample]
    python -m workbench chat --model PATH [--system TEXT] [--max-new-tokens N]

eval prints a table and writes results/eval/<model>[-quick].{json,md}; distill writes
results/distill/<model>[-quick].{md,json,csv} and its training curves, dev curves, W8A8
comparison and seed summary in <...>-{losses,dev,w8a8,summary}.*.
generate and chat stream tokens to stdout and a prefill / decode tok/s line to stderr; --model
is a packed directory, a Hugging Face directory, a .gguf file, a compressed-tensors directory
or the embedded model (workbench.formats.open_model).
Each command runs a config of workbench.run_configs (or recovery.RecoveryConfig): its quick()
with --quick or WORKBENCH_QUICK=1, else its defaults, then every flag given on the command line
replaces its field, so an explicit flag wins over quick mode.
Every result goes through the content-hashed cache, so a re-run with the same model and
settings is instant.

This module is the parser and the dispatch; the commands live in cli_accuracy, cli_distill,
cli_bench and cli_generate, what they share in cli_common.
"""

from __future__ import annotations

import argparse
import sys

from workbench.cli_accuracy import cmd_eval, cmd_outliers, cmd_prune, cmd_quant
from workbench.cli_bench import cmd_bench
from workbench.cli_common import (
    QUICK_ENV,
    UsageError,
    add_executor_flags,
    defaults,
    quick_mode,
    shown,
)
from workbench.cli_distill import cmd_distill, recovery_config
from workbench.cli_generate import RUNTIME_NAMES, cmd_chat, cmd_generate
from workbench.run_configs import (
    EVAL_TASKS,
    OUTLIER_METRICS,
    RECOVERY_SIZES,
    SHAPE_MODEL_NAMES,
    DecodeBenchConfig,
    EvalConfig,
    OutlierConfig,
    PruneGridConfig,
    W8A8Config,
)

__all__ = ["EVAL_TASKS", "QUICK_ENV", "RECOVERY_SIZES", "RUNTIME_NAMES", "SHAPE_MODEL_NAMES",
           "UsageError", "build_parser", "cmd_bench", "cmd_chat", "cmd_distill", "cmd_eval",
           "cmd_generate", "cmd_outliers", "cmd_prune", "cmd_quant", "distill_config", "main",
           "quick_mode"]

QUICK_HELP = f"start from the command's quick() config (also ${QUICK_ENV}=1); flags given win"


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: perplexity and task accuracy")
    ev.add_argument("--model", default="smollm2-135m", help="embedded name, local path or hub id")
    ev.add_argument("--tasks", default=None, help=f"comma list of {', '.join(EVAL_TASKS)} "
                                                  f"(default {','.join(EvalConfig().tasks)})")
    ev.add_argument("--quick", action="store_true", help=QUICK_HELP)
    ev.add_argument("--refresh", action="store_true", help="recompute even if cached")
    ev.add_argument("--results", default="results", help="directory for the written record")
    ev.set_defaults(func=cmd_eval)


def _add_prune(sub) -> None:
    def of(name):
        return defaults(PruneGridConfig, name)

    pr = sub.add_parser("prune", help="prune with a grid of configs and evaluate each point")
    pr.add_argument("--model", default="smollm2-135m")
    pr.add_argument("--methods", help=f"comma list: sparsegpt, wanda, magnitude, ria ({of('methods')})")
    pr.add_argument("--sparsities", help=f"comma list, for unstructured ({of('sparsities')})")
    pr.add_argument("--structures", help=f"comma list: unstructured, 2:4, 4:8 ({of('structures')})")
    pr.add_argument("--layer-sparsities",
                    help=f"comma list: uniform, owl (OWL's per-block sparsities) "
                         f"({of('layer_sparsities')})")
    pr.add_argument("--refines", help=f"comma list: none, dsnot ({of('refines')})")
    pr.add_argument("--tasks", help=f"comma list of {', '.join(EVAL_TASKS)} "
                                    f"(default {','.join(PruneGridConfig().tasks)})")
    pr.add_argument("--nsamples", type=int, help=f"calibration windows ({of('nsamples')})")
    pr.add_argument("--seqlen", type=int, help=f"calibration window length ({of('seqlen')})")
    pr.add_argument("--quick", action="store_true", help=QUICK_HELP)
    pr.add_argument("--name", default=None, help="stem of the written table")
    pr.add_argument("--results", default="results")
    pr.add_argument("--save", default=None, metavar="DIR",
                    help="also write each pruned model as a Hugging Face checkpoint DIR/<point> "
                         "(method-sparsity[-owl][-dsnot], N:M as 2of4), from the cached pruned "
                         "weights; a point whose weights left the cache is pruned again")
    add_executor_flags(pr)
    pr.set_defaults(func=cmd_prune)


def _add_quant(sub) -> None:
    def of(name):
        return defaults(W8A8Config, name)

    qu = sub.add_parser("quant", help="W8A8 perplexity across smoothing, activations, sparsity")
    qu.add_argument("--model", default="smollm2-135m")
    qu.add_argument("--sparsities", help=f"SparseGPT sparsity levels ({of('sparsities')})")
    qu.add_argument("--smoothings", help=f"comma list ({of('smoothings')})")
    qu.add_argument("--activations", help=f"comma list ({of('activations')})")
    qu.add_argument("--nsamples", type=int, help=f"calibration windows ({of('nsamples')})")
    qu.add_argument("--seqlen", type=int, help=f"calibration window length ({of('seqlen')})")
    qu.add_argument("--max-windows", type=int,
                    help=f"perplexity windows of seqlen ({of('max_windows')})")
    qu.add_argument("--quick", action="store_true", help=QUICK_HELP)
    qu.add_argument("--name", default=None)
    qu.add_argument("--results", default="results")
    add_executor_flags(qu)
    qu.set_defaults(func=cmd_quant)


def _add_outliers(sub) -> None:
    def of(name):
        return defaults(OutlierConfig, name)

    ou = sub.add_parser("outliers", help="outlier-layer ranking, with and without the first token")
    ou.add_argument("--model", default="smollm2-135m")
    ou.add_argument("--metric", choices=OUTLIER_METRICS,
                    help=f"input statistic to rank by ({of('metric')})")
    ou.add_argument("--k", type=int, help=f"layers in the top list ({of('k')})")
    ou.add_argument("--nsamples", type=int, help=f"calibration windows to profile ({of('nsamples')})")
    ou.add_argument("--seqlen", type=int, help=f"calibration window length ({of('seqlen')})")
    ou.add_argument("--measure", action="store_true", help="also measure one-layer W8A8 loss deltas")
    ou.add_argument("--measure-samples", type=int,
                    help=f"calibration windows measured ({of('measure_samples')})")
    ou.add_argument("--activations",
                    help=f"activation quantizer when measuring ({of('activations')})")
    ou.add_argument("--quick", action="store_true", help=QUICK_HELP)
    ou.add_argument("--name", default=None)
    ou.add_argument("--results", default="results")
    ou.set_defaults(func=cmd_outliers)


def _add_distill(sub) -> None:
    di = sub.add_parser("distill", help="SFT teacher, SparseGPT, CE vs SquareHead+CE recovery, "
                                         "W8A8 + pack, scored on the packed model")
    di.add_argument("--model", default="smollm2-135m")
    di.add_argument("--size", default="reproduce", choices=RECOVERY_SIZES,
                    help="RecoveryConfig.quick / reproduce / the full defaults / experiments (3 seeds)")
    di.add_argument("--sparsities", default=None, help="comma list of SparseGPT sparsities")
    di.add_argument("--steps", type=int, default=None, help="recovery step cap (each method)")
    di.add_argument("--lr", type=float, default=None, help="recovery learning rate")
    di.add_argument("--sft-steps", type=int, default=None, help="teacher SFT step cap")
    di.add_argument("--sft-lr", type=float, default=None)
    di.add_argument("--batch-size", type=int, default=None, help="SFT and recovery batch")
    di.add_argument("--seeds", default=None, help="comma list: data-order seeds of SFT and recovery")
    di.add_argument("--train-n", type=int, default=None, help="arith one-step train examples")
    di.add_argument("--dev-n", type=int, default=None, help="arith one-step dev items")
    di.add_argument("--nsamples", type=int, default=None, help="calibration windows")
    di.add_argument("--seqlen", type=int, default=None, help="calibration window length")
    di.add_argument("--eval-n", type=int, default=None, help="arith one-step test items")
    di.add_argument("--max-windows", type=int, default=None, help="perplexity windows (0: all)")
    di.add_argument("--quick", action="store_true", help="a smoke run of the whole pipeline")
    di.add_argument("--name", default=None)
    di.add_argument("--results", default="results")
    di.add_argument("--save", default=None, metavar="DIR",
                    help="also write each recovered student as a Hugging Face checkpoint "
                         "DIR/<method>-<sparsity>-seed<seed> (its cached weights; nothing is "
                         "trained again)")
    add_executor_flags(di)
    di.set_defaults(func=cmd_distill)


def _add_generate(sub) -> None:
    for name, func, text in (("generate", cmd_generate, "stream one completion of --prompt"),
                             ("chat", cmd_chat, "an interactive chat in the model's template")):
        ge = sub.add_parser(name, help=text)
        ge.add_argument("--model", default="smollm2-135m",
                        help="packed dir, Hugging Face dir, .gguf, compressed-tensors dir, or an "
                             "embedded name")
        if name == "generate":
            ge.add_argument("--prompt", required=True)
            ge.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                            help="wrap the prompt in the chat template (default: when there is one)")
        else:
            ge.add_argument("--system", default=None, help="a system message opening the chat")
        ge.add_argument("--max-new-tokens", type=int, default=64 if name == "generate" else 256)
        ge.add_argument("--runtime", default=None, choices=RUNTIME_NAMES,
                        help="int8 (pack: the default), fp32 (same loop, FP32 linears), hf "
                             "(transformers); a packed dir runs as packed")
        ge.add_argument("--sample", action="store_true", help="sample instead of greedy")
        ge.add_argument("--temperature", type=float, default=None, help="with --sample (1.0)")
        ge.add_argument("--top-k", type=int, default=None, help="with --sample: the k most likely")
        ge.add_argument("--seed", type=int, default=None, help="with --sample: of each reply")
        ge.add_argument("--threads", type=int, default=None,
                        help="threads (default: $WORKBENCH_NUM_THREADS, else torch's)")
        ge.set_defaults(func=func)


def _add_bench(sub) -> None:
    def of(name, show=shown):
        return defaults(DecodeBenchConfig, name, show)

    be = sub.add_parser("bench", help="speed: decode tokens/s of whole models, or the kernels")
    be.add_argument("what", choices=("decode", "kernels", "agreement"))
    be.add_argument("--model", default="smollm2-135m")
    be.add_argument("--systems", help="comma list, see workbench.bench ("
                    + of("systems", lambda v: "all" if v is None else shown(v)) + ")")
    be.add_argument("--threads", help=f"comma list ({of('threads')})")
    be.add_argument("--batches", help=f"comma list ({of('batches')})")
    be.add_argument("--prompt-len", type=int, help=f"prompt tokens ({of('prompt_len')})")
    be.add_argument("--new-tokens", type=int, help=f"decode steps ({of('new_tokens')})")
    be.add_argument("--repeats", type=int, help=f"timed runs after one warm-up ({of('repeats')})")
    be.add_argument("--shape-layers",
                    help="decoder layers at which FP32 / dense INT8 shape models are timed for "
                         f"the depth fit ({of('shape_layers')})")
    be.add_argument("--shape-models",
                    help=f"random-weight shape models, '' to skip ({of('shape_models')})")
    be.add_argument("--quick", action="store_true",
                    help=QUICK_HELP + "; kernels: benchmarks/kernels.py --quick")
    be.add_argument("--name", default=None)
    be.add_argument("--results", default="results")
    be.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_eval, _add_prune, _add_quant, _add_outliers, _add_distill, _add_generate,
                _add_bench):
        add(sub)
    return parser


def distill_config(argv: str | list[str] = ()):
    """The RecoveryConfig that `python -m workbench distill ARGV` runs (quick with --quick or
    WORKBENCH_QUICK=1), so a notebook given the same arguments reads that run's cache."""
    import shlex

    argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
    args = build_parser().parse_args(["distill", *argv])
    return recovery_config(args, quick_mode(args.quick))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
