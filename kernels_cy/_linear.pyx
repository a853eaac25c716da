# cython: language_level=3
"""Compiled kernels: one packed Linear layer (`Kernel`) and the whole-model decode engine
(`Engine`), both thin Cython shells over the C in wb_linear.h / wb_engine.h.

A `Kernel` holds one packed layer (pointers into the arrays of a workbench.packing.PackedLinear,
which it keeps alive). Its contents are validated ONCE, here, before any nogil call can read
them: shapes, row offsets equal to the running popcount of the masks, value padding, weights in
[-127, 127] (a -128 would break the AVX2 sign trick silently), per-row sums equal to the rows'
sums (the VNNI path subtracts 128 * rowsum), in_features <= 65536 (int32 headroom). A corrupted
PackedLinear is a ValueError, never an out-of-bounds read.

An `Engine` holds the C description of a packed Llama model (its Kernels, FP32 weights, norms,
RoPE tables) and runs B rows x T tokens through every layer in one nogil call (wb_engine.h).
Buffers it writes (KV cache, logits) are the caller's; its scratch is its own, grown on demand,
so decode steps allocate nothing.
"""

from libc.stdint cimport int8_t, uint8_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, free, calloc
from libc.string cimport memset

cdef extern from "wb_engine.h" nogil:
    int WB_ISA_GENERIC
    int WB_ISA_AVX2
    int WB_ISA_AVX512VNNI
    int WB_LIN_DENSE
    int WB_LIN_SPARSE
    int WB_LIN_FP32
    int wb_cpu_has(int isa)
    int wb_isa_compiled(int isa)

    ctypedef struct wb_lin:
        int kind
        int64_t rows, in_features, kp, words
        const int8_t* wd
        const uint64_t* mask
        const int8_t* vals
        const int64_t* row_ptr
        const int32_t* rowsum
        const float* w_scale
        const float* wf
        const float* bias
        float static_scale, static_inv

    ctypedef struct wb_layer:
        const float* in_norm
        const float* post_norm
        wb_lin qkv[3]
        int n_qkv
        wb_lin o
        wb_lin gu[2]
        int n_gu
        wb_lin down

    ctypedef struct wb_model:
        int64_t n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab, max_pos
        double eps
        const float* embed
        const float* final_norm
        const float* cos
        const float* sin
        const wb_layer* layers
        wb_lin head
        int64_t kp_max

    ctypedef struct wb_call:
        int64_t B, T
        const int64_t* ids
        const int64_t* pos
        float* keys
        float* values
        int64_t cap, s0
        const uint8_t* key_mask
        int all_logits
        float* logits
        int64_t* next
        int isa, n_threads
        char* scratch
        double* profile

    int WB_N_STEPS

    int64_t wb_linear_work_bytes(int64_t kp, int64_t n, int nth)
    int wb_linear_forward(const wb_lin* L, int isa, int n_threads, const float* x, int64_t n,
                          float* y, int32_t* acc, char* work)
    int64_t wb_engine_layout(const wb_model* m, int64_t N, int nth, int64_t cap, char* base,
                             void* s)
    int wb_engine_forward(const wb_model* m, const wb_call* c)

ISA_NAMES = {"generic": WB_ISA_GENERIC, "avx2": WB_ISA_AVX2, "avx512vnni": WB_ISA_AVX512VNNI}
# the engine's timed steps (wb_engine.h, WB_P_*), in order
ENGINE_STEPS = ("embed", "norm1", "qkv", "rope+cache", "attention", "quant o", "o_proj",
                "norm2", "gate_up", "swiglu", "quant down", "down_proj", "final norm",
                "head", "argmax")
MAX_IN_FEATURES = 65536
MAX_HEAD_DIM = 512


def isa_supported(int isa):
    """True if this CPU can run the path (and it was compiled in)."""
    return bool(wb_isa_compiled(isa) and wb_cpu_has(isa))


cdef int _check_isa(int isa, int n_threads) except -1:
    """A path this CPU cannot run would die of SIGILL inside the nogil call: refuse it here."""
    if not (wb_isa_compiled(isa) and wb_cpu_has(isa)):
        raise ValueError(f"kernel ISA code {isa} is not available on this CPU")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return 0


cdef extern from *:
    int __builtin_popcountll(unsigned long long) nogil


cdef inline int _popcount(uint64_t m) noexcept nogil:
    return __builtin_popcountll(m)


