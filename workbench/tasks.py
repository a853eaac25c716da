"""Word-problem tasks scored by exact match: GSM8K and a generated GSM8K-style arithmetic task.

GSM8K (Cobbe et al. 2021, arXiv 2110.14168) and a generated arithmetic task whose train, dev and
test splits share no arithmetic problem (dev: early stopping). Both are scored by exact match of
the number after "The answer is", the few-shot chain-of-thought format of Wei et al. 2022
(arXiv 2201.11903). Every task carries a few-shot pool of worked examples from its train side.
Deterministic by seed; offline by default.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from pathlib import Path

from workbench.hub import hub_reachable

REPO_ROOT = Path(__file__).resolve().parent.parent
GSM8K_DIR = REPO_ROOT.parent / "shared" / "data" / "gsm8k"    # read in place, never copied
FEWSHOT = 8                 # worked examples in every task's few-shot pool


# ---------------------------------------------------------------- task format

_ANSWER = re.compile(r"answer is\W{0,8}?(-?)\$?(-?)(\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def _to_number(text: str) -> int | float:
    text = text.replace(",", "").replace("$", "").strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    value = float(text)
    return int(value) if value.is_integer() else value


def format_number(x: int | float) -> str:
    """24 -> "24", 24.0 -> "24", 0.5 -> "0.5": how answers are written in solutions."""
    return str(int(x)) if float(x).is_integer() else str(x)


def answer_from_text(text: str) -> int | float | None:
    """The number after the last "answer is" that has one ("The answer is $1,200." -> 1200,
    "the answer is **-3**" -> -3), or None."""
    matches = list(_ANSWER.finditer(text))
    if not matches:
        return None
    sign_a, sign_b, digits = matches[-1].groups()
    value = _to_number(digits)
    return -value if (sign_a or sign_b) else value


@dataclass(frozen=True)
class TaskItem:
    question: str
    answer: int | float
    solution: str       # worked reasoning ending with "The answer is N."
    kind: str           # "add", "subtract", "multiply", "divide", "two_step" or "gsm8k"


@dataclass(frozen=True)
class Task(Sequence):
    """Items to score plus a few-shot pool of worked examples, always from the train split."""
    name: str
    items: tuple[TaskItem, ...]
    fewshot: tuple[TaskItem, ...]
    system_prompt: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self) -> Iterator[TaskItem]:
        return iter(self.items)

    @cached_property
    def fingerprint(self) -> str:
        content = [self.name, [asdict(i) for i in self.items], [asdict(i) for i in self.fewshot]]
        if self.system_prompt is not None:  # a prompt changes scores, so it changes the identity
            content.append(self.system_prompt)
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()

    def to_records(self) -> list[dict]:
        return [{"task": self.name, "index": i, **asdict(item)} for i, item in enumerate(self.items)]


def _check_split_n(split: str, n: int | None, splits: tuple[str, ...] = ("train", "test")) -> None:
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(map(repr, splits))}, got {split!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


# ---------------------------------------------------------------- GSM8K

def _gsm8k_rows(split: str) -> list[dict]:
    """Rows from $WORKBENCH_GSM8K_DIR when set, else the hub when reachable, else the shared copy."""
    override = os.environ.get("WORKBENCH_GSM8K_DIR")
    if not override and hub_reachable():
        import datasets

        ds = datasets.load_dataset("openai/gsm8k", "main", split=split)
        return [{"question": q, "answer": a} for q, a in zip(ds["question"], ds["answer"], strict=True)]
    path = Path(override or GSM8K_DIR) / f"{split}.jsonl"
    if not path.is_file():
        reason = "WORKBENCH_GSM8K_DIR is set" if override else "the hub is not reachable"
        raise FileNotFoundError(
            f"GSM8K {split!r}: {path} does not exist, and openai/gsm8k was not read from the hub "
            f"({reason}); point WORKBENCH_GSM8K_DIR at a folder holding train.jsonl and test.jsonl"
        )
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k_item(row: dict) -> TaskItem:
    reasoning, _, final = row["answer"].rpartition("####")
    answer = _to_number(final)
    steps = re.sub(r"<<[^>]*>>", "", reasoning).strip()  # calculator annotations: not prose
    return TaskItem(row["question"], answer, f"{steps}\nThe answer is {format_number(answer)}.",
                    "gsm8k")


def gsm8k(split: str = "test", n: int | None = None, seed: int = 0) -> Task:
    """GSM8K from $WORKBENCH_GSM8K_DIR if set, else the hub if reachable, else ../shared/data/gsm8k.
    n: the first n items after a shuffle by seed (None: all, in file order). The few-shot pool is
    the first 8 train items; split="train" leaves them out of the items."""
    _check_split_n(split, n)
    train = [_gsm8k_item(row) for row in _gsm8k_rows("train")]
    pool = train[FEWSHOT:] if split == "train" else [_gsm8k_item(r) for r in _gsm8k_rows("test")]
    if n is not None:
        if n > len(pool):
            raise ValueError(f"GSM8K {split!r} holds {len(pool)} items, not {n}")
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        pool = [pool[i] for i in order[:n]]
    return Task(f"gsm8k-{split}", tuple(pool), tuple(train[:FEWSHOT]))


# ---------------------------------------------------------------- generated arithmetic

NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi",
         "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
         "Wes", "Yuki")
OBJECTS = ("apples", "marbles", "stickers", "pencils", "books", "cookies", "stamps", "shells",
           "cards", "coins", "balloons", "crayons", "buttons", "beads", "oranges", "eggs",
           "flowers", "rocks", "feathers", "blocks", "muffins", "toy cars")
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"),
              ("crate", "crates"), ("pack", "packs"), ("tray", "trays"), ("bin", "bins"),
              ("carton", "cartons"))
_APPLY = {"+": operator.add, "-": operator.sub, "x": operator.mul, "/": operator.floordiv}
# Small integers, as in the probe that found the embedded model able to do the task at all:
# addends up to 20, factors and quotients up to 12 (times tables), divisors up to 10.
_R, _S, _D = range(2, 21), range(2, 13), range(2, 11)


@dataclass(frozen=True)
class _Op:
    """An operation chain: symbols applied left to right, e.g. ("x", "-") is (a x b) - c."""
    symbols: tuple[str, ...]
    operands: Callable[[], Iterable[tuple[int, ...]]]    # candidate problems, filtered by _chain
    templates: tuple[str, ...]


_OPS: dict[str, _Op] = {
    "add": _Op(("+",), lambda: itertools.product(_R, _R), (
        "{name} has {a} {obj}. {name} buys {b} more. How many {obj} does {name} have now?",
        "{name} had {a} {obj} and found {b} more. How many {obj} does {name} have in total?",
        "There are {a} {obj} in a {cont}. {name} puts {b} more {obj} in it. How many {obj} are in the {cont} now?")),
    "subtract": _Op(("-",), lambda: itertools.product(_R, _R), (
        "{name} has {a} {obj}. {name} gives away {b} of them. How many {obj} does {name} have left?",
        "{name} had {a} {obj} but lost {b}. How many {obj} does {name} have now?")),
    "multiply": _Op(("x",), lambda: itertools.product(_S, _S), (
        "{name} has {a} {conts}, and each {cont} has {b} {obj}. How many {obj} does {name} have?",
        "{name} buys {a} {conts} of {obj}. Each {cont} holds {b} {obj}. How many {obj} did {name} buy?")),
    "divide": _Op(("/",), lambda: ((b * q, b) for b in _D for q in _S), (
        "{name} shares {a} {obj} equally among {b} friends. How many {obj} does each friend get?",
        "{name} puts {a} {obj} into {b} {conts}, the same number in each. How many {obj} are in each {cont}?")),
    "multiply_subtract": _Op(("x", "-"), lambda: itertools.product(_S, _S, _R), (
        "{name} has {a} {conts} with {b} {obj} in each. {name} gives away {c} {obj}. How many {obj} does {name} have left?",
        "{name} packs {a} {conts} of {obj}, {b} in each {cont}, and then sells {c} of the {obj}. How many {obj} are left?")),
    "multiply_add": _Op(("x", "+"), lambda: itertools.product(_S, _S, _R), (
        "{name} has {a} {conts} with {b} {obj} in each and finds {c} more {obj}. How many {obj} does {name} have in total?",
        "{name} buys {a} {conts} of {obj} with {b} in each {cont}, then gets {c} more {obj} as a gift. How many {obj} does {name} have now?")),
    "add_divide": _Op(("+", "/"), lambda: itertools.product(_R, _R, _D), (
        "{name} has {a} {obj} and buys {b} more. Then {name} shares all the {obj} equally among {c} friends. How many {obj} does each friend get?",
        "{name} picks {a} {obj} in the morning and {b} in the afternoon, then packs them equally into {c} {conts}. How many {obj} are in each {cont}?")),
    "subtract_multiply": _Op(("-", "x"), lambda: itertools.product(_R, _R, _S), (
        "{name} had {a} {conts} and gave {b} of them away. Each {cont} holds {c} {obj}. How many {obj} does {name} have now?",
        "{name}'s shop has {a} {conts} of {obj} and sells {b} of the {conts}. Each {cont} has {c} {obj}. How many {obj} are left in the shop?")),
}
_KINDS = {"one_step": ("add", "subtract", "multiply", "divide"),
          "two_step": ("multiply_subtract", "multiply_add", "add_divide", "subtract_multiply")}


def _chain(symbols: tuple[str, ...], operands: tuple[int, ...]) -> list[tuple[int, str, int, int]] | None:
    """Steps (x, symbol, y, result), or None unless every division is exact and every result >= 1."""
    steps, value = [], operands[0]
    for sym, y in zip(symbols, operands[1:], strict=True):
        if sym == "/" and value % y:
            return None
        result = _APPLY[sym](value, y)
        if result < 1:
            return None
        steps.append((value, sym, y, result))
        value = result
    return steps


def _split_of(op: str, operands: tuple[int, ...]) -> str:
    """A problem's split hangs on its arithmetic alone, never its wording: no leak between
    splits. A fifth of the problems is test, a fifth dev, the rest train."""
    digest = hashlib.sha256(":".join([op, *map(str, operands)]).encode()).hexdigest()
    return {0: "test", 1: "dev"}.get(int(digest, 16) % 5, "train")


# The few-shot pool draws from every non-test problem: it predates the dev split, and drawing
# it from train and dev keeps every scored prompt (and cached score) what it was. Dev items
# never use a few-shot example's problem.
_POOLS = {"train": ("train",), "dev": ("dev",), "test": ("test",), "fewshot": ("train", "dev")}


@cache
def _problems(op: str, split: str) -> tuple[tuple[int, ...], ...]:
    spec = _OPS[op]
    return tuple(p for p in spec.operands()
                 if _chain(spec.symbols, p) is not None and _split_of(op, p) in _POOLS[split])


def _wordings(op: str) -> int:
    """Distinct texts one problem can take: templates x names x objects (x containers)."""
    per = len(NAMES) * len(OBJECTS)
    return sum(per * (len(CONTAINERS) if "{cont" in t else 1) for t in _OPS[op].templates)


def _make_item(op: str, operands: tuple[int, ...], kind: str, rng: random.Random) -> TaskItem:
    spec = _OPS[op]
    # Always draw every choice, used or not, so the random stream does not depend on wording.
    template, name, obj = rng.choice(spec.templates), rng.choice(NAMES), rng.choice(OBJECTS)
    cont, conts = rng.choice(CONTAINERS)
    numbers = dict(zip("abc", operands, strict=False))
    question = template.format(name=name, obj=obj, cont=cont, conts=conts, **numbers)
    steps = _chain(spec.symbols, operands)
    answer = steps[-1][3]
    work = " ".join(f"{x} {sym} {y} = {r}." for x, sym, y, r in steps)
    return TaskItem(question, answer, f"{work} The answer is {answer}.",
                    op if kind == "one_step" else kind)


def _draw(kind: str, split: str, n: int, rng: random.Random, exclude: frozenset[str] = frozenset(),
          avoid: frozenset = frozenset()) -> list[tuple[str, tuple[int, ...], TaskItem]]:
    """n distinct (op, operands, item) of a split, none with a question in exclude or an
    (op, operands) problem in avoid."""
    ops = _KINDS[kind]
    pools = {op: tuple(p for p in _problems(op, split) if (op, p) not in avoid) for op in ops}
    most = len(ops) * (min(len(pools[op]) * _wordings(op) for op in ops) - len(exclude))
    if n > most:
        raise ValueError(f"arith {kind!r} {split!r} can supply at most {most} distinct questions, not {n}")
    out: list[tuple[str, tuple[int, ...], TaskItem]] = []
    seen = set(exclude)
    while len(out) < n:
        op = ops[len(out) % len(ops)]       # round robin: operations stay balanced
        operands = rng.choice(pools[op])
        item = _make_item(op, operands, kind, rng)
        if item.question not in seen:
            seen.add(item.question)
            out.append((op, operands, item))
    return out


def arith_task(kind: str = "one_step", split: str = "test", n: int = 200, seed: int = 0) -> Task:
    """A generated GSM8K-style word-problem task. kind "one_step" (add, subtract, multiply,
    divide) or "two_step" (chains of two). split "train", "dev" or "test": a problem's split is
    fixed by a hash of its arithmetic, so no two splits share one, whatever n and seed."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    _check_split_n(split, n, ("train", "dev", "test"))
    # String seeds hash with SHA-512 inside random: stable across runs and PYTHONHASHSEED.
    shots = _draw(kind, "fewshot", FEWSHOT, random.Random(f"arith:{kind}:fewshot:1234"))
    fewshot = tuple(item for _, _, item in shots)
    exclude = frozenset(f.question for f in fewshot) if split == "train" else frozenset()
    avoid = frozenset((op, p) for op, p, _ in shots) if split == "dev" else frozenset()
    drawn = _draw(kind, split, n, random.Random(f"arith:{kind}:{split}:{seed}"), exclude, avoid)
    return Task(f"arith-{kind}-{split}", tuple(item for _, _, item in drawn), fewshot)
