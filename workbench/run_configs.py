"""The sizes of the scripted runs, as data: one frozen, validated config per command, whose
defaults are the full run and whose `quick()` is the smoke run (`--quick`, WORKBENCH_QUICK=1).

The CLI starts from `Config()` or `Config.quick()` and replaces only what was given on the
command line; a notebook or a test that builds the same config reads the same cached points.
Nothing here imports torch, so the CLI's parser can show these defaults in its help.

    EvalConfig          eval: {task: settings}, from EVAL_TASKS
    PruneGridConfig     prune: the grid of PruneConfigs, its calibration and its scores
    W8A8Config          quant: smoothing x activations x sparsity, calibration, windows
    OutlierConfig       outliers: ranking metric, k, profiled and measured windows
    DecodeBenchConfig   bench decode: systems, threads, batches, prompt and decode lengths
    AgreementConfig     bench agreement: prompts and greedy tokens per comparison
    KernelBenchConfig   benchmarks/kernels.py: shapes, batches, sparsities, threads

The notebooks' pruning sweep is sweep.SweepConfig and the recovery experiment
recovery.RecoveryConfig (both need torch-side configs as fields).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import product

from workbench.configs import Serializable

# the named sizes of recovery.RecoveryConfig.sized, smallest first (the distill CLI's --size)
RECOVERY_SIZES = ("quick", "reproduce", "full", "experiments")

# task name -> (description, settings of the full run, settings of the quick run); the
# settings are the dicts sweep.evaluate_cached keys its records by
EVAL_TASKS = {
    "ppl": ("pydoc eval-split perplexity, seqlen 512",
            {"seqlen": 512, "max_windows": None}, {"seqlen": 512, "max_windows": 8}),
    "arith": ("one-step arith accuracy, 3-shot chat, greedy",
              {"kind": "one_step", "n": 200, "fewshot": 3}, {"kind": "one_step", "n": 32, "fewshot": 3}),
    "arith2": ("two-step arith accuracy, 3-shot chat, greedy",
               {"kind": "two_step", "n": 200, "fewshot": 3}, {"kind": "two_step", "n": 32, "fewshot": 3}),
    "gsm8k": ("GSM8K test accuracy, 3-shot chat, greedy",
              {"n": 200, "fewshot": 3}, {"n": 16, "fewshot": 3}),
}
# bench.SHAPE_MODELS and outliers.METRICS, named here so that this module does not import torch
SHAPE_MODEL_NAMES = ("llama2-7b-shape", "tinyllama-1.1b-shape")
OUTLIER_METRICS = ("range", "absmax", "p99", "n_outliers")


def task_settings(names, quick: bool = False) -> dict:
    """{task: settings} of EVAL_TASKS at the full or the quick size (fresh copies)."""
    names = tuple(names)
    unknown = [t for t in names if t not in EVAL_TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(EVAL_TASKS)}")
    return {t: dict(EVAL_TASKS[t][2 if quick else 1]) for t in names}


# ---------------------------------------------------------------- validation

def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _ints(name: str, values, low: int = 1, empty: bool = False) -> tuple[int, ...]:
    values = tuple(values)
    if not values and not empty:
        raise ValueError(f"{name} must not be empty")
    return tuple(_int(name, v, low) for v in values)


def _fractions(name: str, values) -> tuple[float, ...]:
    """Sparsities: a non-empty tuple of floats in [0, 1) (0.5, not 1/2, enters cache keys)."""
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1
                         for v in values):
        raise ValueError(f"{name} must be a non-empty list of numbers in [0, 1), got {values!r}")
    return tuple(float(v) for v in values)


def _names(name: str, values, choices=None, empty: bool = False) -> tuple[str, ...]:
    values = tuple(values)
    if (not values and not empty) or any(not isinstance(v, str) or not v for v in values):
        raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}list of names, "
                         f"got {values!r}")
    bad = [v for v in values if choices is not None and v not in choices]
    if bad:
        raise ValueError(f"unknown {name} {bad[0]!r}: choose from {', '.join(choices)}")
    return values


def _tasks(tasks) -> dict:
    if not isinstance(tasks, dict) or any(not isinstance(s, dict) for s in tasks.values()):
        raise ValueError(f"tasks must be {{task: settings dict}}, got {tasks!r}")
    task_settings(tasks)                                 # rejects unknown or no tasks
    return tasks


class _Sized(Serializable):
    """Serializable's to_dict / from_dict (unknown keys refused), and the field replacement
    the __post_init__s below use to turn a JSON round trip's lists back into tuples."""

    def _set(self, **values) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)


