"""``jaxflash.linear_attention`` (causal or not, chunked) and ``jaxflash.linear_attention_step`` (one
token of the causal recurrence, for decoding). What they compute is in
:mod:`jaxflash.ops.linear_attention.spec`.

Implementations (op ``"linear_attention"``):

- ``"pallas"``: the kernels of :mod:`jaxflash.pallas_kernels.linear_attention` (GPU, by name only: they
  have not yet been run or measured on a GPU against the XLA path); a ``custom_vjp`` with a Pallas
  backward kernel; config :class:`LinearAttentionConfig`.
- ``"pallas_interpret"``: the same kernels in the Pallas interpreter (tests, debugging).
- ``"xla"``: the chunked form in plain XLA (:mod:`jaxflash.ops.linear_attention.xla`), O(N) memory,
  differentiable by autodiff (``jvp`` included); the default everywhere; config
  :class:`LinearAttentionConfig` (its ``chunk_size``).
- ``"reference"``: the quadratic masked form in f32 (refused, with the estimate, when it would not fit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from jaxflash.ops.linear_attention import validation
from jaxflash.ops.linear_attention.spec import (
    DEFAULT_EPS,
    LinearAttentionState,
    check_reference_fits,
    final_state,
    reference,
)
from jaxflash.ops.linear_attention.xla import xla_linear_attention
from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import linear_attention as _kernel
from jaxflash.pallas_kernels.linear_attention import LinearAttentionConfig

Config = LinearAttentionConfig | Mapping[str, Any] | None


def linear_attention(
    q: Float[Array, "b tq h dk"],
    k: Float[Array, "b tk h dk"],
    v: Float[Array, "b tk h dv"],
    *,
    causal: bool = False,
    normalize: bool = True,
    eps: float = DEFAULT_EPS,
    return_state: bool = False,
    implementation: str | Sequence[str] | None = None,
    config: Config = None,
) -> Float[Array, "b tq h dv"] | tuple[Float[Array, "b tq h dv"], LinearAttentionState]:
    """Linear attention over already-featurised queries and keys (Katharopoulos et al. 2020).

    ``out_i = sum_j (q_i . k_j) v_j / (sum_j q_i . k_j + eps)``, the sums over ``j <= i`` when causal;
    computed in O(N) time and memory through the state ``sum_j k_j v_j^T``.

    Args:
      q: featurised queries ``[batch, q_len, heads, d_k]``, e.g. ``elu_feature_map(x @ w_q)``; the op
        applies no feature map and no scale.
      k: featurised keys ``[batch, kv_len, heads, d_k]``.
      v: values ``[batch, kv_len, heads, d_v]``; ``d_v`` may differ from ``d_k``. q, k and v share one
        dtype (f32, bf16 or f16); products accumulate in f32.
      causal: query ``i`` sees keys ``j <= i`` (needs ``q_len == kv_len``).
      normalize: divide by ``sum_j q_i . k_j + eps`` (True) or return the numerator (False). The
        denominator is positive for positive feature maps (``elu + 1``); of either sign it can vanish.
      eps: added to the denominator; a finite number >= 0.
      return_state: also return the :class:`LinearAttentionState` after the whole sequence (f32), from
        which :func:`linear_attention_step` continues a causal sequence (prefill, then decode).
      implementation: ``"pallas"``, ``"pallas_interpret"``, ``"xla"``, ``"reference"``, a sequence to try
        in order, or None (the best available: ``"xla"``).
      config: a :class:`LinearAttentionConfig` (chunk size; kernel launch parameters), or a mapping
        ``{implementation: config}``.

    Returns:
      ``out [batch, q_len, heads, d_v]`` in q's dtype, and the state when ``return_state``.
    """
    causal = validation.check_flag("causal", causal)
    normalize = validation.check_flag("normalize", normalize)
    return_state = validation.check_flag("return_state", return_state)
    validation.check_qkv(q, k, v, causal=causal)
    eps = validation.check_eps(eps)
    flags = dict(causal=causal, normalize=normalize, eps=eps)
    out = dispatch("linear_attention", implementation, q, k, v, config=config, **flags)
    return (out, final_state(k, v)) if return_state else out


def linear_attention_step(
    state: LinearAttentionState,
    q: Float[Array, "b h dk"],
    k: Float[Array, "b h dk"],
    v: Float[Array, "b h dv"],
    *,
    normalize: bool = True,
    eps: float = DEFAULT_EPS,
) -> tuple[Float[Array, "b h dv"], LinearAttentionState]:
    """One token of causal linear attention: adds ``k v^T`` and ``k`` to the state, then reads it with
    ``q``, so a loop of steps from :meth:`LinearAttentionState.zeros` equals ``linear_attention(...,
    causal=True)`` token by token.

    Args:
      state: the :class:`LinearAttentionState` before this token (``kv [b, h, d_k, d_v]``, ``k_sum
        [b, h, d_k]``, f32).
      q, k: this token's featurised query and key ``[batch, heads, d_k]``.
      v: its value ``[batch, heads, d_v]``.
      normalize, eps: as in :func:`linear_attention`.

    Returns:
      ``(out [batch, heads, d_v] in q's dtype, the state after this token in f32)``.
    """
    normalize = validation.check_flag("normalize", normalize)
    validation.check_step(state, q, k, v)
    eps = validation.check_eps(eps)
    kv, k_sum = state
    qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
    kv = kv.astype(jnp.float32) + kf[..., :, None] * vf[..., None, :]
    k_sum = k_sum.astype(jnp.float32) + kf
    out = jnp.einsum("bhd,bhde->bhe", qf, kv, precision=lax.Precision.HIGHEST)
    if normalize:
        out = out / ((qf * k_sum).sum(-1) + eps)[..., None]
    return out.astype(q.dtype), LinearAttentionState(kv, k_sum)


# --- implementations -------------------------------------------------------------------------------------


@register("linear_attention", "xla", config_type=LinearAttentionConfig)
def _linear_attention_xla(q, k, v, *, causal, normalize, eps, config):
    return xla_linear_attention(q, k, v, causal=causal, normalize=normalize, eps=eps, config=config)


@register("linear_attention", "reference")
def _linear_attention_reference(q, k, v, *, causal, normalize, eps):
    check_reference_fits(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    return _reference_jit(q, k, v, causal=causal, normalize=normalize, eps=eps)


_reference_jit = jax.jit(reference, static_argnames=("causal", "normalize", "eps"))


def _pallas(implementation: str):
    def run(q, k, v, *, causal, normalize, eps, config):
        return _kernel.linear_attention(
            q, k, v, causal=causal, normalize=normalize, eps=eps, config=config, implementation=implementation
        )

    return run


# Not in the default order: the compiled kernels have not been run or measured on a GPU yet.
register("linear_attention", "pallas", platforms=("gpu",), default=False, config_type=LinearAttentionConfig)(
    _pallas("pallas")
)
register("linear_attention", "pallas_interpret", config_type=LinearAttentionConfig)(
    _pallas("pallas_interpret")
)
