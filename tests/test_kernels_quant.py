"""The compiled per-token INT8 quantizer equals its NumPy reference exactly."""

import numpy as np
import pytest
import torch

from workbench import kernels

SHAPES = [(1, 1), (3, 7), (17, 129), (64, 576), (5, 1536), (1000, 333), (0, 8), (4, 0)]


def _random(shape, seed, outlier=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if outlier and x.size:
        x[:, 0] *= 300.0   # an outlier channel, as in LLM activations
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_reference_exactly(shape, threads):
    x = _random(shape, seed=shape[0] * 31 + shape[1], outlier=True)
    q, s = kernels.quantize_per_token(x, n_threads=threads)
    q_ref, s_ref = kernels.quantize_per_token_ref(x)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert q.shape == shape and s.shape == (shape[0],)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)


def test_reconstruction_error_bounded_by_half_step():
    x = _random((50, 300), seed=1)
    q, s = kernels.quantize_per_token(x)
    err = np.abs(q.astype(np.float32) * s[:, None] - x)
    assert (err <= 0.5 * s[:, None] * (1 + 1e-5)).all()
    # the largest element of every row maps to ±127
    assert (np.abs(q).max(axis=1) == 127).all()


def test_zero_rows_and_ties():
    x = np.zeros((3, 10), np.float32)
    x[1] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, 3.5, 126.5, -127, 0]   # scale 1: exact ties
    q, s = kernels.quantize_per_token(x)
    assert s[0] == 0 and (q[0] == 0).all() and (q[2] == 0).all()
    # round half to even, as np.rint
    assert q[1].tolist() == [127, 0, 2, 2, 0, -2, 4, 126, -127, 0]


def test_torch_in_torch_out_and_noncontiguous():
    x = torch.randn(20, 40)
    q, s = kernels.quantize_per_token(x.t())          # non-contiguous: copied, not rejected
    q_ref, s_ref = kernels.quantize_per_token_ref(x.t().contiguous().numpy())
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int8
    np.testing.assert_array_equal(q.numpy(), q_ref)
    np.testing.assert_array_equal(s.numpy(), s_ref)


def test_threads_agree():
    x = _random((257, 1000), seed=7)
    a = kernels.quantize_per_token(x, n_threads=1)
    b = kernels.quantize_per_token(x, n_threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("bad, exc, words", [
    (np.zeros((2, 3), np.float64), TypeError, "float32"),
    (torch.zeros(2, 3, dtype=torch.float16), TypeError, "float32"),
    (np.zeros(3, np.float32), ValueError, "2-D"),
    (np.zeros((2, 3, 4), np.float32), ValueError, "2-D"),
    ([[1.0, 2.0]], TypeError, "torch.Tensor or numpy.ndarray"),
])
def test_bad_input_raises(bad, exc, words):
    with pytest.raises(exc, match=words):
        kernels.quantize_per_token(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_raises(value):
    x = np.ones((4, 5), np.float32)
    x[2, 3] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.quantize_per_token(x)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_count(threads):
    with pytest.raises((ValueError, TypeError), match="n_threads"):
        kernels.quantize_per_token(np.ones((2, 2), np.float32), n_threads=threads)


def test_cpu_features_report():
    f = kernels.cpu_features()
    for key in ("cpu", "avx2", "avx512_vnni", "openmp", "torch_threads"):
        assert key in f
    assert isinstance(f["openmp"], bool)
