"""The chunked XLA path of ``jaxflash.linear_attention``: O(N) memory in the sequence, differentiable by
plain autodiff (so ``jvp`` works too).

Causal: the sequence is cut into ``n`` chunks of ``C`` rows (zero-padded at the end: zero keys and values
add nothing to any sum, zero queries give rows that are cut off, their denominators set to 1 so that
``eps=0`` divides no 0 by 0). Within a chunk the masked quadratic part ``tril(Q_c K_c^T) V_c``; across
chunks the states ``K_c^T V_c`` ``[d_k, d_v]`` and ``colsum(K_c)``, summed by an exclusive prefix scan
over chunks (``lax.associative_scan``: log-depth, no reduce window quadratic in ``n``), applied as
``Q_c S_{<c}``. Memory: ``[b, h, n, C, C]`` for the intra-chunk products and ``[b, n, h, d_k, d_v]`` for
the states, both linear in the sequence.

Non-causal: the direct contraction ``S = K^T V``, ``out = Q S / (Q K^T 1 + eps)``; no chunks needed.

Numerics as the kernels (:mod:`jaxflash.pallas_kernels.linear_attention`): dots in the input dtype (f32 at
``HIGHEST``) accumulating in f32, states in f32 cast to the input dtype as dot operands, the denominator
in f32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxflash.pallas_kernels.linear_attention import LinearAttentionConfig
from jaxflash.utils import cdiv, matmul_precision


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, precision=matmul_precision(a.dtype), preferred_element_type=jnp.float32)


def _exclusive_prefix_sum(x: jax.Array, axis: int) -> jax.Array:
    """``sum_{c' < c} x[c']`` along ``axis``: zeros first, then the inclusive scan shifted by one."""
    inclusive = lax.associative_scan(jnp.add, x, axis=axis)
    zeros = jnp.zeros_like(lax.slice_in_dim(x, 0, 1, axis=axis))
    return jnp.concatenate([zeros, lax.slice_in_dim(inclusive, 0, x.shape[axis] - 1, axis=axis)], axis=axis)


def _normalised(num: jax.Array, den: jax.Array, normalize: bool, eps: float) -> jax.Array:
    return num / (den + eps)[..., None] if normalize else num


def _causal(q, k, v, chunk: int, normalize: bool, eps: float) -> jax.Array:
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    n = cdiv(t, chunk)
    pad = n * chunk - t
    qc, kc, vc = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    qc, kc = qc.reshape(b, n, chunk, h, dk), kc.reshape(b, n, chunk, h, dk)
    vc = vc.reshape(b, n, chunk, h, dv)
    a = _einsum("bnihd,bnjhd->bnhij", qc, kc)
    a = jnp.where(jnp.tril(jnp.ones((chunk, chunk), bool)), a, 0.0)
    s_prev = _exclusive_prefix_sum(_einsum("bnjhd,bnjhe->bnhde", kc, vc), axis=1)
    intra = _einsum("bnhij,bnjhe->bnihe", a.astype(dt), vc)
    num = intra + _einsum("bnihd,bnhde->bnihe", qc, s_prev.astype(dt))
    den = None
    if normalize:
        qf = qc.astype(jnp.float32)
        z_prev = _exclusive_prefix_sum(kc.astype(jnp.float32).sum(2), axis=1)  # [b, n, h, dk]
        den = a.sum(-1).transpose(0, 1, 3, 2) + _einsum("bnihd,bnhd->bnih", qf, z_prev)
        if pad:
            # A padding row's denominator is 0: with eps=0 its 0/0 would put NaN into the gradients.
            real = (jnp.arange(n * chunk) < t).reshape(1, n, chunk, 1)
            den = jnp.where(real, den, 1.0)
    out = _normalised(num, den, normalize, eps)
    return out.reshape(b, n * chunk, h, dv)[:, :t].astype(dt)


def _non_causal(q, k, v, normalize: bool, eps: float) -> jax.Array:
    dt = q.dtype
    s = _einsum("bthd,bthe->bhde", k, v)
    num = _einsum("bthd,bhde->bthe", q, s.astype(dt))
    den = None
    if normalize:
        z = k.astype(jnp.float32).sum(1)  # [b, h, dk]
        den = _einsum("bthd,bhd->bth", q.astype(jnp.float32), z)
    return _normalised(num, den, normalize, eps).astype(dt)


@functools.partial(jax.jit, static_argnames=("causal", "normalize", "eps", "config"))
def xla_linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    normalize: bool,
    eps: float,
    config: LinearAttentionConfig | None = None,
) -> jax.Array:
    """Linear attention in chunks (module docstring); arguments validated by the op."""
    if not causal:
        return _non_causal(q, k, v, normalize, eps)
    config = LinearAttentionConfig() if config is None else config
    return _causal(q, k, v, min(config.chunk_size, q.shape[1]), normalize, eps)
