"""What a linear-attention call means, shared by every implementation: the feature map the papers use,
the recurrent state, and the plain quadratic reference.

Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", arXiv 2006.16236) replaces ``softmax(q k^T)`` by a product of feature maps,
``phi(q) phi(k)^T``. The op takes queries and keys *already featurised*; with ``q = phi(queries)``,
``k = phi(keys)`` and the sums over ``j <= i`` when causal (over all keys otherwise):

    normalize=True:   out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + eps)
    normalize=False:  out_i = sum_j (q_i . k_j) v_j

Associativity makes it linear in the sequence length: ``out_i = q_i S_i / (q_i . z_i + eps)`` with the
state ``S_i = sum_j k_j v_j^T`` ``[d_k, d_v]`` and ``z_i = sum_j k_j`` ``[d_k]``; causal, these are prefix
sums, the recurrence of :func:`jaxflash.linear_attention_step`. Katharopoulos et al. use
``phi(x) = elu(x) + 1`` (:func:`elu_feature_map`), which is positive, so the denominator is too; with a
feature map of either sign the denominator can vanish, and the caller picks ``eps`` (or
``normalize=False``) accordingly.

Grafting (Chandrasegaran et al. 2025, arXiv 2506.05340) lists linear attention among the operators that
replace a DiT's softmax attention; the grafting paper's own "linear attention" entry is Mamba-2, a gated
relative of this op.

Layout: ``[batch, seq, heads, head_dim]``; the value head dim ``d_v`` may differ from ``d_k``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from jaxflash.utils import fits_in_memory, memory_estimate_message

# Katharopoulos et al.'s (and fast-transformers') default.
DEFAULT_EPS = 1e-6


def elu_feature_map(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """``elu(x) + 1``, the positive feature map of Katharopoulos et al. 2020: apply it to queries and keys
    before :func:`jaxflash.linear_attention`. Keeps x's dtype."""
    return (jax.nn.elu(x) + 1).astype(x.dtype)


class LinearAttentionState(NamedTuple):
    """The recurrent state of causal linear attention after some tokens (f32 throughout).

    Attributes:
      kv: ``sum_j k_j v_j^T``, ``[batch, heads, d_k, d_v]``.
      k_sum: ``sum_j k_j`` (the normaliser's state), ``[batch, heads, d_k]``.
    """

    kv: Float[Array, "b h dk dv"]
    k_sum: Float[Array, "b h dk"]

    @classmethod
    def zeros(cls, batch: int, heads: int, key_dim: int, value_dim: int) -> LinearAttentionState:
        """The state before the first token."""
        return cls(
            jnp.zeros((batch, heads, key_dim, value_dim), jnp.float32),
            jnp.zeros((batch, heads, key_dim), jnp.float32),
        )


def final_state(k: Float[Array, "b t h dk"], v: Float[Array, "b t h dv"]) -> LinearAttentionState:
    """The state after the whole sequence: what :func:`jaxflash.linear_attention_step` continues from."""
    kf, vf = k.astype(jnp.float32), v.astype(jnp.float32)
    kv = jnp.einsum("bthd,bthe->bhde", kf, vf, precision=lax.Precision.HIGHEST)
    return LinearAttentionState(kv, kf.sum(1))


# --- reference ---------------------------------------------------------------------------------------

# Arrays of the reference's [batch, heads, q_len, kv_len] size alive at once (products, mask).
_REFERENCE_LIVE_MATRICES = 2


def check_reference_fits(batch: int, heads: int, q_len: int, kv_len: int) -> None:
    """Refuses (``NotImplementedError``, with the estimate) a reference call that cannot fit in memory."""
    need = _REFERENCE_LIVE_MATRICES * 4 * batch * heads * q_len * kv_len
    if not fits_in_memory(need):
        raise NotImplementedError(
            memory_estimate_message(
                f"the reference materialises [batch={batch}, heads={heads}, {q_len}, {kv_len}] products and",
                need,
            )
            + "; use implementation='xla' (O(N) memory) or 'pallas'"
        )


def reference(
    q: Float[Array, "b tq h dk"],
    k: Float[Array, "b tk h dk"],
    v: Float[Array, "b tk h dv"],
    *,
    causal: bool,
    normalize: bool,
    eps: float,
) -> Float[Array, "b tq h dv"]:
    """The quadratic form in f32, the ground truth: ``A = q k^T`` (lower-triangular when causal),
    ``out = A v / (A 1 + eps)`` (``A v`` unnormalised), in ``q.dtype``. Materialises ``A``: tests and
    small inputs only."""
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    a = jnp.einsum("bihd,bjhd->bhij", qf, kf, precision=lax.Precision.HIGHEST)
    if causal:
        a = jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, 0.0)
    out = jnp.einsum("bhij,bjhe->bihe", a, vf, precision=lax.Precision.HIGHEST)
    if normalize:
        out = out / (a.sum(-1).transpose(0, 2, 1) + eps)[..., None]
    return out.astype(q.dtype)