# ---------------------------------------------------------------- accuracy runs

@dataclass(frozen=True)
class EvalConfig(_Sized):
    """The eval command's scores, {task: settings}: full() / quick() take EVAL_TASKS'
    settings of the named tasks (ppl and arith by default)."""
    tasks: dict = field(default_factory=lambda: task_settings(("ppl", "arith")))

    def __post_init__(self):
        _tasks(self.tasks)

    @classmethod
    def full(cls, names=("ppl", "arith")) -> EvalConfig:
        return cls(task_settings(names))

    @classmethod
    def quick(cls, names=("ppl", "arith")) -> EvalConfig:
        """8 perplexity windows, 32 arith items, 16 GSM8K items."""
        return cls(task_settings(names, quick=True))


@dataclass(frozen=True)
class PruneGridConfig(_Sized):
    """The prune command's grid: every method x structure x layer sparsity x refinement, at
    each of `sparsities` where the structure is unstructured (N:M fixes its own), OWL's layer
    sparsities for unstructured only; calibrated on nsamples pydoc windows of seqlen tokens and
    scored on tasks ({task: settings}), after a dense row. The notebooks' sweep has its own
    grid and sizes (sweep.SweepConfig: 8 windows, quick() 4 perplexity windows, 8 arith items)."""
    methods: tuple[str, ...] = ("sparsegpt", "wanda", "magnitude")
    sparsities: tuple[float, ...] = (0.5,)
    structures: tuple[str, ...] = ("unstructured",)
    layer_sparsities: tuple[str, ...] = ("uniform",)
    refines: tuple[str, ...] = ("none",)
    nsamples: int = 128
    seqlen: int = 512
    tasks: dict = field(default_factory=lambda: task_settings(("ppl",)))

    def __post_init__(self):
        self._set(methods=_names("methods", self.methods),
                  sparsities=_fractions("sparsities", self.sparsities),
                  structures=_names("structures", self.structures),
                  layer_sparsities=_names("layer_sparsities", self.layer_sparsities),
                  refines=_names("refines", self.refines), tasks=_tasks(self.tasks))
        _int("nsamples", self.nsamples, 1)
        _int("seqlen", self.seqlen, 2)

    @classmethod
    def quick(cls) -> PruneGridConfig:
        """16 calibration windows, EVAL_TASKS' quick perplexity."""
        return cls(nsamples=16, tasks=task_settings(("ppl",), quick=True))

    def grid(self) -> list:
        """The PruneConfigs in the order of the table's rows; ValueError (from PruneConfig)
        names a method, structure or variant that does not exist."""
        from workbench.pruning import PruneConfig

        grid = []
        for method, structure in product(self.methods, self.structures):
            levels = self.sparsities if structure == "unstructured" else (None,)  # N:M fixes it
            for sparsity, layer_sparsity, refine in product(levels, self.layer_sparsities,
                                                            self.refines):
                if layer_sparsity == "owl" and structure != "unstructured":
                    continue                             # OWL sets unstructured sparsities only
                grid.append(PruneConfig(method=method, sparsity=sparsity, structure=structure,
                                        layer_sparsity=layer_sparsity, refine=refine))
        return grid


@dataclass(frozen=True)
class W8A8Config(_Sized):
    """The quant command's table: W8A8 perplexity (per-channel weights) for each smoothing x
    activation granularity x SparseGPT sparsity, over at most max_windows perplexity windows
    (None: the whole eval split); calibration: nsamples pydoc windows of seqlen tokens."""
    sparsities: tuple[float, ...] = (0.0, 0.5)
    smoothings: tuple[str, ...] = ("none", "smoothquant:0.5", "smoothquant:0.8", "lae")
    activations: tuple[str, ...] = ("per_token", "per_tensor")
    nsamples: int = 128
    seqlen: int = 512
    max_windows: int | None = 16

    def __post_init__(self):
        self._set(sparsities=_fractions("sparsities", self.sparsities),
                  smoothings=_names("smoothings", self.smoothings),
                  activations=_names("activations", self.activations))
        _int("nsamples", self.nsamples, 1)
        _int("seqlen", self.seqlen, 2)
        if self.max_windows is not None:
            _int("max_windows", self.max_windows, 1)

    @classmethod
    def quick(cls) -> W8A8Config:
        """16 calibration windows, 4 perplexity windows."""
        return cls(nsamples=16, max_windows=4)


