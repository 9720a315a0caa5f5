"""Linear attention as Pallas kernels, forward and backward, in the chunked form.

Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", arXiv 2006.16236) replaces the
softmax kernel by a dot product of featurised queries and keys, so that attention becomes associative:

    out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + eps) = q_i S / (q_i . z + eps),
    S = sum_j k_j v_j^T  [d_k, d_v],  z = sum_j k_j  [d_k],

with the sums over ``j <= i`` when causal (then ``S`` and ``z`` are prefix sums: an RNN with a matrix
state). Without normalisation the denominator is dropped. One program per ``(batch, head)`` walks the
sequence in chunks of ``C`` rows keeping the running state ``S`` (f32) and ``z`` (f32) in registers; a
causal chunk adds its intra-chunk part, the masked quadratic ``(tril(Q_c K_c^T)) V_c``, to the
inter-chunk part ``Q_c S`` of the chunks before it (the chunkwise form of gated linear attention
kernels, e.g. flash-linear-attention's ``fused_chunk``):

    O_c = tril(Q_c K_c^T) V_c + Q_c S,   den_c = rowsum(tril(Q_c K_c^T)) + Q_c z,
    S <- S + K_c^T V_c,  z <- z + colsum(K_c).

A non-causal program first sums the whole ``S`` and ``z`` over the key chunks, then applies them to the
query chunks (queries and keys may then differ in length).

Backward. Only ``out`` and the denominator ``den`` [b, h, q_len] (f32) are saved. With
``g_i = dO_i / (den_i + eps)`` and ``g0_i = -(dO_i . out_i) / (den_i + eps)`` (``g = dO``, ``g0 = 0``
without normalisation), formed outside the kernel, the gradients are those of ``sum_j (q_i . k_j)
[v_j, 1]`` under the cotangent ``[g_i, g0_i]``:

    dq_i = S_i g_i + g0_i z_i,   dk_j = R_j v_j + r_j,   dv_j = R_j^T k_j,
    R_j = sum_{i >= j} q_i g_i^T,  r_j = sum_{i >= j} g0_i q_i

(``i >= j`` only when causal). One backward program per ``(batch, head)`` runs the chunks forward for
``dq`` (state ``S, z``, intra-chunk ``tril(G) K_c`` with ``G = g_c V_c^T + g0_c``) and then backward for
``dk``, ``dv`` (state ``R, r``, intra-chunk ``tril(G)^T Q_c`` and ``tril(Q_c K_c^T)^T g_c``).

Numerics: the dots take their operands in the input dtype (f32 dots at ``HIGHEST`` precision) and
accumulate in f32; the running states stay in f32 and are cast to the input dtype only as a dot operand
(as flash-linear-attention does); the denominator is all f32. Sequences are zero-padded to whole chunks
and, compiled, head dims to powers of two >= 16 (Triton dots): zero rows and columns add nothing to any
sum, so no mask is needed beyond the causal one. The op's meaning, validation and reference live in
:mod:`jaxflash.ops.linear_attention`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import compiler_params, dot_nn, dot_nt, dot_tn, interpret_for

from jaxflash.utils import cdiv, check_int, next_pow2

# The largest head dims the kernels take: the [d_k, d_v] f32 state lives in registers.
MAX_HEAD_DIM = 256
# Triton's tl.dot needs every operand dimension >= 16.
_MIN_DOT_DIM = 16


@dataclasses.dataclass(frozen=True)
class LinearAttentionConfig:
    """Chunking of linear attention; reach it through ``linear_attention(..., config=...)``.

    Attributes:
      chunk_size: sequence rows per chunk, for the ``"xla"`` path and the kernels alike: the causal
        intra-chunk part is a ``[chunk, chunk]`` masked product, the state is carried from chunk to
        chunk. Shorter sequences use one chunk of their own length (the kernels: its next power of two).
        The compiled kernels need a power of two >= 16.
      num_warps: Triton warps per program of the compiled kernels (None: 4 for head dims up to 64,
        else 8).
      num_stages: Triton software-pipelining stages of the compiled kernels.
    """

    chunk_size: int = 64
    num_warps: int | None = None
    num_stages: int = 2

    def __post_init__(self):
        check_int("LinearAttentionConfig.chunk_size", self.chunk_size)
        if self.num_warps is not None:
            check_int("LinearAttentionConfig.num_warps", self.num_warps, power_of_two=True)
        check_int("LinearAttentionConfig.num_stages", self.num_stages)


def unsupported_reason(config: LinearAttentionConfig, key_dim: int, value_dim: int) -> str | None:
    """Why the compiled kernels cannot run this call, or None when they can."""
    c = config.chunk_size
    if c < _MIN_DOT_DIM or c & (c - 1):
        return f"the compiled kernels need chunk_size a power of two >= {_MIN_DOT_DIM}; got {c} (use 'xla')"
    if max(key_dim, value_dim) > MAX_HEAD_DIM:
        return f"the kernels take head dims <= {MAX_HEAD_DIM}; got d_k={key_dim}, d_v={value_dim}"
    return None


@dataclasses.dataclass(frozen=True)
class _Static:
    chunk: int
    causal: bool
    normalize: bool
    eps: float
    interpret: Any
    num_warps: int | None
    num_stages: int


# --- kernels -------------------------------------------------------------------------------------


def _rows(c, chunk):
    return pl.ds(pl.multiple_of(c * chunk, chunk), chunk)


def _causal_mask(chunk):
    row = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    col = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    return row >= col


def _fwd_kernel(q_ref, k_ref, v_ref, *out_refs, st: _Static):
    # q_ref (Lq, dk), k_ref (Lk, dk), v_ref (Lk, dv); out: o_ref (Lq, dv) and, normalised, den_ref (Lq,).
    o_ref, den_ref = out_refs if st.normalize else (out_refs[0], None)
    c_, dt = st.chunk, q_ref.dtype
    dk, dv = q_ref.shape[1], v_ref.shape[1]
    n_q, n_k = q_ref.shape[0] // c_, k_ref.shape[0] // c_
    init = (jnp.zeros((dk, dv), jnp.float32), jnp.zeros((1, dk), jnp.float32))

    def write(rows, num, den):
        if st.normalize:
            den_ref[rows] = den
            num = num / (den + st.eps)[:, None]
        o_ref[rows, :] = num.astype(o_ref.dtype)

    def add_chunk(rows, state):
        s, z = state
        k, v = k_ref[rows, :], v_ref[rows, :]
        return s + dot_tn(k, v), z + k.astype(jnp.float32).sum(0, keepdims=True)

    if st.causal:
        mask = _causal_mask(c_)

        def body(c, state):
            s, z = state
            rows = _rows(c, c_)
            q, k, v = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :]
            a = jnp.where(mask, dot_nt(q, k), 0.0)
            num = dot_nn(a.astype(dt), v) + dot_nn(q, s.astype(dt))
            write(rows, num, a.sum(1) + (q.astype(jnp.float32) * z).sum(1))
            return add_chunk(rows, state)

        lax.fori_loop(0, n_q, body, init)
    else:
        s, z = lax.fori_loop(0, n_k, lambda c, state: add_chunk(_rows(c, c_), state), init)

        def apply(c, carry):
            rows = _rows(c, c_)
            q = q_ref[rows, :]
            write(rows, dot_nn(q, s.astype(dt)), (q.astype(jnp.float32) * z).sum(1))
            return carry

        lax.fori_loop(0, n_q, apply, 0)


def _bwd_kernel(q_ref, k_ref, v_ref, g_ref, *refs, st: _Static):
    # g_ref (Lq, dv): dO / (den + eps), or dO unnormalised; g0_ref (Lq,) f32: -(dO . O) / (den + eps).
    g0_ref, dq_ref, dk_ref, dv_ref = refs if st.normalize else (None, *refs)
    c_, dt = st.chunk, q_ref.dtype
    dk, dv = q_ref.shape[1], v_ref.shape[1]
    n_q, n_k = q_ref.shape[0] // c_, k_ref.shape[0] // c_
    zeros = (jnp.zeros((dk, dv), jnp.float32), jnp.zeros((1, dk), jnp.float32))

    def load_q(rows):
        g0 = g0_ref[rows] if st.normalize else None
        return q_ref[rows, :], g_ref[rows, :], g0

    def key_sums(rows, state):
        s, z = state
        k, v = k_ref[rows, :], v_ref[rows, :]
        return s + dot_tn(k, v), z + k.astype(jnp.float32).sum(0, keepdims=True)

    def query_sums(q, g, g0, state):
        r_mat, r = state
        r_mat = r_mat + dot_tn(q, g)
        if st.normalize:
            r = r + (q.astype(jnp.float32) * g0[:, None]).sum(0, keepdims=True)
        return r_mat, r

    def dq_inter(g, g0, s, z):
        dq = dot_nt(g, s.astype(dt))
        return dq + g0[:, None] * z if st.normalize else dq

    def dkv_inter(k, v, r_mat, r):
        dk_ = dot_nt(v, r_mat.astype(dt))
        return (dk_ + r if st.normalize else dk_), dot_nn(k, r_mat.astype(dt))

    if st.causal:
        mask = _causal_mask(c_)

        def dlogits(g, g0, v):
            gm = dot_nt(g, v)
            return jnp.where(mask, gm + g0[:, None] if st.normalize else gm, 0.0)

        def forward(c, state):
            rows = _rows(c, c_)
            q, g, g0 = load_q(rows)
            k, v = k_ref[rows, :], v_ref[rows, :]
            dq = dot_nn(dlogits(g, g0, v).astype(dt), k) + dq_inter(g, g0, *state)
            dq_ref[rows, :] = dq.astype(dq_ref.dtype)
            return key_sums(rows, state)

        def backward(i, state):
            rows = _rows(n_q - 1 - i, c_)
            q, g, g0 = load_q(rows)
            k, v = k_ref[rows, :], v_ref[rows, :]
            a = jnp.where(mask, dot_nt(q, k), 0.0)
            dk_, dv_ = dkv_inter(k, v, *state)
            dk_ref[rows, :] = (dk_ + dot_tn(dlogits(g, g0, v).astype(dt), q)).astype(dk_ref.dtype)
            dv_ref[rows, :] = (dv_ + dot_tn(a.astype(dt), g)).astype(dv_ref.dtype)
            return query_sums(q, g, g0, state)

        lax.fori_loop(0, n_q, forward, zeros)
        lax.fori_loop(0, n_q, backward, zeros)
    else:
        s, z = lax.fori_loop(0, n_k, lambda c, state: key_sums(_rows(c, c_), state), zeros)

        def queries(c, state):
            rows = _rows(c, c_)
            q, g, g0 = load_q(rows)
            dq_ref[rows, :] = dq_inter(g, g0, s, z).astype(dq_ref.dtype)
            return query_sums(q, g, g0, state)

        r_mat, r = lax.fori_loop(0, n_q, queries, zeros)

        def keys(c, carry):
            rows = _rows(c, c_)
            dk_, dv_ = dkv_inter(k_ref[rows, :], v_ref[rows, :], r_mat, r)
            dk_ref[rows, :] = dk_.astype(dk_ref.dtype)
            dv_ref[rows, :] = dv_.astype(dv_ref.dtype)
            return carry

        lax.fori_loop(0, n_k, keys, 0)


# --- call builders -------------------------------------------------------------------------------


def _pad_to(x: jax.Array, axis: int, size: int) -> jax.Array:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _padded_dim(d: int, st: _Static) -> int:
    return d if st.interpret is not False else max(_MIN_DOT_DIM, next_pow2(d))


def _pad_rows(x: jax.Array, st: _Static, dim: int) -> jax.Array:
    """[b, t, h, d] zero-padded to whole chunks along t and to ``dim`` features."""
    return _pad_to(_pad_to(x, 1, cdiv(x.shape[1], st.chunk) * st.chunk), 3, dim)


def _seq_spec(length: int, dim: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, length, None, dim), lambda b, h: (b, 0, h, 0))


def _row_spec(length: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, length), lambda b, h: (b, h, 0))


def _params(st: _Static, dim: int):
    return compiler_params(
        st.interpret,
        num_warps=st.num_warps or (4 if dim <= 64 else 8),
        num_stages=st.num_stages,
        dimension_semantics=("parallel", "parallel"),
    )


def _forward(q, k, v, st: _Static):
    b, tq, h, dk = q.shape
    dv = v.shape[-1]
    dkp, dvp = _padded_dim(dk, st), _padded_dim(dv, st)
    qp, kp, vp = _pad_rows(q, st, dkp), _pad_rows(k, st, dkp), _pad_rows(v, st, dvp)
    lq, lk = qp.shape[1], kp.shape[1]
    out_specs = [_seq_spec(lq, dvp)]
    out_shape = [jax.ShapeDtypeStruct((b, lq, h, dvp), q.dtype)]
    if st.normalize:
        out_specs.append(_row_spec(lq))
        out_shape.append(jax.ShapeDtypeStruct((b, h, lq), jnp.float32))
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, st=st),
        grid=(b, h),
        in_specs=[_seq_spec(lq, dkp), _seq_spec(lk, dkp), _seq_spec(lk, dvp)],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=st.interpret,
        compiler_params=_params(st, max(dkp, dvp)),
        name="linear_attention_fwd",
    )(qp, kp, vp)
    out = outs[0][:, :tq, :, :dv]
    return out, (outs[1][:, :, :tq] if st.normalize else None)


def _backward(q, k, v, g, g0, st: _Static):
    b, tq, h, dk = q.shape
    tk, dv = k.shape[1], v.shape[-1]
    dkp, dvp = _padded_dim(dk, st), _padded_dim(dv, st)
    qp, kp, vp, gp = (_pad_rows(x, st, d) for x, d in ((q, dkp), (k, dkp), (v, dvp), (g, dvp)))
    lq, lk = qp.shape[1], kp.shape[1]
    inputs = [qp, kp, vp, gp]
    in_specs = [_seq_spec(lq, dkp), _seq_spec(lk, dkp), _seq_spec(lk, dvp), _seq_spec(lq, dvp)]
    if st.normalize:
        inputs.append(_pad_to(g0, 2, lq))
        in_specs.append(_row_spec(lq))
    dq, dk_, dv_ = pl.pallas_call(
        functools.partial(_bwd_kernel, st=st),
        grid=(b, h),
        in_specs=in_specs,
        out_specs=[_seq_spec(lq, dkp), _seq_spec(lk, dkp), _seq_spec(lk, dvp)],
        out_shape=[
            jax.ShapeDtypeStruct((b, lq, h, dkp), q.dtype),
            jax.ShapeDtypeStruct((b, lk, h, dkp), k.dtype),
            jax.ShapeDtypeStruct((b, lk, h, dvp), v.dtype),
        ],
        interpret=st.interpret,
        compiler_params=_params(st, max(dkp, dvp)),
        name="linear_attention_bwd",
    )(*inputs)
    return dq[:, :tq, :, :dk], dk_[:, :tk, :, :dk], dv_[:, :tk, :, :dv]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _linear_attention(q, k, v, st):
    return _forward(q, k, v, st)[0]


def _linear_attention_fwd(q, k, v, st):
    out, den = _forward(q, k, v, st)
    return out, (q, k, v, out, den)


def _linear_attention_bwd(st, res, do):
    q, k, v, out, den = res
    g0 = None
    if st.normalize:
        inv = 1.0 / (jnp.swapaxes(den, 1, 2) + st.eps)  # [b, tq, h]
        do32 = do.astype(jnp.float32)
        g = (do32 * inv[..., None]).astype(do.dtype)
        g0 = jnp.swapaxes(-(do32 * out.astype(jnp.float32)).sum(-1) * inv, 1, 2)  # [b, h, tq]
    else:
        g = do
    return _backward(q, k, v, g, g0, st)


_linear_attention.defvjp(_linear_attention_fwd, _linear_attention_bwd)
_linear_attention_jit = jax.jit(_linear_attention, static_argnums=(3,))


def linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    normalize: bool,
    eps: float,
    config: LinearAttentionConfig | None = None,
    implementation: str = "pallas",
) -> jax.Array:
    """Linear attention with the Pallas kernels: ``[b, tq, h, d_v]`` in ``q.dtype``.

    ``q [b, tq, h, d_k]``, ``k [b, tk, h, d_k]``, ``v [b, tk, h, d_v]``, already featurised and
    validated by the op (:func:`jaxflash.ops.linear_attention.linear_attention`), ``tq == tk`` when
    causal. Differentiable (``custom_vjp`` with the backward kernel); not forward-differentiable.
    Raises ``NotImplementedError`` for what the compiled kernels do not take (:func:`unsupported_reason`).
    """
    config = LinearAttentionConfig() if config is None else config
    interpret = interpret_for(implementation)
    if interpret is False:
        reason = unsupported_reason(config, q.shape[-1], v.shape[-1])
        if reason is not None:
            raise NotImplementedError(reason)
    # A sequence shorter than a chunk is one chunk of its own length (compiled: a Triton block size).
    longest = max(q.shape[1], k.shape[1])
    if interpret is False:
        longest = max(_MIN_DOT_DIM, next_pow2(longest))
    chunk = min(config.chunk_size, longest)
    st = _Static(
        chunk=chunk,
        causal=bool(causal),
        normalize=bool(normalize),
        eps=float(eps),
        interpret=interpret,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return _linear_attention_jit(q, k, v, st)
