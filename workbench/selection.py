"""Which decoder Linears a step touches: one rule for prune_, quantize_, smooth_ and pack.

A step's config holds two tuples of name patterns: `targets` (the Linears to touch; empty means
all of them) and `ignore` (never touched). A pattern matches a full module name such as
"model.layers.3.mlp.down_proj" when it is that name, a dotted suffix of it ("down_proj",
"mlp.down_proj") or an fnmatch pattern of it ("model.layers.3.*", "*.self_attn.*"):

    prune_(model, calib, PruneConfig(targets=("model.layers.0.*",), ignore=("down_proj",)))
    quantize_(model, calib, QuantConfig(ignore=("down_proj",)))
    smooth_(model, profile, SmoothConfig(targets=("model.layers.0.*",)))

A plan (quantize_ and pack: a workbench.outliers.QuantPlan or a list of full names) keeps the
layers it names in FP32 on top of that; `plan_names` reads either form.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether any pattern names the module: exactly, as a dotted suffix, or by fnmatch."""
    return any(fnmatch.fnmatchcase(name, p) or name.endswith("." + p) or name == p
               for p in patterns)


def is_selected(name: str, targets: tuple[str, ...], ignore: tuple[str, ...]) -> bool:
    """Whether a step with these targets and ignore patterns touches the module."""
    return (not targets or matches(name, targets)) and not matches(name, ignore)


def select(names: Iterable[str], targets: tuple[str, ...], ignore: tuple[str, ...]) -> list[str]:
    """The names a step touches, in their given order."""
    return [n for n in names if is_selected(n, targets, ignore)]


def check_patterns(field: str, patterns) -> tuple[str, ...]:
    """patterns as a tuple of non-empty str (a JSON list comes back as a tuple); ValueError
    naming the field for one bare str (a tuple of its characters is never what was meant) or
    anything else."""
    if isinstance(patterns, str):
        raise ValueError(f"{field} must be a tuple of name patterns, not one str: "
                         f"write {field}=({patterns!r},)")
    if not isinstance(patterns, Iterable):
        raise ValueError(f"{field} must be a tuple of name patterns, got {type(patterns).__name__}")
    patterns = tuple(patterns)
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"{field} patterns must be non-empty str, got {bad[0]!r}")
    return patterns


def plan_names(plan) -> tuple[str, ...]:
    """The layer names a plan keeps in FP32: None, a QuantPlan, or an iterable of names."""
    if plan is None:
        return ()
    if hasattr(plan, "keep_fp32"):                 # a workbench.outliers.QuantPlan
        return tuple(plan.keep_fp32)
    if isinstance(plan, str):
        raise TypeError("plan must be an iterable of layer names, not one str: "
                        f"write [{plan!r}]")
    if isinstance(plan, Iterable):
        return tuple(plan)
    raise TypeError(f"plan must be None, a QuantPlan or an iterable of layer names, "
                    f"got {type(plan).__name__}")


__all__ = ["check_patterns", "is_selected", "matches", "plan_names", "select"]