@dataclass(frozen=True)
class OutlierConfig(_Sized):
    """The outliers command: the top k decoder Linears by `metric` of their inputs over
    nsamples pydoc windows of seqlen tokens; measured mode quantizes one layer at a time
    (activations: the QuantConfig granularity) on the first measure_samples windows."""
    metric: str = "range"
    k: int = 10
    nsamples: int = 32
    seqlen: int = 512
    measure_samples: int = 4
    activations: str = "per_tensor"

    def __post_init__(self):
        _names("metric", (self.metric,), OUTLIER_METRICS)
        _names("activations", (self.activations,))
        for name, low in (("k", 1), ("nsamples", 1), ("seqlen", 2), ("measure_samples", 1)):
            _int(name, getattr(self, name), low)

    @classmethod
    def quick(cls) -> OutlierConfig:
        """4 profiled windows, 2 of them measured."""
        return cls(nsamples=4, measure_samples=2)


# ---------------------------------------------------------------- speed runs

@dataclass(frozen=True)
class DecodeBenchConfig(_Sized):
    """bench decode (workbench.bench.run_decode): each system at each batch x thread count,
    prefill of prompt_len tokens then new_tokens decode steps, median of `repeats` timed runs;
    then the random-weight shape models, FP32 / dense INT8 fitted over shape_layers decoder
    layers. systems None: bench.EMBEDDED_SYSTEMS plus the llama.cpp peers that are installed."""
    systems: tuple[str, ...] | None = None
    threads: tuple[int, ...] = (1, 2)
    batches: tuple[int, ...] = (1, 8)
    prompt_len: int = 128
    new_tokens: int = 128
    repeats: int = 3
    shape_models: tuple[str, ...] = SHAPE_MODEL_NAMES
    shape_layers: tuple[int, ...] = (2, 4, 8)

    def __post_init__(self):
        if self.systems is not None:
            self._set(systems=_names("systems", self.systems))
        self._set(threads=_ints("threads", self.threads), batches=_ints("batches", self.batches),
                  shape_models=_names("shape model", self.shape_models, SHAPE_MODEL_NAMES,
                                      empty=True),
                  shape_layers=_ints("shape_layers", self.shape_layers, empty=True))
        for name in ("prompt_len", "new_tokens", "repeats"):
            _int(name, getattr(self, name), 1)

    @classmethod
    def quick(cls) -> DecodeBenchConfig:
        """Three of our systems at batch 1, 16 + 16 tokens, one timed run, no shape models."""
        return cls(systems=("ours-fp32", "ours-int8", "ours-sparse-0.7"), batches=(1,),
                   prompt_len=16, new_tokens=16, repeats=1, shape_models=())


@dataclass(frozen=True)
class AgreementConfig(_Sized):
    """bench agreement (workbench.bench.agreement_table): n_prompts GSM8K questions, n_tokens
    greedy tokens per runtime-vs-reference comparison, engine_tokens for native vs torch loop."""
    n_prompts: int = 20
    n_tokens: int = 32
    engine_tokens: int = 64

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _int(f.name, getattr(self, f.name), 1)

    @classmethod
    def quick(cls) -> AgreementConfig:
        return cls(n_prompts=4, n_tokens=8, engine_tokens=8)


@dataclass(frozen=True)
class KernelBenchConfig(_Sized):
    """benchmarks/kernels.py: each (out, in) weight shape at each sparsity, batch and thread
    count, median over at least `repeats` rounds of the rotating weight set."""
    shapes: tuple[tuple[int, int], ...] = ((1536, 576), (576, 1536), (4096, 4096),
                                           (11008, 4096), (4096, 11008))
    batches: tuple[int, ...] = (1, 16, 128)
    sparsities: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9)
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 5

    def __post_init__(self):
        shapes = tuple(tuple(s) for s in self.shapes)
        if not shapes or any(len(s) != 2 for s in shapes):
            raise ValueError(f"shapes must be a non-empty list of (out, in) pairs, got {shapes!r}")
        self._set(shapes=tuple(_ints("shapes", s) for s in shapes),
                  batches=_ints("batches", self.batches),
                  sparsities=_fractions("sparsities", self.sparsities),
                  threads=_ints("threads", self.threads))
        _int("repeats", self.repeats, 1)

    @classmethod
    def quick(cls) -> KernelBenchConfig:
        """4096x4096 at batch 1, 0 and 70% sparse, one thread."""
        return cls(shapes=((4096, 4096),), batches=(1,), sparsities=(0.0, 0.7), threads=(1,))