cdef class Kernel:
    """One packed INT8 Linear layer, validated and ready to run."""

    cdef object arrays                  # keeps the NumPy buffers alive
    cdef wb_lin lin
    cdef readonly Py_ssize_t rows, kp, in_features
    cdef readonly bint sparse

    def __init__(self, bint sparse, Py_ssize_t in_features,
                 const signed char[:, ::1] qweight,   # IN [rows, kp] (dense) or [0, kp]
                 const uint64_t[:, ::1] mask,         # IN [rows, kp/64] (sparse) or [0, kp/64]
                 const signed char[::1] vals,         # IN [nnz + 64] (sparse) or [0]
                 const int64_t[::1] row_ptr,          # IN [rows + 1] (sparse) or [0]
                 const int32_t[::1] rowsum,           # IN [rows]
                 const float[::1] w_scale,            # IN [rows]
                 const float[::1] bias,               # IN [rows] or [0]
                 float static_scale=-1.0, float static_inv=0.0):
        cdef Py_ssize_t r, rows = w_scale.shape[0]
        cdef Py_ssize_t kp = qweight.shape[1] if not sparse else 64 * mask.shape[1]
        if not 0 <= in_features <= MAX_IN_FEATURES:
            raise ValueError(f"Kernel: in_features must be in [0, {MAX_IN_FEATURES}], got {in_features}")
        if kp % 64 or kp < in_features or kp >= in_features + 64 and in_features > 0:
            raise ValueError("Kernel: padded width must be in_features rounded up to 64")
        if rowsum.shape[0] != rows or bias.shape[0] not in (0, rows):
            raise ValueError("Kernel: per-row buffers do not match")
        if static_scale >= 0 and not (static_scale > 0 and static_inv > 0):
            raise ValueError("Kernel: a static activation scale must be positive")
        if sparse:
            if mask.shape[0] != rows or row_ptr.shape[0] != rows + 1:
                raise ValueError("Kernel: sparse weight buffers do not match")
            _check_sparse(rows, in_features, kp, mask, vals, row_ptr, rowsum)
        else:
            if qweight.shape[0] != rows:
                raise ValueError("Kernel: dense weight buffer does not match")
            _check_dense(rows, in_features, kp, qweight, rowsum)
        self.arrays = (qweight, mask, vals, row_ptr, rowsum, w_scale, bias)
        self.rows, self.kp, self.in_features, self.sparse = rows, kp, in_features, sparse
        memset(&self.lin, 0, sizeof(wb_lin))
        self.lin.kind = WB_LIN_SPARSE if sparse else WB_LIN_DENSE
        self.lin.rows, self.lin.in_features, self.lin.kp, self.lin.words = rows, in_features, kp, kp // 64
        self.lin.static_scale, self.lin.static_inv = static_scale, static_inv
        if rows:
            self.lin.rowsum, self.lin.w_scale = &rowsum[0], &w_scale[0]
            self.lin.bias = &bias[0] if bias.shape[0] else NULL
            if sparse:
                self.lin.mask, self.lin.vals, self.lin.row_ptr = &mask[0, 0], &vals[0], &row_ptr[0]
            else:
                self.lin.wd = &qweight[0, 0]

    @property
    def static_scale(self):
        return self.lin.static_scale

    def run(self, int isa, int n_threads,
            const float[:, ::1] x,             # IN  [n, in_features]
            float[:, ::1] y,                   # OUT [n, rows]
            int32_t[:, ::1] acc=None):         # OUT [n, rows]: exact accumulators (tests)
        """Compute y (and acc); returns the number of tokens holding NaN/Inf (y then undefined)."""
        cdef Py_ssize_t n = x.shape[0]
        cdef int bad = 0
        cdef int32_t* accp = NULL
        cdef char* raw
        cdef char* work
        _check_isa(isa, n_threads)
        if x.shape[1] != self.in_features or y.shape[0] != n or y.shape[1] != self.rows:
            raise ValueError("Kernel.run: input or output shape does not match the layer")
        if acc is not None:
            if acc.shape[0] != n or acc.shape[1] != self.rows:
                raise ValueError("Kernel.run: accumulator shape does not match")
            if n and self.rows:
                accp = &acc[0, 0]
        if n == 0 or self.rows == 0:
            return 0
        raw = <char*>malloc(wb_linear_work_bytes(self.kp, n, n_threads) + 64)
        if raw == NULL:
            raise MemoryError("Kernel.run: no memory for the quantized activations")
        work = <char*>((<size_t>raw + 63) & ~(<size_t>63))     # vector loads stay in one line
        try:
            with nogil:
                bad = wb_linear_forward(&self.lin, isa, n_threads, &x[0, 0], n, &y[0, 0], accp,
                                        work)
        finally:
            free(raw)
        return bad


