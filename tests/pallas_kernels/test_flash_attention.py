"""The FlashAttention Pallas kernels (interpret mode on CPU, compiled on GPU/TPU) against the f32 reference.

Each case runs the forward kernel and both backward kernels (dq; dk/dv) through the public op
(``jaxflash.attention(..., implementation=..., config=FlashConfig(...))``) and compares out, lse, dq,
dk and dv with the reference's autodiff (:func:`jaxflash.testing.attention.check_case`, the body the
XLA-path tests and the GPU checks share). Tolerances: ``jaxflash.testing`` per input dtype (f32
1e-5, bf16 2e-2; gradients twice that). Tiles are small (mostly 16) so every axis has >= 3 tiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxflash.pallas_kernels.flash_attention import FlashConfig, default_config

import jaxflash
from jaxflash.testing import assert_close, kernel_implementation
from jaxflash.testing.attention import ALL_MASKS_CASE, AttentionCase, attention_fn, check_case

IMPL = kernel_implementation()

# Each case compiles three interpreted kernels (the fixed cost dominates), so features share cases.
# Lengths ~24 with 8-row tiles give >= 3 tiles per axis.
CASES = {
    "odd_len_7_head_dim_64": AttentionCase(q_len=7, kv_len=7, head_dim=64, tiles=(2, 2)),
    "gqa_4to1_causal_q_lt_kv_soft_cap": AttentionCase(
        q_len=20, kv_len=29, q_heads=8, kv_heads=2, causal=True, logits_soft_cap=3.0, tiles=(8, 8)
    ),
    "mqa_causal_q_gt_kv_window_empty_rows": AttentionCase(
        q_len=29, kv_len=20, q_heads=4, kv_heads=1, causal=True, window=(6, None), tiles=(8, 8)
    ),
    "segments_empty_row_kv_lengths": AttentionCase(
        batch=2, q_len=24, kv_len=26, segments=3, empty_rows=True, kv_lengths=(11, 26), tiles=(8, 8)
    ),
    "block_mask_head_dim_80": AttentionCase(
        q_len=24, kv_len=32, head_dim=80, block_mask=(3, 4), tiles=(8, 8)
    ),
    "bf16_causal_gqa": AttentionCase(
        q_len=24, kv_len=24, q_heads=4, kv_heads=2, causal=True, dtype="bfloat16", tiles=(8, 8)
    ),
}

SLOW_CASES = {
    "base": AttentionCase(q_len=24, kv_len=24, tiles=(8, 8)),
    "window_both_sides": AttentionCase(q_len=24, kv_len=32, window=(5, 2), tiles=(8, 8)),
    "segments": AttentionCase(batch=2, q_len=24, kv_len=24, segments=3, tiles=(8, 8)),
    "kv_lengths": AttentionCase(batch=2, q_len=17, kv_len=26, kv_lengths=(11, 26), tiles=(8, 8)),
    "len_539_causal": AttentionCase(q_len=539, kv_len=539, causal=True, tiles=(64, 64)),
    "len_1000_cross_mqa": AttentionCase(q_len=539, kv_len=1000, q_heads=4, kv_heads=1, tiles=(128, 64)),
    "head_dim_64": AttentionCase(head_dim=64),
    "head_dim_128_bf16": AttentionCase(head_dim=128, dtype="bfloat16", causal=True),
    "head_dim_256": AttentionCase(head_dim=256, window=(8, 8)),
    "all_masks": ALL_MASKS_CASE,
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(name, key):
    check_case(CASES[name], IMPL, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_kernel_matches_reference_slow(name, key):
    check_case(SLOW_CASES[name], IMPL, key)


def test_fully_masked_rows_are_zero_with_lse_minus_inf(key):
    # q_len > kv_len with causal: the first q_len - kv_len queries see no key.
    case = AttentionCase(q_len=24, kv_len=8, causal=True, tiles=(8, 8))
    q, k, v, kw = case.inputs(key)
    out, lse = attention_fn(case, IMPL, kw)(q, k, v)
    np.testing.assert_array_equal(np.asarray(out[:, :16]), 0.0)
    assert np.all(np.isneginf(np.asarray(lse[:, :16])))
    assert np.all(np.isfinite(np.asarray(lse[:, 16:])))


def test_jit_equals_eager_and_deterministic(key):
    case = AttentionCase(q_len=24, kv_len=24, causal=True, segments=2, tiles=(8, 8))
    q, k, v, kw = case.inputs(key)
    run = attention_fn(case, IMPL, kw)
    eager = run(q, k, v)
    jitted = jax.jit(run)(q, k, v)
    again = jax.jit(run)(q, k, v)
    assert_close(jitted, eager)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dropout_is_refused_so_the_dispatcher_falls_back(key):
    q, k, v, _ = AttentionCase().inputs(key)
    with pytest.raises(NotImplementedError, match="dropout"):
        jaxflash.attention(q, k, v, dropout_rate=0.1, dropout_key=jax.random.key(0), implementation=IMPL)


def test_config_reaches_the_kernel_and_is_validated(key):
    q, k, v, _ = AttentionCase(q_len=40, kv_len=40).inputs(key)
    ref = jaxflash.attention(q, k, v, causal=True, implementation="reference")
    for tiles in [(16, 16, 16, 16), (32, 16, 16, 32)]:
        out = jaxflash.attention(q, k, v, causal=True, implementation=IMPL, config=FlashConfig(*tiles))
        assert_close(out, ref)
    with pytest.raises(ValueError, match="FlashConfig.block_kv must be a power of two"):
        FlashConfig(block_kv=24)
    with pytest.raises(NotImplementedError, match="head_dim <= 256"):
        big = jnp.zeros((1, 8, 1, 264))
        jaxflash.attention(big, big, big, implementation=IMPL)


def test_default_config_is_triton_friendly():
    for q_len, kv_len, d in [(7, 7, 32), (1000, 539, 80), (16384, 16384, 256)]:
        cfg = default_config(q_len, kv_len, d)
        for tile in (cfg.block_q, cfg.block_kv, cfg.block_q_dkv, cfg.block_kv_dkv):
            assert tile >= 16 and tile & (tile - 1) == 0
