"""What every `python -m workbench` command shares: quick mode, usage errors, the comma lists
of its flags, building a command's config from its flags, and writing its tables.

Light on purpose (no torch): the parser, the commands and benchmarks/kernels.py import it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

QUICK_ENV = "WORKBENCH_QUICK"


def quick_mode(flag: bool = False) -> bool:
    """--quick, or WORKBENCH_QUICK set to a true value."""
    return flag or os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class UsageError(ValueError):
    """Bad command-line input: reported on stderr with exit status 2."""


# ---------------------------------------------------------------- flags -> config

def names(text: str | None) -> tuple[str, ...] | None:
    """"a, b," -> ("a", "b"); None (the flag was not given) stays None."""
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def int_list(text: str | None, what: str, low: int = 1, empty: bool = False):
    """"1,2" -> (1, 2), UsageError naming the flag `what` otherwise; None stays None. empty:
    "" is the empty tuple (e.g. --shape-layers '' to skip the fit)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be a comma list of integers, got {text!r}") from None
    if (not values and not empty) or any(v < low for v in values):
        raise UsageError(f"{what} must be integers >= {low}, got {text!r}")
    return values


def float_list(text: str | None, what: str):
    """"0,0.5" -> (0.0, 0.5), UsageError naming the flag `what` otherwise; None stays None."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be a comma list of numbers, got {text!r}") from None


def with_flags(config, **given):
    """config with the fields given on the command line replaced (None: not given), so an
    explicit flag always wins over --quick; a value the config rejects is a UsageError."""
    try:
        return dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise UsageError(str(err)) from None


def shown(value) -> str:
    """A config value as its flag is written: tuples as comma lists, 0.5 not 0.50."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value) or "''"
    return f"{value:g}" if isinstance(value, float) else str(value)


def defaults(config, name: str, show=shown) -> str:
    """A flag's help suffix from the config class: "default X", or "default X; --quick Y"
    where quick() differs, so the help cannot drift from the data."""
    full, quick = getattr(config(), name), getattr(config.quick(), name)
    text = f"default {show(full)}"
    return text if quick == full else f"{text}; --quick {show(quick)}"


# ---------------------------------------------------------------- where the points run

def add_executor_flags(parser) -> None:
    """--executor local|ray, --address, --threads-per-point (workbench.executor)."""
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="run the points not in the cache here one after another (local, "
                             "default) or as Ray tasks (ray)")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: an existing Ray cluster (host:6379, auto, "
                             "ray://host:10001); default $RAY_ADDRESS, else a Ray started for "
                             "the run with this machine's cores")
    parser.add_argument("--threads-per-point", type=int, default=None, metavar="N",
                        help="torch threads (and Ray CPUs) per point (Ray default 1)")


def executor_from(args):
    """The ExecutorConfig the executor flags ask for; UsageError when Ray is asked for but
    missing, or --address is given without --executor ray."""
    import importlib.util

    from workbench.executor import RAY_INSTALL, ExecutorConfig

    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}")
    if args.address is not None and args.executor != "ray":
        raise UsageError("--address names a Ray cluster: use it with --executor ray")
    try:
        return ExecutorConfig(args.executor, address=args.address,
                              threads=args.threads_per_point)
    except ValueError as err:
        raise UsageError(str(err)) from None


# ---------------------------------------------------------------- written tables

def stem(args, quick: bool) -> str:
    """File stem of a written table: --name or the model, with -quick for quick runs (so a quick
    run never overwrites the full results)."""
    base = getattr(args, "name", None) or args.model.replace("/", "__")
    return base + ("-quick" if quick else "")


def write_frame(frame, out_dir: Path, stem: str, meta: dict) -> None:
    """frame as out_dir/stem.{csv,md,json}; the JSON holds meta, the rows and the provenance."""
    from workbench import cache

    cache.write_text_atomic(out_dir / f"{stem}.csv", frame.to_csv(index=False))
    cache.write_text_atomic(out_dir / f"{stem}.md", frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    cache.write_json_atomic(out_dir / f"{stem}.json", {**meta, "rows": frame.to_dict("records"),
                                                      "provenance": cache.provenance()})
    print(f"wrote {out_dir / stem}.{{csv,md,json}}")