cdef int _check_dense(Py_ssize_t rows, Py_ssize_t k, Py_ssize_t kp,
                      const signed char[:, ::1] q, const int32_t[::1] rowsum) except -1:
    cdef Py_ssize_t r, j
    cdef int64_t s
    cdef int code = 0
    with nogil:
        for r in range(rows):
            s = 0
            for j in range(kp):
                if q[r, j] == -128:
                    code = 1
                elif j >= k and q[r, j] != 0:
                    code = 2
                s += q[r, j]
            if code == 0 and s != rowsum[r]:
                code = 3
            if code:
                break
    if code:
        raise ValueError(f"Kernel: dense row {r}: " + (
            "holds -128 (weights must lie in [-127, 127])", "has nonzero padding columns",
            "row sum does not match rowsum")[code - 1])
    return 0


cdef int _check_sparse(Py_ssize_t rows, Py_ssize_t k, Py_ssize_t kp,
                       const uint64_t[:, ::1] mask, const signed char[::1] vals,
                       const int64_t[::1] row_ptr, const int32_t[::1] rowsum) except -1:
    cdef Py_ssize_t r, w, words = kp // 64, nv = vals.shape[0]
    cdef int64_t count, total = 0, s, i
    cdef uint64_t pad_mask = 0
    cdef int code = 0
    if k % 64:
        pad_mask = ~((<uint64_t>1 << (k % 64)) - 1)     # bits of the padding columns
    if rows and row_ptr[0] != 0:
        raise ValueError("Kernel: row_ptr must start at 0")
    with nogil:
        for r in range(rows):
            count = 0
            for w in range(words):
                count += _popcount(mask[r, w])
            if words and pad_mask and mask[r, words - 1] & pad_mask:
                code = 1
                break
            if row_ptr[r + 1] - row_ptr[r] != count:
                code = 2
                break
            total += count
            if total + 64 > nv:
                code = 3
                break
            s = 0
            for i in range(row_ptr[r], row_ptr[r + 1]):
                if vals[i] == -128:
                    code = 4
                s += vals[i]
            if code == 0 and s != rowsum[r]:
                code = 5
            if code:
                break
    if code:
        raise ValueError(f"Kernel: sparse row {r}: " + (
            "mask sets padding columns", "row_ptr does not equal the running popcount of the masks",
            "packed values are shorter than nnz + 64 bytes of padding",
            "holds -128 (weights must lie in [-127, 127])",
            "row sum does not match rowsum")[code - 1])
    return 0


# ---------------------------------------------------------------- the engine

