"""The layer shared by every step's config and report: field checks that name the field, the
JSON round trip, and the one layer-selection rule of prune_, quantize_, smooth_ and pack."""

import dataclasses
import json

import pytest

from workbench.cache import hash_json
from workbench.configs import Serializable, check_choice, check_number, later_field
from workbench.deploy import DeployConfig
from workbench.selection import check_patterns, matches, plan_names, select

NAME = "model.layers.3.mlp.down_proj"


@dataclasses.dataclass(frozen=True)
class _Toy(Serializable):
    alpha: float = 0.5
    names: tuple[str, ...] = later_field(())

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))


def test_to_dict_leaves_later_fields_out_at_their_default_only():
    assert _Toy().to_dict() == {"alpha": 0.5}
    assert _Toy(names=("a",)).to_dict() == {"alpha": 0.5, "names": ["a"]}     # JSON's form


@pytest.mark.parametrize("toy", [_Toy(), _Toy(alpha=0.25, names=("a", "b"))])
def test_from_dict_inverts_a_json_round_trip(toy):
    back = _Toy.from_dict(json.loads(json.dumps(toy.to_dict())))
    assert back == toy and type(back) is _Toy


def test_from_dict_names_unknown_keys_and_wants_a_dict():
    with pytest.raises(ValueError, match="unknown _Toy keys: beta, gamma"):
        _Toy.from_dict({"alpha": 0.1, "gamma": 1, "beta": 2})
    with pytest.raises(TypeError, match="needs a dict"):
        _Toy.from_dict([("alpha", 0.1)])


@pytest.mark.parametrize("value,kw,ok", [
    (1, dict(low=1, strict=False), True), (1, dict(low=1, strict=True), False),
    (0.5, dict(low=0, strict=False, integer=True), False), (True, dict(low=0, strict=False), False),
    (float("nan"), dict(low=0, strict=False), False), ("3", dict(low=0, strict=False), False)])
def test_check_number(value, kw, ok):
    if ok:
        check_number("lr", value, **kw)
    else:
        with pytest.raises(ValueError, match="^lr must be"):
            check_number("lr", value, **kw)


def test_check_choice_lists_the_choices():
    with pytest.raises(ValueError, match="mode must be one of 'a', 'b', got 'c'"):
        check_choice("mode", "c", ("a", "b"))


# ---------------------------------------------------------------- layer selection

@pytest.mark.parametrize("pattern,hit", [
    (NAME, True), ("down_proj", True), ("mlp.down_proj", True), ("proj", False),
    ("own_proj", False), ("model.layers.3.*", True), ("model.layers.1*", False),
    ("*.mlp.*", True), ("*.self_attn.*", False), ("model.layers.[0-3].mlp.down_proj", True)])
def test_a_pattern_is_a_name_a_dotted_suffix_or_an_fnmatch(pattern, hit):
    assert matches(NAME, (pattern,)) is hit


def test_select_keeps_order_targets_then_ignore():
    names = [f"model.layers.{i}.{m}" for i in range(3) for m in ("self_attn.q_proj", "mlp.down_proj")]
    assert select(names, (), ()) == names
    assert select(names, ("model.layers.1.*",), ()) == names[2:4]
    assert select(names, (), ("down_proj",)) == names[0::2]
    assert select(names, ("model.layers.1.*",), ("down_proj",)) == [names[2]]


@pytest.mark.parametrize("bad,match", [("q_proj", r"one str: write targets=\('q_proj',\)"),
                                       (3, "tuple of name patterns"), (("q", ""), "non-empty"),
                                       (("q", 1), "non-empty str")])
def test_patterns_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        check_patterns("targets", bad)
    assert check_patterns("targets", ["a", "b"]) == ("a", "b")


def test_plan_names_reads_every_plan_form():
    from workbench.outliers import QuantPlan
    from workbench.quant import plan_names as from_quant

    assert from_quant is plan_names                         # the old import still works
    assert plan_names(None) == ()
    assert plan_names(QuantPlan(keep_fp32=(NAME,))) == plan_names([NAME]) == (NAME,)
    with pytest.raises(TypeError, match="one str"):
        plan_names(NAME)


# ---------------------------------------------------------------- DeployConfig

def test_deploy_config_round_trips_and_keeps_its_hash():
    # computed before DeployConfig took Serializable's to_dict: cached points keep their keys
    assert hash_json(DeployConfig().to_dict()) == \
        "5ae5518e8bc4a37c92a2fc7d9105ae82a0bb792230333c20b65f5d516297a4a1"
    cfg = DeployConfig(smoothings=("none", "lae"), smoothing="lae", speed_repeats=1)
    assert DeployConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown DeployConfig keys: speed"):
        DeployConfig.from_dict({"speed": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.smoothing = "none"
