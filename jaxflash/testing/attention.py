"""The attention test body shared by the kernel tests, the XLA-path tests and ``make gpu-check``.

:class:`AttentionCase` describes one configuration (shapes, dtype, masks, tiles); :func:`check_case`
runs it through one implementation of the public op ``jaxflash.attention`` (tiles through ``config=``)
and compares the output, the logsumexp and the three gradients with the f32 reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxflash
from jaxflash.ops.attention import ChunkConfig, FlashConfig
from jaxflash.testing import assert_close, assert_grads_close, random_normal


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    """One correctness configuration.

    Attributes:
      batch, q_len, kv_len, q_heads, kv_heads, head_dim: shapes.
      dtype: input dtype name.
      causal, window, logits_soft_cap: as in ``jaxflash.attention``.
      segments: number of segments (random sorted ids for q and kv), 0 for none.
      kv_lengths: per-batch valid key counts, or None.
      block_mask: ``(q_blocks, kv_blocks)`` of a random block mask, or None.
      empty_rows: give the first query its own segment id that no key has (a fully masked row).
      tiles: ``(block_q, block_kv)`` of the kernel or chunk sizes of the XLA path; None: defaults.
    """

    batch: int = 1
    q_len: int = 48
    kv_len: int = 48
    q_heads: int = 2
    kv_heads: int = 2
    head_dim: int = 32
    dtype: str = "float32"
    causal: bool = False
    window: tuple[int | None, int | None] | None = None
    logits_soft_cap: float | None = None
    segments: int = 0
    kv_lengths: tuple[int, ...] | None = None
    block_mask: tuple[int, int] | None = None
    empty_rows: bool = False
    tiles: tuple[int, int] | None = (16, 16)

    def inputs(self, key: jax.Array) -> tuple[Any, Any, Any, dict[str, Any]]:
        """Fresh random ``q, k, v`` and the keyword arguments of ``jaxflash.attention``."""
        kq, kk, kv, ks1, ks2, kb = jax.random.split(key, 6)
        dtype = jnp.dtype(self.dtype)
        q = random_normal(kq, (self.batch, self.q_len, self.q_heads, self.head_dim), dtype)
        k = random_normal(kk, (self.batch, self.kv_len, self.kv_heads, self.head_dim), dtype)
        v = random_normal(kv, (self.batch, self.kv_len, self.kv_heads, self.head_dim), dtype)
        kw: dict[str, Any] = dict(
            causal=self.causal, window=self.window, logits_soft_cap=self.logits_soft_cap
        )
        if self.segments or self.empty_rows:
            n = max(self.segments, 1)
            q_seg = jnp.sort(jax.random.randint(ks1, (self.batch, self.q_len), 0, n), axis=1)
            kv_seg = jnp.sort(jax.random.randint(ks2, (self.batch, self.kv_len), 0, n), axis=1)
            if self.empty_rows:
                q_seg = q_seg.at[:, 0].set(-1)
            kw["segment_ids"] = (q_seg, kv_seg)
        if self.kv_lengths is not None:
            kw["kv_lengths"] = jnp.asarray(self.kv_lengths, jnp.int32)
        if self.block_mask is not None:
            bm = jax.random.bernoulli(kb, 0.6, self.block_mask)
            kw["block_mask"] = bm.at[-1, 0].set(False)  # at least one block removed
        return q, k, v, kw

    def config(self, implementation: str) -> Any:
        """The ``config=`` that sets this case's tiles on ``implementation`` (None: its defaults)."""
        if self.tiles is None or implementation == "reference":
            return None
        if implementation == "xla":
            return ChunkConfig(*self.tiles)
        bq, bk = self.tiles
        return FlashConfig(bq, bk, bq, bk)


# Every mask at once (causal with q_len != kv_len, a one-sided window, segments, kv_lengths, a block
# mask, soft-capping): the case both the kernel and the XLA-path tests run under `slow`.
ALL_MASKS_CASE = AttentionCase(
    batch=2,
    q_len=64,
    kv_len=80,
    causal=True,
    window=(20, None),
    segments=2,
    kv_lengths=(70, 33),
    block_mask=(4, 5),
    logits_soft_cap=4.0,
)


def attention_fn(case: AttentionCase, implementation: str, kw: dict[str, Any]):
    """``(q, k, v) -> (out, lse)`` of ``jaxflash.attention`` on ``implementation`` with the case's tiles."""
    config = case.config(implementation)

    def fn(q, k, v):
        return jaxflash.attention(
            q, k, v, return_lse=True, implementation=implementation, config=config, **kw
        )

    return fn


def check_case(
    case: AttentionCase, implementation: str, key: jax.Array, *, grads: bool = True, tol_scale: float = 1.0
) -> dict[str, float]:
    """Compares ``implementation`` with the f32 reference on ``case``: out, lse and dq, dk, dv (under
    random cotangents for both out and lse, so the lse term of the backward pass is checked too).

    Raises AssertionError on a mismatch; returns the largest absolute errors. Tolerances are those
    of ``jaxflash.testing`` for the input dtype (gradients twice that), scaled by ``tol_scale``.
    """
    kin, kcot = jax.random.split(key)
    q, k, v, kw = case.inputs(kin)
    reference = attention_fn(case, "reference", kw)

    def ref(q, k, v):
        f32 = jnp.float32
        return reference(q.astype(f32), k.astype(f32), v.astype(f32))

    # Jitted, so the reference and both backward passes compile once instead of dispatching op by op.
    fn, ref = jax.jit(attention_fn(case, implementation, kw)), jax.jit(ref)
    out, lse = fn(q, k, v)
    ref_out, ref_lse = ref(q, k, v)
    assert_close(out, ref_out, dtype=q.dtype, scale=tol_scale, err_msg="attention output")
    # lse is f32 whatever the inputs; its error follows the logits', i.e. the input dtype's.
    assert_close(lse, ref_lse, dtype=q.dtype, scale=tol_scale, err_msg="logsumexp")
    if not bool(jnp.all(jnp.isfinite(out))):
        raise AssertionError("non-finite attention output")
    errors = dict(out=max_abs_error(out, ref_out), lse=max_abs_error(lse, ref_lse))
    if grads:
        assert_grads_close(fn, ref, (q, k, v), key=kcot, dtype=q.dtype, scale=tol_scale)
    return errors


def max_abs_error(a: Any, b: Any) -> float:
    """The largest absolute difference, NaN and inf counted as 0 (they are compared separately)."""
    a = np.nan_to_num(np.asarray(a, np.float64))
    b = np.nan_to_num(np.asarray(b, np.float64))
    return float(np.max(np.abs(a - b)))