cdef int _fill_fp32(wb_lin* lin, object spec) except -1:
    """spec = (weight float32 [rows, in] C-contiguous, bias float32 [rows] or None)."""
    cdef const float[:, ::1] w = spec[0]
    cdef const float[::1] b
    memset(lin, 0, sizeof(wb_lin))
    lin.kind = WB_LIN_FP32
    lin.rows, lin.in_features = w.shape[0], w.shape[1]
    lin.kp = -(-w.shape[1] // 64) * 64
    lin.words = lin.kp // 64
    lin.static_scale = -1.0
    if w.shape[0] and w.shape[1]:
        lin.wf = &w[0, 0]
    if spec[1] is not None:
        b = spec[1]
        if b.shape[0] != w.shape[0]:
            raise ValueError("Engine: FP32 bias does not match its weight")
        if b.shape[0]:
            lin.bias = &b[0]
    return 0


cdef int _fill(wb_lin* lin, object spec, Py_ssize_t in_features, str name) except -1:
    """A Kernel (INT8) or an (weight, bias) FP32 pair -> wb_lin, checked against in_features."""
    if isinstance(spec, Kernel):
        lin[0] = (<Kernel>spec).lin
    elif isinstance(spec, tuple) and len(spec) == 2:
        _fill_fp32(lin, spec)
    else:
        raise TypeError(f"Engine: {name} must be a Kernel or an FP32 (weight, bias) pair")
    if lin.in_features != in_features:
        raise ValueError(f"Engine: {name} takes {lin.in_features} inputs, expected {in_features}")
    return 0


cdef int _check_group(wb_lin* parts, int n, Py_ssize_t rows, str name) except -1:
    cdef int p
    cdef Py_ssize_t total = 0
    cdef float scale = -2.0
    for p in range(n):
        total += parts[p].rows
        if parts[p].kind != WB_LIN_FP32:
            if scale != -2.0 and parts[p].static_scale != scale:
                raise ValueError(f"Engine: the parts of {name} quantize their input differently")
            scale = parts[p].static_scale
    if total != rows:
        raise ValueError(f"Engine: {name} has {total} output rows, expected {rows}")
    return 0


cdef class Engine:
    """The packed model for wb_engine_forward. Arguments (all validated here):
    dims = (n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, max_positions,
    rms_eps); embed float32 [vocab, hidden]; final_norm [hidden]; cos, sin [max_positions,
    head_dim]; layers: per layer (in_norm, post_norm, qkv parts, o, gate/up parts, down), every
    linear a Kernel or an FP32 (weight, bias) pair; head likewise."""

    cdef wb_model model
    cdef wb_layer* layers
    cdef object refs
    cdef char* scratch_raw
    cdef char* scratch
    cdef Py_ssize_t scratch_bytes
    cdef bint busy

    def __cinit__(self):
        self.layers, self.scratch_raw, self.scratch, self.scratch_bytes = NULL, NULL, NULL, 0
        self.busy = False

    def __dealloc__(self):
        free(self.layers)
        free(self.scratch_raw)

    def __init__(self, tuple dims, const float[:, ::1] embed, const float[::1] final_norm,
                 const float[:, ::1] cos, const float[:, ::1] sin, list layers, object head):
        cdef Py_ssize_t L, hid, H, KV, hd, inter, vocab, maxp, i, p
        cdef const float[::1] n1
        cdef const float[::1] n2
        cdef wb_layer* ly
        cdef wb_lin* lin
        L, hid, H, KV, hd, inter, vocab, maxp = [int(v) for v in dims[:8]]
        eps = float(dims[8])
        if min(L, hid, H, KV, hd, inter, vocab, maxp) < 1 or H % KV or hd % 2 or hd > MAX_HEAD_DIM:
            raise ValueError(f"Engine: unsupported dimensions {dims}")
        if embed.shape[0] != vocab or embed.shape[1] != hid or final_norm.shape[0] != hid:
            raise ValueError("Engine: embedding or final norm does not match the dimensions")
        if cos.shape[0] != maxp or cos.shape[1] != hd or sin.shape[0] != maxp or sin.shape[1] != hd:
            raise ValueError("Engine: RoPE tables must be [max_positions, head_dim]")
        if len(layers) != L:
            raise ValueError(f"Engine: {len(layers)} layers given, dims say {L}")
        self.layers = <wb_layer*>calloc(L, sizeof(wb_layer))
        if self.layers == NULL:
            raise MemoryError()
        refs = [embed, final_norm, cos, sin, head]
        kp_max = 64
        for i in range(L):
            in_norm, post_norm, qkv, o, gu, down = layers[i]
            n1, n2 = in_norm, post_norm
            if n1.shape[0] != hid or n2.shape[0] != hid:
                raise ValueError(f"Engine: layer {i} norms must have {hid} gains")
            if not 1 <= len(qkv) <= 3 or not 1 <= len(gu) <= 2:
                raise ValueError(f"Engine: layer {i} needs 1-3 q/k/v parts and 1-2 gate/up parts")
            ly = &self.layers[i]
            ly.in_norm, ly.post_norm = &n1[0], &n2[0]
            ly.n_qkv, ly.n_gu = len(qkv), len(gu)
            for p in range(ly.n_qkv):
                _fill(&ly.qkv[p], qkv[p], hid, f"layer {i} q/k/v part {p}")
            _check_group(ly.qkv, ly.n_qkv, (H + 2 * KV) * hd, f"layer {i} q/k/v")
            _fill(&ly.o, o, H * hd, f"layer {i} o_proj")
            _check_group(&ly.o, 1, hid, f"layer {i} o_proj")
            for p in range(ly.n_gu):
                _fill(&ly.gu[p], gu[p], hid, f"layer {i} gate/up part {p}")
            _check_group(ly.gu, ly.n_gu, 2 * inter, f"layer {i} gate/up")
            _fill(&ly.down, down, inter, f"layer {i} down_proj")
            _check_group(&ly.down, 1, hid, f"layer {i} down_proj")
            for lin_kp in (hid, H * hd, inter):
                kp_max = max(kp_max, -(-lin_kp // 64) * 64)
            refs.append(layers[i])
        _fill(&self.model.head, head, hid, "head")
        _check_group(&self.model.head, 1, vocab, "head")
        self.refs = refs
        self.model.n_layers, self.model.hidden, self.model.n_heads, self.model.n_kv = L, hid, H, KV
        self.model.head_dim, self.model.inter, self.model.vocab, self.model.max_pos = hd, inter, vocab, maxp
        self.model.eps = eps
        self.model.embed, self.model.final_norm = &embed[0, 0], &final_norm[0]
        self.model.cos, self.model.sin = &cos[0, 0], &sin[0, 0]
        self.model.layers = self.layers
        self.model.kp_max = kp_max

    def run(self, int isa, int n_threads,
            const int64_t[:, ::1] ids,         # IN  [B, T] token ids
            const int64_t[:, ::1] pos,         # IN  [B, T] RoPE positions
            float[:, :, :, :, ::1] keys,       # IN/OUT [layers, B, kv_heads, cap, head_dim]
            float[:, :, :, :, ::1] values,     # IN/OUT same
            Py_ssize_t s0,                     # first cache slot written
            object key_mask,                   # IN  uint8 [B, cap] or None
            float[:, ::1] logits,              # OUT [B*T (all_logits) or B, vocab]
            bint all_logits=False,
            int64_t[::1] next_ids=None,        # OUT [B] greedy next tokens, or None
            double[::1] profile=None):         # OUT [len(ENGINE_STEPS)] += seconds per step
        """One forward of B x T tokens into cache slots s0..s0+T-1. Returns the number of
        quantized rows holding NaN/Inf (0 = success; the outputs are undefined otherwise)."""
        cdef wb_call c
        cdef const uint8_t[:, ::1] km
        cdef Py_ssize_t B = ids.shape[0], T = ids.shape[1], i, j, need, cap, nh
        cdef int bad
        cdef wb_model* m = &self.model
        _check_isa(isa, n_threads)
        if B < 1 or T < 1 or pos.shape[0] != B or pos.shape[1] != T:
            raise ValueError("Engine.run: ids and positions must both be [B, T] with B, T >= 1")
        if (keys.shape[0] != m.n_layers or keys.shape[1] != B or keys.shape[2] != m.n_kv
                or keys.shape[4] != m.head_dim):
            raise ValueError("Engine.run: the KV cache does not match the model and batch")
        for i in range(5):
            if values.shape[i] != keys.shape[i]:
                raise ValueError("Engine.run: keys and values differ in shape")
        cap = keys.shape[3]
        if s0 < 0 or s0 + T > cap:
            raise ValueError(f"Engine.run: slots {s0}..{s0 + T - 1} lie outside the cache of {cap}")
        nh = B * T if all_logits else B
        if logits.shape[0] != nh or logits.shape[1] != m.vocab:
            raise ValueError(f"Engine.run: logits must be [{nh}, {m.vocab}]")
        if next_ids is not None and (all_logits or next_ids.shape[0] != B):
            raise ValueError("Engine.run: next_ids must be [B] and needs all_logits=False")
        for i in range(B):
            for j in range(T):
                if not 0 <= ids[i, j] < m.vocab:
                    raise ValueError(f"Engine.run: token id {ids[i, j]} outside [0, {m.vocab})")
                if not 0 <= pos[i, j] < m.max_pos:
                    raise ValueError(f"Engine.run: position {pos[i, j]} outside [0, {m.max_pos})")
        memset(&c, 0, sizeof(wb_call))
        if key_mask is not None:
            km = key_mask
            if km.shape[0] != B or km.shape[1] != cap:
                raise ValueError(f"Engine.run: key_mask must be [{B}, {cap}]")
            c.key_mask = &km[0, 0]
        if self.busy:
            raise RuntimeError("Engine.run: this engine is already running in another thread")
        need = wb_engine_layout(m, B * T, n_threads, cap, NULL, NULL) + 64
        if need > self.scratch_bytes:
            free(self.scratch_raw)
            self.scratch_raw = <char*>malloc(need)
            self.scratch_bytes = need if self.scratch_raw != NULL else 0
            if self.scratch_raw == NULL:
                raise MemoryError(f"Engine.run: no memory for {need} bytes of scratch")
            self.scratch = <char*>((<size_t>self.scratch_raw + 63) & ~(<size_t>63))
        c.B, c.T, c.ids, c.pos = B, T, &ids[0, 0], &pos[0, 0]
        c.keys, c.values, c.cap, c.s0 = &keys[0, 0, 0, 0, 0], &values[0, 0, 0, 0, 0], cap, s0
        c.all_logits, c.logits = all_logits, &logits[0, 0]
        c.next = &next_ids[0] if next_ids is not None else NULL
        c.isa, c.n_threads, c.scratch = isa, n_threads, self.scratch
        if profile is not None:
            if profile.shape[0] != WB_N_STEPS or len(ENGINE_STEPS) != WB_N_STEPS:
                raise ValueError(f"Engine.run: profile must hold {WB_N_STEPS} values")
            c.profile = &profile[0]
        self.busy = True
        try:
            with nogil:
                bad = wb_engine_forward(m, &c)
        finally:
            self.busy = False
        return bad
