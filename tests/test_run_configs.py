"""The scripted runs' sizes as data (workbench.run_configs): full defaults and quick() pinned to
the numbers the CLI ran before they were data, JSON round trips, clear errors, and the task
settings that key cached scores unchanged."""

import json

import pytest

from workbench import run_configs as rc
from workbench.cache import hash_json

CONFIGS = [rc.EvalConfig, rc.PruneGridConfig, rc.W8A8Config, rc.OutlierConfig,
           rc.DecodeBenchConfig, rc.AgreementConfig, rc.KernelBenchConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("size", ["full", "quick"])
def test_json_round_trip(cls, size):
    config = cls() if size == "full" else cls.quick()
    again = cls.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="unknown .* keys: nsample"):
        cls.from_dict({**config.to_dict(), "nsample": 3})


def test_full_and_quick_sizes_are_the_cli_numbers():
    """The constants the CLI branches held before (`16 if quick else args.nsamples` ...)."""
    assert (rc.PruneGridConfig().nsamples, rc.PruneGridConfig.quick().nsamples) == (128, 16)
    assert rc.PruneGridConfig.quick().tasks == {"ppl": {"seqlen": 512, "max_windows": 8}}
    assert rc.PruneGridConfig().tasks == {"ppl": {"seqlen": 512, "max_windows": None}}
    w8a8, quick = rc.W8A8Config(), rc.W8A8Config.quick()
    assert (w8a8.nsamples, w8a8.max_windows, quick.nsamples, quick.max_windows) == (128, 16, 16, 4)
    assert quick.sparsities == w8a8.sparsities == (0.0, 0.5)
    outliers, quick = rc.OutlierConfig(), rc.OutlierConfig.quick()
    assert (outliers.nsamples, outliers.measure_samples) == (32, 4)
    assert (quick.nsamples, quick.measure_samples, quick.k) == (4, 2, 10)
    assert rc.AgreementConfig().to_dict() == {"n_prompts": 20, "n_tokens": 32, "engine_tokens": 64}
    assert rc.AgreementConfig.quick().to_dict() == {"n_prompts": 4, "n_tokens": 8, "engine_tokens": 8}
    decode = rc.DecodeBenchConfig.quick()
    assert decode.systems == ("ours-fp32", "ours-int8", "ours-sparse-0.7")
    assert (decode.batches, decode.prompt_len, decode.new_tokens, decode.repeats,
            decode.shape_models) == ((1,), 16, 16, 1, ())
    assert decode.threads == rc.DecodeBenchConfig().threads == (1, 2)
    assert rc.DecodeBenchConfig().systems is None               # all, peers when installed
    kernels = rc.KernelBenchConfig.quick()
    assert (kernels.shapes, kernels.batches, kernels.sparsities, kernels.threads) == (
        ((4096, 4096),), (1,), (0.0, 0.7), (1,))
    assert rc.KernelBenchConfig().repeats == kernels.repeats == 5


def test_task_settings_keep_their_cache_keys():
    """The settings dicts enter evaluate_cached's keys: hashes taken before they moved here."""
    golden = {"ppl": ("89d02e0e44db0ad7", "7cb38e4383610609"),
              "arith": ("b37adeeab2530336", "2242ddc20ca9fd63"),
              "arith2": ("cc0c7ce38fc9c826", "93fa2f15ce040784"),
              "gsm8k": ("fff92e93b22669c8", "5fd1aa1f7a7aa561")}
    for quick in (False, True):
        for task, settings in rc.task_settings(list(golden), quick).items():
            key = hash_json({"step": "eval", "task": task, "settings": settings})
            assert key[:16] == golden[task][quick], (task, quick)
    assert rc.EvalConfig().tasks == rc.task_settings(["ppl", "arith"])
    assert rc.EvalConfig.quick(["gsm8k"]).tasks == {"gsm8k": {"n": 16, "fewshot": 3}}


def test_task_settings_are_copies():
    rc.EvalConfig.quick().tasks["ppl"]["max_windows"] = 1
    assert rc.EVAL_TASKS["ppl"][2]["max_windows"] == 8


@pytest.mark.parametrize("make,match", [
    (lambda: rc.PruneGridConfig(nsamples=0), "nsamples must be an integer >= 1"),
    (lambda: rc.PruneGridConfig(sparsities=(0.5, 1.0)), "sparsities"),
    (lambda: rc.PruneGridConfig(methods=()), "methods must not|methods must be a non-empty"),
    (lambda: rc.PruneGridConfig(tasks={"nonsense": {}}), "nonsense"),
    (lambda: rc.EvalConfig.full(["ppl", "mmlu"]), "mmlu"),
    (lambda: rc.W8A8Config(max_windows=0), "max_windows"),
    (lambda: rc.W8A8Config(seqlen=1), "seqlen"),
    (lambda: rc.OutlierConfig(metric="mean"), "unknown metric 'mean'"),
    (lambda: rc.OutlierConfig(k=True), "k must be an integer"),
    (lambda: rc.DecodeBenchConfig(shape_models=("gpt-9-shape",)), "unknown shape model 'gpt-9-shape'"),
    (lambda: rc.DecodeBenchConfig(threads=()), "threads must not be empty"),
    (lambda: rc.DecodeBenchConfig(batches=(1, 0)), "batches"),
    (lambda: rc.AgreementConfig(n_tokens=0), "n_tokens"),
    (lambda: rc.KernelBenchConfig(shapes=((4096,),)), "shapes"),
    (lambda: rc.KernelBenchConfig(sparsities=(-0.1,)), "sparsities"),
])
def test_bad_values_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_prune_grid_order_and_owl_only_unstructured():
    config = rc.PruneGridConfig(methods=("ria", "magnitude"), sparsities=(0.6,),
                                structures=("unstructured", "2:4"),
                                layer_sparsities=("uniform", "owl"), refines=("none", "dsnot"))
    got = [(c.method, c.structure, c.sparsity, c.layer_sparsity, c.refine) for c in config.grid()]
    per_method = [("unstructured", 0.6, "uniform", "none"), ("unstructured", 0.6, "uniform", "dsnot"),
                  ("unstructured", 0.6, "owl", "none"), ("unstructured", 0.6, "owl", "dsnot"),
                  ("2:4", 0.5, "uniform", "none"), ("2:4", 0.5, "uniform", "dsnot")]   # N:M: 2 of 4
    assert got == [(m, *row) for m in ("ria", "magnitude") for row in per_method]
    with pytest.raises(ValueError, match="method"):
        rc.PruneGridConfig(methods=("obs",)).grid()


def test_names_that_mirror_torch_modules_match_them():
    from workbench import bench, outliers

    assert rc.OUTLIER_METRICS == tuple(outliers.METRICS)
    assert rc.SHAPE_MODEL_NAMES == bench.SHAPE_MODELS == tuple(bench.SHAPES)
    assert bench.DecodeBenchConfig is rc.DecodeBenchConfig


def test_sweep_config_round_trip():
    from workbench.sweep import SweepConfig

    for config in (SweepConfig(), SweepConfig.quick()):
        again = SweepConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config and again.grid() == config.grid()
        assert again.beyond_grid() == config.beyond_grid()
    with pytest.raises(ValueError, match="unknown SweepConfig keys: level"):
        SweepConfig.from_dict({"level": {}})
