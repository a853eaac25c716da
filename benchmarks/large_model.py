"""Models larger than memory: peak RSS and time of pruning random-weight shape checkpoints.

    python benchmarks/large_model.py --shape tinyllama-1.1b-shape   # load -> prune -> pack -> decode
    python benchmarks/large_model.py --shape llama2-7b-shape --stages streamed

RANDOM WEIGHTS (bench.save_shape_checkpoint: N(0, 0.02²), norms 1), saved once as a local bf16
Hugging Face checkpoint under --dir: the numbers are memory and time, never accuracy. Each
stage runs in its own process so its peak RSS (ru_maxrss) is its own:

    in-memory   load_model(path, dtype=torch.bfloat16) -> prune_ (blocks in FP32 one at a time)
                -> runtime.pack -> 32 greedy tokens on the native engine
    streamed    streaming.prune_checkpoint(path -> path-pruned): blocks read from disk one at a time
    decode      load_model(the streamed output, bf16) -> runtime.pack -> 32 greedy tokens

Calibration: --nsamples x --seqlen random token ids (16 x 512 by default). Rows go to
results/large_models/<shape>.{csv,md,json}; a stage already recorded for the same settings is
kept unless --force.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from workbench import cache

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("in-memory", "streamed", "decode")


def _calib(nsamples: int, seqlen: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(vocab, 256), (nsamples, seqlen), generator=g)   # [n, seqlen]


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20     # KiB -> GiB


def run_stage(stage: str, path: Path, method: str, sparsity: float, nsamples: int,
              seqlen: int) -> dict:
    """One stage in this process; returns its row."""
    from workbench import load_model, runtime, streaming
    from workbench.pruning import PruneConfig, prune_

    config = PruneConfig(method=method, sparsity=sparsity)
    pruned_dir = path.with_name(path.name + f"-{method}-{int(sparsity * 100)}")
    row = {"stage": stage, "method": method, "sparsity": sparsity,
           "calib": f"{nsamples} x {seqlen}", "weights": "random"}
    def pack_and_decode(model) -> None:
        t1 = time.perf_counter()
        packed = runtime.pack(model)
        row["pack_s"] = time.perf_counter() - t1
        prompt = _calib(1, 16, 256)
        packed.generate(prompt, max_new_tokens=4)                          # warm-up
        t2 = time.perf_counter()
        out = packed.generate(prompt, max_new_tokens=32)
        row["decode_tok_s"] = (out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t2)
        row["packed_mb"] = packed.nbytes / 2 ** 20

    t0 = time.perf_counter()
    if stage == "in-memory":                       # load -> prune -> pack -> decode
        model, _ = load_model(path, dtype=torch.bfloat16)
        row["load_s"] = time.perf_counter() - t0
        calib = _calib(nsamples, seqlen, model.config.vocab_size)
        report = prune_(model, calib, config)
        row.update(prune_s=report.seconds, reached=report.sparsity)
        pack_and_decode(model)
    elif stage == "streamed":                      # disk -> prune block by block -> disk
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(str(path)).vocab_size
        report = streaming.prune_checkpoint(path, _calib(nsamples, seqlen, vocab), config, pruned_dir)
        row.update(prune_s=report.seconds, reached=report.sparsity)
    elif stage == "decode":                        # the streamed output -> pack -> decode
        model, _ = load_model(pruned_dir, dtype=torch.bfloat16)
        row["load_s"] = time.perf_counter() - t0
        pack_and_decode(model)
    else:
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
    row["total_s"] = time.perf_counter() - t0
    row["peak_rss_gb"] = _peak_gb()
    return row


def main() -> int:
    from workbench.bench import SHAPES, save_shape_checkpoint
    from workbench.streaming import available_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tinyllama-1.1b-shape", choices=sorted(SHAPES))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--dir", default=str(ROOT / "build" / "large"))
    ap.add_argument("--out", default=str(ROOT / "results" / "large_models"))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--stage-only", help=argparse.SUPPRESS)        # the child process
    args = ap.parse_args()
    path = Path(args.dir) / f"{args.shape}-bf16"
    if args.stage_only:
        row = run_stage(args.stage_only, path, args.method, args.sparsity, args.nsamples, args.seqlen)
        print("ROW " + json.dumps(row), flush=True)
        return 0
    if not (path / "config.json").is_file():
        t0 = time.perf_counter()
        save_shape_checkpoint(args.shape, path)
        print(f"wrote {path} (random weights, bf16) in {time.perf_counter() - t0:.0f} s", flush=True)
    out = Path(args.out)
    record = out / f"{args.shape}.json"
    rows = json.loads(record.read_text())["rows"] if record.is_file() else []
    for stage in args.stages.split(","):
        key = dict(stage=stage, method=args.method, sparsity=args.sparsity,
                   calib=f"{args.nsamples} x {args.seqlen}")
        if not args.force and any(all(r.get(k) == v for k, v in key.items()) for r in rows):
            print(f"{stage}: recorded, skipped (--force reruns)")
            continue
        cmd = [sys.executable, __file__, "--stage-only", stage, *sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)    # progress on stderr
        found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if proc.returncode or not found:
            raise SystemExit(f"stage {stage} failed (exit {proc.returncode})")
        row = {"shape": args.shape, **json.loads(found[0]),
               "machine_gb": available_memory() / 2 ** 30}
        rows = [r for r in rows if not all(r.get(k) == v for k, v in key.items())] + [row]
        print(row, flush=True)
        _write(out, args.shape, rows)                 # after every stage: a kill keeps the rest
    return 0


def _write(out: Path, shape: str, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    cache.write_text_atomic(out / f"{shape}.csv", frame.to_csv(index=False))
    cache.write_text_atomic(out / f"{shape}.md", "Random-weight shape model (memory and time "
                            "only).\n\n" + frame.to_markdown(index=False, floatfmt=".3g") + "\n")
    cache.write_json_atomic(out / f"{shape}.json", {"shape": shape, "weights": "random",
                                                    "rows": rows, "provenance": cache.provenance()})


if __name__ == "__main__":
    raise SystemExit(main())
