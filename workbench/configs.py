"""What every step's config and report share: field checks whose errors name the field, and
one JSON round trip.

    @dataclass(frozen=True)
    class XConfig(Serializable):
        alpha: float = 0.5
        targets: tuple[str, ...] = later_field(())     # added after points were cached

    XConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config

`to_dict` is `dataclasses.asdict` in JSON's form (tuples as lists, as hash_json sees them
anyway), less the fields declared with `later_field` while they hold their default: a field
added to a config whose to_dict enters cache keys leaves every earlier key as it was. `from_dict` refuses keys the class does not know, naming them; a config's
`__post_init__` turns the lists of a JSON round trip back into tuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

LATER = "later"     # field metadata: left out of to_dict at its default


def check_number(name: str, value, low: float, *, strict: bool, integer: bool = False) -> None:
    """Raise ValueError naming the field unless value is a number >= low (> low if strict)."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and (
        value > low if strict else value >= low)        # also False for NaN
    if not ok:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} "
                         f"{'>' if strict else '>='} {low}, got {value!r}")


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise ValueError naming the field and the valid values unless value is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def later_field(default):
    """A dataclass field that to_dict leaves out while it holds default (an immutable value)."""
    return dataclasses.field(default=default, metadata={LATER: True})


def _lists(obj):
    """obj with every tuple, at any depth of dicts and lists, turned into a list (JSON's form,
    so that a record read back from JSON equals the one written)."""
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    return obj


class Serializable:
    """to_dict / from_dict for a dataclass whose fields are JSON values."""

    def to_dict(self) -> dict:
        """The fields in JSON's form (tuples as lists), later fields at their default left out."""
        d = _lists(dataclasses.asdict(self))
        for f in dataclasses.fields(self):
            if f.metadata.get(LATER) and d[f.name] == _lists(f.default):
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping):
        """The instance whose to_dict is d; fields missing from d take their defaults."""
        if not isinstance(d, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict needs a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}; "
                             f"valid keys are {', '.join(sorted(known))}")
        return cls(**d)


__all__ = ["LATER", "Serializable", "check_choice", "check_number", "later_field"]
