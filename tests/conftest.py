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
