import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M (FP32 from its GGUF; cached after the first load)."""
    from workbench import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny():
    from workbench.models import tiny_llama

    return tiny_llama(seed=0)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, the same kernels in every run: bitwise comparisons
    between two runs hold. Files take it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pruned_pair():
    """(dense tiny teacher, its 50% magnitude-pruned copy as the student, tokenizer); tests
    that change them copy them first."""
    import copy

    from workbench.models import tiny_llama
    from workbench.pruning import PruneConfig, prune_

    teacher, tok = tiny_llama(seed=0)
    student = copy.deepcopy(teacher)
    prune_(student, None, PruneConfig(method="magnitude", sparsity=0.5))
    return teacher, student, tok


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A tiny random Llama (seed 0) and its tokenizer saved as a Hugging Face checkpoint
    directory under tmp_path: what load_model and the CLI take as --model."""
    from workbench.models import tiny_llama

    model, tok = tiny_llama(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture
def check_llama_gguf_metadata():
    """A check that a GGUF file's metadata {key: value} states config's hyperparameters (the
    GGUF exporter's tests in test_peers and test_formats_gguf share it)."""
    def check(value: dict, cfg) -> None:
        assert value["general.architecture"] == "llama"
        assert value["llama.block_count"] == cfg.num_hidden_layers
        assert value["llama.embedding_length"] == cfg.hidden_size
        assert value["llama.feed_forward_length"] == cfg.intermediate_size
        assert value["llama.attention.head_count"] == cfg.num_attention_heads
        assert value["llama.attention.head_count_kv"] == cfg.num_key_value_heads
        assert value["llama.context_length"] == cfg.max_position_embeddings
        assert value["llama.rope.dimension_count"] == cfg.head_dim
        assert value["llama.rope.freq_base"] == pytest.approx(cfg.rope_parameters["rope_theta"])
        assert value["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
        assert value["llama.vocab_size"] == cfg.vocab_size
    return check


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line at the very end naming every skipped test and why, so a green run cannot
    hide what did not run (llama.cpp peer, browser, an ISA this CPU lacks)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        terminalreporter.write_line("SKIPPED: none")
        return
    reasons = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid.split("::")[-1])
    parts = [f"{len(names)} x {reason} ({', '.join(names)})" for reason, names in reasons.items()]
    terminalreporter.write_line(f"SKIPPED {len(skipped)}: " + "; ".join(parts))
