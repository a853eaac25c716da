"""Packed INT8 Linear kernels against their NumPy reference: every ISA path this CPU runs,
dense and sparse formats, odd shapes, 0-99% sparsity, empty rows, batch 1..256, 1 and 2 threads.
Integer accumulators must match exactly; float outputs to rounding."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from workbench import kernels as K
from workbench.packing import ALIGN, VALUE_PADDING
from workbench.quant import QuantConfig, W8A8Linear, quantize_weight

ISAS = K.supported_isas()
SHAPES = [(1, 1), (3, 7), (17, 129), (1000, 333), (64, 64), (40, 1000)]   # (out, in)
SPARSITIES = [0.0, 0.5, 0.9, 0.99]


def _weight(out_f, in_f, sparsity, seed=0, empty_rows=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    w[torch.rand(out_f, in_f, generator=g) < sparsity] = 0
    if empty_rows and out_f > 2:
        w[1] = 0                                   # an all-zero row
    return w


def _x(n, in_f, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_f, generator=g) * 3
    if n > 1:
        x[-1] = 0                                  # a zero token (scale 0)
    return x.numpy()


# ---------------------------------------------------------------- format

@pytest.mark.parametrize("fmt", ["sparse", "dense"])
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_roundtrip_matches_quantize_weight(shape, fmt):
    w = _weight(*shape, 0.7)
    q, scale = quantize_weight(w)
    p = K.pack_linear(w, format=fmt)
    assert p.sparse == (fmt == "sparse")
    np.testing.assert_array_equal(p.unpack_int8(), q.numpy())
    np.testing.assert_array_equal(p.scale, scale.numpy())
    torch.testing.assert_close(p.unpack(), q.float() * scale[:, None], rtol=0, atol=0)
    assert p.nnz == int((q != 0).sum())
    assert p.density == pytest.approx(p.nnz / w.numel())
    np.testing.assert_array_equal(p.rowsum, q.sum(1).numpy())
    assert p.kp % ALIGN == 0 and p.kp >= shape[1]


def test_sparse_bytes_follow_the_bitmask_model():
    w = _weight(512, 1024, 0.7, empty_rows=False)
    p = K.pack_linear(w, format="sparse")
    d = K.pack_linear(w, format="dense")
    per_row = 4 + 4 + 8           # scale, rowsum, row_ptr
    assert p.nbytes == 512 * 1024 // 8 + p.nnz + per_row * 512 + 8
    assert d.nbytes == 512 * 1024 + 8 * 512
    assert p.bytes_per_weight == pytest.approx(0.125 + p.density, abs=0.02)
    assert len(p.values) == p.nnz + VALUE_PADDING


def test_auto_format_picks_by_density():
    assert K.pack_linear(_weight(32, 64, 0.9), format="auto").sparse
    assert not K.pack_linear(_weight(32, 64, 0.0, empty_rows=False), format="auto").sparse


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="format"):
        K.pack_linear(torch.ones(2, 2), format="csr")
    with pytest.raises(ValueError, match="2-D"):
        K.pack_linear(torch.ones(4))
    with pytest.raises(TypeError, match="floating"):
        K.pack_linear(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        K.pack_linear(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="bias"):
        K.pack_linear(torch.ones(3, 2), bias=torch.ones(2))
    with pytest.raises(ValueError, match="act_scale"):
        K.pack_linear(torch.ones(3, 2), act_scale=0.0)
    with pytest.raises(ValueError, match="in_features"):
        K.pack_linear(torch.zeros(1, K.MAX_IN_FEATURES + 1))
    with pytest.raises(TypeError):
        K.pack_linear([[1.0, 2.0]])


# ---------------------------------------------------------------- parity

def _assert_parity(p, x, isa, threads):
    y_ref, acc_ref = K.linear_int8_ref(x, p.unpack_int8(), p.scale, p.bias, p.act_scale)
    y, acc = K.packed_matmul(p, x, isa=isa, n_threads=threads, return_acc=True)
    np.testing.assert_array_equal(acc, acc_ref, err_msg=f"isa={isa} threads={threads}")
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6 * (1 + np.abs(y_ref).max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_parity_over_shapes_and_sparsity(shape, sparsity, isa):
    w = _weight(*shape, sparsity)
    bias = torch.randn(shape[0])
    for fmt in ("sparse", "dense"):
        p = K.pack_linear(w, bias, format=fmt)
        for n in (1, 3, 5):
            for threads in (1, 2):
                _assert_parity(p, _x(n, shape[1]), isa, threads)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 4, 7, 16, 64, 256])
def test_parity_over_batch(n, isa):
    w = _weight(67, 200, 0.7)
    for fmt in ("sparse", "dense"):
        p = K.pack_linear(w, torch.randn(67), format=fmt)
        for threads in (1, 2):
            _assert_parity(p, _x(n, 200, seed=n), isa, threads)


@pytest.mark.parametrize("isa", ISAS)
def test_parity_over_several_token_blocks(isa):
    """Wide layers walk the tokens in L2-sized blocks (16 tokens at 5000 features)."""
    w = _weight(37, 5000, 0.6)
    for fmt in ("sparse", "dense"):
        p = K.pack_linear(w, torch.randn(37), format=fmt)
        for threads in (1, 2):
            _assert_parity(p, _x(50, 5000, seed=3), isa, threads)


@pytest.mark.parametrize("isa", ISAS)
def test_parity_at_the_int8_extremes(isa):
    """|x| = |w| = 127 everywhere: the largest products the sign trick / VNNI shift must hold."""
    w = torch.full((9, 4100), 1.0)
    w[::2] *= -1
    x = np.where(np.arange(4100) % 3 == 0, -5.0, 5.0).astype(np.float32)[None].repeat(6, 0)
    for fmt in ("sparse", "dense"):
        p = K.pack_linear(w, format=fmt)
        for n in (1, 6):
            _assert_parity(p, x[:n], isa, 2)
        _, acc = K.packed_matmul(p, x[:1], isa=isa, return_acc=True)
        assert abs(int(acc[0, 0])) == 127 * 127 * (4100 - 2 * ((4100 + 2) // 3))


@pytest.mark.parametrize("isa", ISAS)
def test_static_activation_scale(isa):
    w = _weight(33, 150, 0.5)
    x = _x(4, 150)
    p = K.pack_linear(w, format="sparse", act_scale=0.02)    # clips the large activations
    _assert_parity(p, x, isa, 2)


def test_all_paths_agree_with_each_other():
    w = _weight(130, 513, 0.8)
    x = _x(9, 513)
    p = K.pack_linear(w, format="sparse")
    outs = [K.packed_matmul(p, x, isa=isa, return_acc=True)[1] for isa in ISAS]
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)


def test_packed_layers_copy_and_pickle():
    import copy
    import pickle

    lin = torch.nn.Linear(70, 9)
    mod = K.SparseInt8Linear.from_linear(lin, format="sparse")
    x = torch.randn(3, 70)
    for clone in (copy.deepcopy(mod), pickle.loads(pickle.dumps(mod))):
        torch.testing.assert_close(clone(x), mod(x), rtol=0, atol=0)


def test_out_buffer_is_filled_in_place():
    p = K.pack_linear(_weight(20, 30, 0.5), format="sparse")
    out = np.zeros((2, 20), np.float32)
    assert K.packed_matmul(p, _x(2, 30), out) is out
    with pytest.raises(ValueError, match="out"):
        K.packed_matmul(p, _x(2, 30), np.zeros((3, 20), np.float32))


def test_packed_matmul_rejects_bad_input():
    p = K.pack_linear(_weight(20, 30, 0.5), format="sparse")
    with pytest.raises(ValueError, match="features"):
        K.packed_matmul(p, np.zeros((1, 31), np.float32))
    with pytest.raises(TypeError, match="float32"):
        K.packed_matmul(p, np.zeros((1, 30), np.float64))
    with pytest.raises(ValueError, match="NaN"):
        K.packed_matmul(p, np.full((1, 30), np.inf, np.float32))
    with pytest.raises(ValueError, match="not available|unknown"):
        K.packed_matmul(p, np.zeros((1, 30), np.float32), isa="neon")
    with pytest.raises(ValueError, match="n_threads"):
        K.packed_matmul(p, np.zeros((1, 30), np.float32), n_threads=0)
    with pytest.raises(TypeError, match="PackedLinear"):
        K.packed_matmul(object(), np.zeros((1, 30), np.float32))


# ---------------------------------------------------------------- the module

def test_sparse_int8_linear_matches_the_w8a8_fake_quant_layer():
    lin = torch.nn.Linear(96, 40)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.7] = 0
    x = torch.randn(2, 5, 96)
    mod = K.SparseInt8Linear.from_linear(lin)
    fake = W8A8Linear.from_float(lin, QuantConfig(weights="per_channel", activations="per_token"))
    y = mod(x)
    assert y.shape == (2, 5, 40) and y.dtype == torch.float32 and not y.requires_grad
    torch.testing.assert_close(y, fake(x), rtol=1e-5, atol=1e-5)
    assert "sparse" in repr(mod) and "density" in repr(mod)


def test_sparse_int8_linear_input_handling():
    lin = torch.nn.Linear(24, 8, bias=False)
    mod = K.SparseInt8Linear.from_linear(lin, format="dense")
    x = torch.randn(24, 6)
    torch.testing.assert_close(mod(x.t()), mod(x.t().contiguous()), rtol=0, atol=0)   # non-contiguous
    x = torch.randn(3, 24, requires_grad=True)
    assert mod(x).shape == (3, 8)
    with pytest.raises(TypeError, match="float32"):
        mod(torch.randn(3, 24, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_features"):
        mod(torch.randn(3, 25))
    with pytest.raises(ValueError, match="in_features"):
        mod(torch.tensor(1.0))
    with pytest.raises(TypeError, match="Tensor"):
        mod(np.zeros((1, 24), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        mod(torch.full((1, 24), float("nan")))
    with pytest.raises(TypeError, match="nn.Linear"):
        K.SparseInt8Linear.from_linear(torch.nn.Conv1d(2, 2, 1))
    assert mod(torch.randn(0, 24)).shape == (0, 8)


# ---------------------------------------------------------------- ISA selection

def test_cpu_features_report_the_paths():
    f = K.cpu_features()
    assert f["isa"] == K.active_isa() and f["isa_supported"] == ISAS
    assert ISAS[-1] == "generic"


def test_set_isa_validates_and_restores():
    before = K.set_isa("generic")
    try:
        assert K.active_isa() == "generic"
        with pytest.raises(ValueError, match="unknown"):
            K.set_isa("sse9")
    finally:
        K.set_isa(before)
    missing = [i for i in K.ISAS if i not in ISAS]
    for isa in missing:
        with pytest.raises(ValueError, match="not available"):
            K.set_isa(isa)


def _import_with_env(value):
    env = dict(os.environ, WORKBENCH_KERNEL_ISA=value)
    code = "import workbench.kernels as k; print(k.active_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_variable_selects_the_path():
    done = _import_with_env("generic")
    assert done.returncode == 0 and done.stdout.strip() == "generic"
    done = _import_with_env("bogus")
    assert done.returncode != 0 and "WORKBENCH_KERNEL_ISA" in done.stderr and "unknown" in done.stderr
    missing = [i for i in K.ISAS if i not in ISAS]
    if missing:
        done = _import_with_env(missing[0])
        assert done.returncode != 0 and "not available" in done.stderr
        assert "Segmentation" not in done.stderr and done.returncode > 0


# ---------------------------------------------------------------- hardening

@pytest.mark.parametrize("isa", ISAS)
def test_parity_at_the_widest_layer_and_the_int8_extremes(isa):
    """in_features = 65536 (the limit) with every |x| = |w| = 127: the VNNI path sums
    (x + 128) * w = 255 * 127 * 65536 = 2.12e9 per row in int32 (1.2% headroom) before it
    subtracts 128 * rowsum; every path (batch-1 dots, row-pair dots, 32-row tiles) holds it."""
    k = K.MAX_IN_FEATURES
    w = torch.ones(5, k)
    w[1::2] *= -1                                        # rows +127, -127, +127, -127, +127
    for fmt in ("sparse", "dense"):
        p = K.pack_linear(w, format=fmt)
        for n in (1, 5, 20):
            x = np.full((n, k), 3.0, np.float32)
            x[n // 2] *= -1                              # one token of -127s
            _assert_parity(p, x, isa, 2)
            _, acc = K.packed_matmul(p, x, isa=isa, return_acc=True)
            sign = np.where(np.arange(n) == n // 2, -1, 1)            # per token
            np.testing.assert_array_equal(acc[:, 0], sign * 127 * 127 * k)
            np.testing.assert_array_equal(acc[:, 1], -sign * 127 * 127 * k)


def _corrupt(p, **arrays):
    """A copy of PackedLinear p with some arrays replaced (no compiled handle yet)."""
    import copy

    q = copy.copy(p)
    q._kernel = None
    for name, value in arrays.items():
        setattr(q, name, value)
    return q


def test_a_corrupted_packed_layer_is_a_value_error_not_a_crash():
    x = _x(3, 130)
    sparse = K.pack_linear(_weight(20, 130, 0.5), format="sparse")
    dense = K.pack_linear(_weight(20, 130, 0.5), format="dense")
    rp = sparse.row_ptr.copy()
    rp[5:] += 1                                          # one row claims a value too many
    mask = sparse.mask.copy()
    mask[3, -1] |= np.uint64(1) << np.uint64(63)         # column 191 > in_features
    vals = sparse.values.copy()
    vals[0] = -128
    short = sparse.values[: sparse.nnz + 10].copy()
    rowsum = sparse.rowsum.copy()
    rowsum[7] += 1
    cases = [
        (_corrupt(sparse, row_ptr=rp), "running popcount"),
        (_corrupt(sparse, mask=mask), "padding columns"),
        (_corrupt(sparse, values=vals), "-128"),
        (_corrupt(sparse, values=short), "padding"),
        (_corrupt(sparse, rowsum=rowsum), "rowsum"),
        (_corrupt(sparse, row_ptr=sparse.row_ptr[:-1].copy()), "do not match"),
    ]
    dq = dense.qweight.copy()
    dq[2, 5] = -128
    dpad = dense.qweight.copy()
    dpad[2, 140] = 3                                     # a padding column
    cases += [(_corrupt(dense, qweight=dq), "-128"), (_corrupt(dense, qweight=dpad), "padding"),
              (_corrupt(dense, rowsum=dense.rowsum[:-1].copy()), "per-row")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            K.packed_matmul(bad, x)


def test_the_compiled_layer_checks_its_own_limits():
    from workbench import _linear

    k = K.MAX_IN_FEATURES + 64
    empty = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="in_features"):
        _linear.Kernel(False, k, np.zeros((1, k), np.int8), np.zeros((0, k // 64), np.uint64),
                       np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(1, np.int32),
                       np.ones(1, np.float32), empty)
    p = K.pack_linear(_weight(4, 64, 0.0), format="dense")
    kern = K._kernel(p)
    with pytest.raises(ValueError, match="not available"):
        kern.run(99, 1, np.zeros((1, 64), np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        kern.run(0, 0, np.zeros((1, 64), np.float32), np.zeros((1, 4), np.float32))
