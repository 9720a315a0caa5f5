"""``jaxflash.attention``: scaled dot-product attention, ``softmax(scale * q k^T + mask) v``, computed the
IO-aware way of FlashAttention (Dao et al. 2022, arXiv 2205.14135; FlashAttention-2, arXiv 2307.08691):
tiles, an online softmax and a backward pass that recomputes instead of storing the attention matrix.

Implementations (``implementation=``):

- ``"cudnn"``: cuDNN's fused attention through ``jax.nn.dot_product_attention`` (GPU), for the calls
  it serves: bf16/f16, as many kv heads as q heads, head_dim <= 128 and a multiple of 8, no mask but
  ``causal`` (with ``q_len == kv_len``), no soft cap, dropout or logsumexp. It measured faster than the
  Pallas kernel on an H200 (BENCHMARKS.md); every other call falls through.
- ``"pallas"``: the Pallas kernels of :mod:`jaxflash.pallas_kernels.flash_attention` (GPU/TPU);
  ``config=FlashConfig(...)`` sets their tiles.
- ``"pallas_interpret"``: the same kernels in the Pallas interpreter (tests, debugging).
- ``"xla"``: chunked online softmax in plain XLA with a recomputing ``custom_vjp``
  (:mod:`jaxflash.ops.attention.xla`); O(N) memory; the production path on CPU;
  ``config=ChunkConfig(...)`` sets its chunks.
- ``"reference"``: the plain f32 softmax, materialising the attention matrix (refused, with the
  estimate, when that would not fit in memory).

What the masks mean is in :mod:`jaxflash.ops.attention.spec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxflash.ops.attention.spec import (
    AttentionSpec,
    MaskArrays,
    check_reference_fits,
    dropout_seed,
    poison_nonfinite_keys,
    reference,
)
from jaxflash.ops.attention.validation import attention_spec
from jaxflash.ops.attention.xla import ChunkConfig, xla_attention
from jaxflash.ops.registry import dispatch, register
from jaxflash.pallas_kernels import flash_attention as fa
from jaxflash.pallas_kernels.flash_attention import FlashConfig

Window = int | tuple[int | None, int | None] | None
SegmentIds = Int[Array, "b t"] | tuple[Int[Array, "b tq"], Int[Array, "b tk"]] | None
Config = FlashConfig | ChunkConfig | Mapping[str, Any] | None


def attention(
    q: Float[Array, "b tq hq d"],
    k: Float[Array, "b tk hk d"],
    v: Float[Array, "b tk hk d"],
    *,
    causal: bool = False,
    window: Window = None,
    segment_ids: SegmentIds = None,
    kv_lengths: Int[Array, " b"] | None = None,
    block_mask: Bool[Array, "qb kb"] | None = None,
    logits_soft_cap: float | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    return_lse: bool = False,
    implementation: str | Sequence[str] | None = None,
    config: Config = None,
) -> Float[Array, "b tq hq d"] | tuple[Float[Array, "b tq hq d"], Float[Array, "b tq hq"]]:
    """Scaled dot-product attention, FlashAttention style.

    Args:
      q: queries ``[batch, q_len, q_heads, head_dim]``.
      k, v: keys and values ``[batch, kv_len, kv_heads, head_dim]``; ``q_heads`` must be a multiple
        of ``kv_heads`` (GQA; MQA when ``kv_heads == 1``): q head ``h`` reads kv head
        ``h // (q_heads // kv_heads)``. All three share one dtype (f32, bf16 or f16).
      causal: query ``i`` sees keys ``j <= i + offset``, the diagonal aligned bottom-right as in
        FlashAttention 2.1+: ``offset = kv_len - q_len``, per sequence ``kv_lengths[b] - q_len`` with
        ``kv_lengths``, and per packed sequence with segment ids (see ``segment_ids``).
      window: local attention ``(left, right)``: query ``i`` sees keys within ``left`` before and
        ``right`` after its diagonal ``i + offset``; an int ``w`` means ``(w, w)``, ``None`` on a side
        is unbounded. Combined with ``causal``, ``right`` is 0.
      segment_ids: int ``[batch, seq]`` shared by q and kv (needs ``q_len == kv_len``), or a pair
        ``(q_segment_ids [batch, q_len], kv_segment_ids [batch, kv_len])``: a query sees only the keys
        of its own segment (packed variable-length sequences). With ``causal`` or ``window`` each
        segment is aligned on its own, as FlashAttention's varlen API does: the last query of a segment
        sits on the diagonal of the segment's last valid key.
      kv_lengths: int ``[batch]`` in ``[0, kv_len]``: keys at positions ``>= kv_lengths[b]`` are padding
        (FlashAttention's ``cache_seqlens``); with ``causal`` the queries are the last ``q_len`` tokens
        of each sequence, so a chunked prefill never sees the future.
      block_mask: bool ``[q_blocks, kv_blocks]`` (block-sparse attention): block ``(r, c)`` covers
        queries ``[r*bq, (r+1)*bq)`` and keys ``[c*bk, (c+1)*bk)`` with ``bq = ceil(q_len / q_blocks)``
        and ``bk = ceil(kv_len / kv_blocks)``; False blocks are not computed.
      logits_soft_cap: ``cap``: logits become ``cap * tanh(logits / cap)`` before masking.
      scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.
      dropout_rate: attention-weight dropout probability (the xla and reference paths).
      dropout_key: PRNG key for dropout; required when ``dropout_rate > 0``.
      return_lse: also return the natural-log logsumexp of each query's logits, ``[batch, q_len,
        q_heads]`` f32; ``-inf`` for a query that sees no key (whose output is 0).
      implementation: ``"cudnn"``, ``"pallas"``, ``"pallas_interpret"``, ``"xla"``, ``"reference"``, a
        sequence to try in order, or None for the best available.
      config: tiles of the implementation that runs: a ``FlashConfig`` (pallas, pallas_interpret), a
        ``ChunkConfig`` (xla), or a mapping ``{implementation: config}``.

    Returns:
      ``out [batch, q_len, q_heads, head_dim]`` in q's dtype, and ``lse`` when ``return_lse``. A query
      that sees a key whose ``k`` or ``v`` holds NaN or inf returns NaN; keys it cannot see never
      affect it, whatever they hold.
    """
    spec, masks = attention_spec(
        q,
        k,
        v,
        causal=causal,
        window=window,
        segment_ids=segment_ids,
        kv_lengths=kv_lengths,
        block_mask=block_mask,
        logits_soft_cap=logits_soft_cap,
        scale=scale,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
        want_lse=bool(return_lse),
    )
    seed = dropout_seed(dropout_key) if spec.dropout_rate > 0.0 else None
    out, lse = dispatch("attention", implementation, q, k, v, spec, masks, seed, config=config)
    return (out, lse) if return_lse else out


# --- implementations -------------------------------------------------------------------------------------


def cudnn_unsupported_reason(
    q: jax.Array, k: jax.Array, spec: AttentionSpec, masks: MaskArrays
) -> str | None:
    """Why the cuDNN route does not take this call, or None. Deliberately only the configurations
    measured on the GPU (bf16 fwd+bwd, equal heads, head_dim 64 and 128, causal or not): the rest goes
    to the Pallas kernel, which serves every feature."""
    _, tq, hq, d = q.shape
    _, tk, hk, _ = k.shape
    if q.dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN attention takes bf16/f16, got {q.dtype}"
    if d > 128 or d % 8:
        return f"cuDNN attention here takes head_dim <= 128 and a multiple of 8, got {d}"
    if hq != hk:
        return "GQA/MQA is not routed to cuDNN (not measured here)"
    if spec.causal and tq != tk:
        return "cuDNN's causal mask is top-left aligned; q_len != kv_len needs the bottom-right one"
    if spec.want_lse:
        return "cuDNN returns the logsumexp in the input dtype; the logsumexp is wanted in f32"
    if spec.window is not None or spec.logits_soft_cap is not None or spec.dropout_rate > 0.0:
        return "window, soft cap and dropout are not routed to cuDNN"
    if any(m is not None for m in (masks.q_segment_ids, masks.kv_lengths, masks.block_mask)):
        return "segment ids, kv_lengths and block masks are not routed to cuDNN"
    return None


@register("attention", "cudnn")
def _attention_cudnn(q, k, v, spec, masks, seed):
    reason = cudnn_unsupported_reason(q, k, spec, masks)
    if reason:
        raise NotImplementedError(reason)
    # cuDNN's masking is opaque, so non-finite keys are zeroed before it and the queries that see one
    # (all of them, or those at or after it when causal) are set to NaN after it.
    bad = ~(jnp.isfinite(k).all(-1) & jnp.isfinite(v).all(-1))  # [b, tk, hk]
    k, v = (jnp.where(bad[..., None], jnp.zeros((), x.dtype), x) for x in (k, v))
    try:  # JAX checks what cuDNN supports while tracing and raises; that is a refusal, not bad input
        out = jax.nn.dot_product_attention(
            q, k, v, scale=spec.scale, is_causal=spec.causal, implementation="cudnn"
        )
    except (NotImplementedError, ValueError, RuntimeError) as e:
        raise NotImplementedError(f"jax.nn.dot_product_attention(implementation='cudnn') refused: {e}") from e
    seen = (
        jnp.cumsum(bad, axis=1) > 0 if spec.causal else jnp.broadcast_to(bad.any(1, keepdims=True), bad.shape)
    )
    out = jnp.where(seen[..., None], jnp.nan, out).astype(out.dtype)
    return out, None  # want_lse is False: attention() drops it


def _pallas(implementation: str):
    def run(q, k, v, spec, masks, seed, *, config):
        del seed  # the kernels refuse dropout
        k, v = poison_nonfinite_keys(k, v)
        return fa.flash_attention(q, k, v, spec, masks, config=config, implementation=implementation)

    return run


register("attention", "pallas", config_type=FlashConfig)(_pallas("pallas"))
register("attention", "pallas_interpret", config_type=FlashConfig)(_pallas("pallas_interpret"))


@register("attention", "xla", config_type=ChunkConfig)
def _attention_xla(q, k, v, spec, masks, seed, *, config):
    return xla_attention(q, k, v, spec, masks, seed, config)


@register("attention", "reference")
def _attention_reference(q, k, v, spec, masks, seed):
    check_reference_fits(spec, q.shape[0], q.shape[2])
    return _reference_jit(q, k, v, spec, masks, seed)


_reference_jit = jax.jit(reference, static_argnums=(3,))
