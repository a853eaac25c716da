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
