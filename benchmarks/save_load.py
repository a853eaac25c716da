"""Saving and loading the packed model: seconds, bytes on disk, and whether the loaded model's
logits are bit-identical to the saved one's.

    python benchmarks/save_load.py [--sparsity 0.5] [--repeats 5]

The embedded model is pruned by magnitude (the load time does not depend on which pruner made
the zeros; magnitude takes seconds), packed, saved, then loaded `--repeats` times each way:
verify=True reads every byte once for the CRC32 check; verify=False only maps the file, so the
first decode step pays the page faults instead. Medians of one run, with `pack` (what a load
replaces) timed in the same run as the baseline. Writes results/formats/packed_save_load.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from workbench import cache, runtime
from workbench.models import load_model
from workbench.pruning import PruneConfig, prune_

ROOT = Path(__file__).resolve().parent.parent


def _median_s(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "formats")
    args = parser.parse_args()

    model, tok = load_model(args.model)
    prune_(model, None, PruneConfig(method="magnitude", sparsity=args.sparsity))
    ids = tok("def fibonacci(n):", return_tensors="pt").input_ids
    pack_s, pm = _median_s(lambda: runtime.pack(model), 1)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "packed"
        save_s, _ = _median_s(lambda: pm.save(target, tokenizer=tok), args.repeats)
        disk = sum(f.stat().st_size for f in target.iterdir())
        load_s, _ = _median_s(lambda: runtime.load_packed(target), args.repeats)
        map_s, back = _median_s(lambda: runtime.load_packed(target, verify=False), args.repeats)
        with torch.inference_mode():
            want = pm.generate(ids, max_new_tokens=16)
            got = back.generate(ids, max_new_tokens=16)
            same = torch.equal(pm.forward_logits(want), back.forward_logits(want))
    row = {"model": args.model, "sparsity": args.sparsity, "pack_s": pack_s, "save_s": save_s,
           "load_verify_s": load_s, "load_map_only_s": map_s, "disk_mb": disk / 1e6,
           "packed_mb": pm.nbytes / 1e6, "logits_bit_identical": same,
           "greedy_tokens_equal": torch.equal(want, got), "repeats": args.repeats}
    print(row)
    frame = pd.DataFrame([row])
    args.out.mkdir(parents=True, exist_ok=True)
    cache.write_text_atomic(args.out / "packed_save_load.md",
                            "Packed model saved and loaded (medians of one run).\n\n"
                            + frame.to_markdown(index=False, floatfmt=".3g") + "\n")
    cache.write_json_atomic(args.out / "packed_save_load.json",
                            {"rows": [row], "provenance": cache.provenance()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
