"""``jaxflash.attention`` and its chunked XLA path, Hydragen shared-prefix attention and decode attention.

The XLA-path cases use the same body as the kernel tests (:func:`jaxflash.bench.attention.check_case`):
out, lse, dq, dk, dv against the f32 reference, with chunks small enough for >= 3 per axis.
Tolerances: ``jaxflash.testing`` per input dtype (f32 1e-5, bf16 2e-2; gradients twice that).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflash
from jaxflash.bench.attention import ALL_MASKS_CASE, AttentionCase, check_case
from jaxflash.ops.attention import combine_by_lse
from jaxflash.testing import assert_close, assert_grads_close, random_normal

# Each case compiles the chunked forward and backward (the fixed cost dominates), so features share cases.
XLA_CASES = {
    "odd_len_7_head_dim_64": AttentionCase(q_len=7, kv_len=7, head_dim=64, tiles=(2, 2)),
    "gqa_4to1_causal_q_lt_kv_soft_cap": AttentionCase(
        q_len=40, kv_len=56, q_heads=8, kv_heads=2, causal=True, logits_soft_cap=3.0
    ),
    "mqa_causal_q_gt_kv_window_empty_rows": AttentionCase(
        q_len=56, kv_len=40, q_heads=4, kv_heads=1, causal=True, window=(10, None)
    ),
    "window_both_sides": AttentionCase(q_len=48, kv_len=64, window=(9, 4)),
    "segments_empty_row_kv_lengths": AttentionCase(
        batch=2, q_len=48, kv_len=50, segments=3, empty_rows=True, kv_lengths=(21, 50)
    ),
    "block_mask_head_dim_80": AttentionCase(q_len=48, kv_len=64, head_dim=80, block_mask=(3, 4)),
    "block_mask_odd_blocks": AttentionCase(q_len=7, kv_len=11, block_mask=(3, 4), tiles=(2, 3)),
    "bf16_causal_gqa": AttentionCase(q_heads=4, kv_heads=2, causal=True, dtype="bfloat16"),
}

SLOW_XLA_CASES = {
    "base": AttentionCase(),
    "f16_segments": AttentionCase(batch=2, segments=2, dtype="float16"),
    "head_dim_128": AttentionCase(head_dim=128, causal=True),
    "head_dim_256": AttentionCase(head_dim=256, window=(8, 8)),
    "all_masks": ALL_MASKS_CASE,
    "len_539_causal": AttentionCase(q_len=539, kv_len=539, causal=True, tiles=(128, 64)),
    "len_1000_cross_gqa": AttentionCase(
        q_len=1000, kv_len=539, q_heads=8, kv_heads=2, causal=True, tiles=(256, 128)
    ),
    "default_chunks_1000": AttentionCase(
        q_len=1000, kv_len=1000, causal=True, window=(300, None), tiles=None
    ),
}


@pytest.mark.parametrize("name", list(XLA_CASES))
def test_xla_path_matches_reference(name, key):
    check_case(XLA_CASES[name], "xla", key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_XLA_CASES))
def test_xla_path_matches_reference_slow(name, key):
    check_case(SLOW_XLA_CASES[name], "xla", key)


def _qkv(key, b=2, tq=24, tk=24, hq=4, hk=2, d=32, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(key, 3)
    return (
        random_normal(kq, (b, tq, hq, d), dtype),
        random_normal(kk, (b, tk, hk, d), dtype),
        random_normal(kv, (b, tk, hk, d), dtype),
    )


# --- the public API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "implementation", [None, "xla", pytest.param("pallas_interpret", marks=pytest.mark.slow)]
)
def test_public_api_matches_reference(implementation, key):
    q, k, v = _qkv(key, tq=20, tk=28)
    kw = dict(causal=True, window=(12, None), return_lse=True)
    out, lse = jaxflash.attention(q, k, v, implementation=implementation, **kw)
    ref_out, ref_lse = jaxflash.attention(q, k, v, implementation="reference", **kw)
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)


def test_jit_equals_eager_and_deterministic(key):
    q, k, v = _qkv(key)
    seg = jnp.sort(jax.random.randint(key, (2, 24), 0, 3), axis=1)
    f = lambda q, k, v: jaxflash.attention(q, k, v, causal=True, segment_ids=seg, implementation="xla")
    eager = f(q, k, v)
    jitted = jax.jit(f)(q, k, v)
    assert_close(jitted, eager)
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(q, k, v)), np.asarray(jitted))
    g1 = jax.grad(lambda q: f(q, k, v).sum())(q)
    g2 = jax.grad(lambda q: f(q, k, v).sum())(q)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))


def test_scale_and_single_segment_array(key):
    q, k, v = _qkv(key)
    seg = jnp.sort(jax.random.randint(key, (2, 24), 0, 2), axis=1)
    out = jaxflash.attention(q, k, v, segment_ids=seg, scale=0.3, implementation="xla")
    ref = jaxflash.attention(q, k, v, segment_ids=(seg, seg), scale=0.3, implementation="reference")
    assert_close(out, ref)


def _dropout_fn(impl):
    kw = dict(causal=True, dropout_rate=0.25, dropout_key=jax.random.key(7))
    return lambda q, k, v: jaxflash.attention(q, k, v, implementation=impl, **kw)


def test_dropout_xla_equals_reference_and_rate(key):
    q, k, v = _qkv(key, b=1, tq=20, tk=20)
    # The keep-mask is a hash of the global indices, so chunked and dense paths drop the same weights.
    assert_close(_dropout_fn("xla")(q, k, v), _dropout_fn("reference")(q, k, v))
    # With v = identity rows the output exposes the kept weights; about a quarter are dropped.
    eye = jnp.broadcast_to(jnp.eye(40)[None, :, None, :], (1, 40, 1, 40))
    qq = jnp.zeros((1, 40, 1, 40))
    dk = jax.random.key(7)
    weights = jaxflash.attention(qq, qq, eye, dropout_rate=0.25, dropout_key=dk, implementation="xla")
    dropped = float(jnp.mean(weights == 0))
    assert abs(dropped - 0.25) < 0.03
    # Another key draws another mask.
    other = jaxflash.attention(
        qq, qq, eye, dropout_rate=0.25, dropout_key=jax.random.key(8), implementation="xla"
    )
    assert not np.array_equal(np.asarray(other), np.asarray(weights))


@pytest.mark.slow
def test_dropout_gradients(key):
    q, k, v = _qkv(key, b=1, tq=20, tk=20)
    assert_grads_close(_dropout_fn("xla"), _dropout_fn("reference"), (q, k, v), key=key)


def test_dropout_falls_back_from_the_kernel(key):
    q, k, v = _qkv(key)
    kw = dict(dropout_rate=0.1, dropout_key=jax.random.key(1))
    out = jaxflash.attention(q, k, v, implementation=("pallas_interpret", "xla"), **kw)
    assert_close(out, jaxflash.attention(q, k, v, implementation="reference", **kw))
    with pytest.raises(NotImplementedError, match="dropout"):
        jaxflash.attention(q, k, v, implementation="pallas_interpret", **kw)


def test_causal_skips_half_the_work():
    """The causal XLA path visits only the lower triangle of chunks: about half the work."""
    from jaxflash.pallas_kernels.flash_attention import AttentionSpec, MaskArrays, live_span, tile_liveness

    from jaxflash.ops.attention_xla import ChunkConfig, _sizes

    spec = AttentionSpec(q_len=2048, kv_len=2048, scale=1.0, causal=True)
    cq, ck, nq, nk = _sizes(spec, ChunkConfig(256, 256))
    lo, hi = live_span(tile_liveness(spec, MaskArrays(), cq, ck, nq, nk).any(0))
    tiles = int((hi - lo).sum())
    assert tiles == nq * (nq + 1) // 2  # the lower triangle of 8 x 8 chunks: 36 of 64


BAD_INPUTS = [
    (dict(q=(2, 8, 4)), "rank 4"),
    (dict(k=(2, 8, 2, 16), v=(2, 9, 2, 16)), "same shape"),
    (dict(k=(3, 8, 2, 16), v=(3, 8, 2, 16)), "batch=2"),
    (dict(k=(2, 8, 3, 16), v=(2, 8, 3, 16)), "multiple of kv_heads"),
    (dict(k=(2, 8, 2, 8), v=(2, 8, 2, 8)), "head_dim=16"),
    (dict(kw=dict(block_mask=np.ones((5, 5), bool))), "block_mask"),
    (dict(kw=dict(block_mask=np.ones((8,), bool))), "block_mask"),
    (dict(kw=dict(window=(-1, 2))), "window"),
    (dict(kw=dict(window=(2, -3))), "window"),
    (dict(kw=dict(kv_lengths=np.array([3, 4, 5]))), "kv_lengths"),
    (dict(kw=dict(segment_ids=np.zeros((2, 9), np.int32))), "q_len == kv_len|segment_ids"),
    (dict(kw=dict(segment_ids=(np.zeros((2, 8), np.int32), np.zeros((2, 7), np.int32)))), "kv_segment_ids"),
    (dict(kw=dict(dropout_rate=0.1)), "dropout_key"),
    (dict(kw=dict(dropout_rate=1.5, dropout_key=jax.random.key(0))), "dropout_rate"),
    (dict(kw=dict(logits_soft_cap=-1.0)), "logits_soft_cap"),
    (dict(dtype_k=jnp.bfloat16), "dtype"),
]


@pytest.mark.parametrize("bad,match", BAD_INPUTS)
def test_bad_input_raises_value_error(bad, match):
    q = jnp.zeros(bad.get("q", (2, 8, 4, 16)))
    k = jnp.zeros(bad.get("k", (2, 8, 2, 16)), bad.get("dtype_k", jnp.float32))
    v = jnp.zeros(bad.get("v", (2, 8, 2, 16)), bad.get("dtype_k", jnp.float32))
    with pytest.raises(ValueError, match=match):
        jaxflash.attention(q, k, v, **bad.get("kw", {}))


# --- Hydragen ------------------------------------------------------------------------------------------


def _concat_reference(q, levels, suffix_k, suffix_v, suffix_lengths=None, causal=True):
    """Attention over each sequence's full KV (prefix levels then suffix), the naive way."""
    b = q.shape[0]
    ks, vs = [], []
    for pk, pv in levels:
        rep = b // pk.shape[0]
        ks.append(jnp.repeat(pk, rep, axis=0))
        vs.append(jnp.repeat(pv, rep, axis=0))
    prefix_len = sum(x.shape[1] for x in ks)
    k = jnp.concatenate([*ks, suffix_k], axis=1)
    v = jnp.concatenate([*vs, suffix_v], axis=1)
    lengths = None if suffix_lengths is None else prefix_len + jnp.asarray(suffix_lengths)
    tq, tk = q.shape[1], k.shape[1]
    # Query t of sequence b sits at key position lengths[b] - tq + t (end of its valid KV).
    end = jnp.full((b,), tk) if lengths is None else lengths
    q_pos = end[:, None] - tq + jnp.arange(tq)[None, :]
    kv_pos = jnp.arange(tk)
    visible = kv_pos[None, None, :] < end[:, None, None]
    if causal:
        visible = visible & (kv_pos[None, None, :] <= q_pos[:, :, None])
    s = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)) / np.sqrt(
        q.shape[-1]
    )
    s = jnp.where(visible[:, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p, jnp.repeat(v, q.shape[2] // v.shape[2], axis=2))


@pytest.mark.parametrize(
    "levels,tq,hk,suffix_len",
    [
        ([(1, 12)], 3, 2, 5),  # one shared prefix, GQA 2:1
        ([(1, 16), (2, 7)], 1, 1, 4),  # two levels, MQA decode
        ([(1, 9), (2, 6), (4, 5)], 2, 4, 6),  # three levels (a tree)
    ],
)
def test_shared_prefix_matches_concatenated_kv(levels, tq, hk, suffix_len, key):
    b, hq, d = 4, 4, 16
    keys = jax.random.split(key, 2 * len(levels) + 3)
    q = random_normal(keys[0], (b, tq, hq, d))
    prefixes = [
        (random_normal(keys[1 + 2 * i], (bp, lp, hk, d)), random_normal(keys[2 + 2 * i], (bp, lp, hk, d)))
        for i, (bp, lp) in enumerate(levels)
    ]
    sk = random_normal(keys[-2], (b, suffix_len, hk, d))
    sv = random_normal(keys[-1], (b, suffix_len, hk, d))
    out = jaxflash.shared_prefix_attention(q, prefixes, sk, sv, implementation="xla")
    assert_close(out, _concat_reference(q, prefixes, sk, sv))


@pytest.mark.parametrize("tq", [1, 3])
def test_shared_prefix_padded_suffixes(tq, key):
    b, hq, hk, d = 3, 4, 2, 16
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    q = random_normal(k1, (b, tq, hq, d))
    prefix = (random_normal(k2, (1, 10, hk, d)), random_normal(k3, (1, 10, hk, d)))
    sk = random_normal(k4, (b, 8, hk, d))
    sv = random_normal(k5, (b, 8, hk, d))
    lengths = jnp.array([3, 8, 5])
    out, lse = jaxflash.shared_prefix_attention(
        q, [prefix], sk, sv, suffix_lengths=lengths, return_lse=True, implementation="xla"
    )
    assert_close(out, _concat_reference(q, [prefix], sk, sv, suffix_lengths=lengths))
    assert np.all(np.isfinite(np.asarray(lse)))


def test_shared_prefix_with_an_empty_part(key):
    b, tq, hq, hk, d = 2, 2, 2, 2, 16
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    q = random_normal(k1, (b, tq, hq, d))
    empty = (jnp.zeros((1, 0, hk, d)), jnp.zeros((1, 0, hk, d)))
    prefix = (random_normal(k2, (2, 6, hk, d)), random_normal(k3, (2, 6, hk, d)))
    sk, sv = random_normal(k4, (b, 4, hk, d)), random_normal(k5, (b, 4, hk, d))
    out = jaxflash.shared_prefix_attention(q, [empty, prefix], sk, sv, implementation="xla")
    assert_close(out, _concat_reference(q, [prefix], sk, sv))
    # No suffix at all: prefix-only attention.
    out = jaxflash.shared_prefix_attention(q, [prefix], None, None, implementation="xla")
    ref = jaxflash.attention(
        q, jnp.repeat(prefix[0], 1, 0), jnp.repeat(prefix[1], 1, 0), implementation="reference"
    )
    assert_close(out, ref)
    # A prefix whose valid length is 0 (lse = -inf) weighs nothing in the combine.
    out = jaxflash.shared_prefix_attention(
        q, [prefix], sk, sv, prefix_lengths=[jnp.array([0, 0])], implementation="xla"
    )
    assert_close(out, jaxflash.attention(q, sk, sv, causal=True, implementation="reference"))


def test_combine_by_lse_is_exact_and_handles_empty_parts(key):
    q, k, v = _qkv(key, tq=6, tk=20)
    full, full_lse = jaxflash.attention(q, k, v, return_lse=True, implementation="reference")
    a = jaxflash.attention(q, k[:, :7], v[:, :7], return_lse=True, implementation="xla")
    b = jaxflash.attention(q, k[:, 7:], v[:, 7:], return_lse=True, implementation="xla")
    out, lse = combine_by_lse([a[0], b[0]], [a[1], b[1]])
    assert_close(out, full)
    assert_close(lse, full_lse)
    out, lse = combine_by_lse([a[0], jnp.zeros_like(a[0])], [jnp.full_like(a[1], -jnp.inf)] * 2)
    assert not np.any(np.isnan(np.asarray(out))) and np.all(np.isneginf(np.asarray(lse)))


# --- decode --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 3])
def test_decode_attention_matches_reference(window, key):
    b, s, hq, hk, d = 3, 19, 8, 2, 32
    k1, k2, k3 = jax.random.split(key, 3)
    q = random_normal(k1, (b, hq, d))
    kc, vc = random_normal(k2, (b, s, hk, d)), random_normal(k3, (b, s, hk, d))
    lengths = jnp.array([1, 19, 7])
    out = jaxflash.decode_attention(q, kc, vc, lengths, window=window, implementation="xla")
    assert out.shape == (b, hq, d)
    for i in range(b):
        n = int(lengths[i])
        start = 0 if window is None else max(0, n - 1 - window)
        ref = jaxflash.attention(
            q[i : i + 1, None], kc[i : i + 1, start:n], vc[i : i + 1, start:n], implementation="reference"
        )
        assert_close(out[i], ref[0, 0])


# --- the cuDNN route (GPU only; here: which calls it takes, and that CPU dispatch skips it) -------------


def _cudnn_reason(q_shape, k_shape, dtype=jnp.bfloat16, **kw):
    from jaxflash.pallas_kernels.flash_attention import AttentionSpec, MaskArrays

    from jaxflash.ops.attention import cudnn_unsupported_reason

    spec = AttentionSpec(q_len=q_shape[1], kv_len=k_shape[1], scale=0.125, **{"want_lse": False, **kw})
    q, k = jnp.zeros(q_shape, dtype), jnp.zeros(k_shape, dtype)
    return cudnn_unsupported_reason(q, k, spec, MaskArrays())


def test_cudnn_route_takes_only_the_measured_configurations():
    plain = (2, 128, 4, 64)
    assert _cudnn_reason(plain, plain) is None
    assert _cudnn_reason(plain, plain, causal=True) is None
    assert _cudnn_reason((2, 128, 4, 128), (2, 128, 4, 128), dtype=jnp.float16) is None
    assert "bf16/f16" in _cudnn_reason(plain, plain, dtype=jnp.float32)
    assert "head_dim" in _cudnn_reason((2, 128, 4, 80 + 4), (2, 128, 4, 84))
    assert "head_dim" in _cudnn_reason((2, 128, 4, 256), (2, 128, 4, 256))
    assert "GQA" in _cudnn_reason(plain, (2, 128, 2, 64))
    assert "top-left" in _cudnn_reason((2, 64, 4, 64), (2, 128, 4, 64), causal=True)
    assert _cudnn_reason((2, 64, 4, 64), (2, 128, 4, 64)) is None  # not causal: lengths may differ
    assert "logsumexp" in _cudnn_reason(plain, plain, want_lse=True)
    assert "window" in _cudnn_reason(plain, plain, window=(8, 0))
    assert "window" in _cudnn_reason(plain, plain, logits_soft_cap=30.0)
    from jaxflash.pallas_kernels.flash_attention import AttentionSpec, MaskArrays

    from jaxflash.ops.attention import cudnn_unsupported_reason

    spec = AttentionSpec(q_len=128, kv_len=128, scale=0.125, want_lse=False)
    q = jnp.zeros(plain, jnp.bfloat16)
    padded = MaskArrays(kv_lengths=jnp.full((2,), 100, jnp.int32))
    assert "kv_lengths" in cudnn_unsupported_reason(q, q, spec, padded)


def test_cudnn_route_is_gpu_only_and_skipped_on_cpu(key):
    q = random_normal(key, (1, 32, 2, 64)).astype(jnp.bfloat16)
    assert jaxflash.registered("attention")["attention"][0] == "cudnn"
    assert "cudnn" not in jaxflash.supported("attention", "cpu")["attention"]
    with pytest.raises(NotImplementedError, match=r"runs on \['gpu'\]"):
        jaxflash.attention(q, q, q, implementation="cudnn")
    out = jaxflash.attention(q, q, q, causal=True)  # the default order falls through to xla here
    assert_close(out, jaxflash.attention(q, q, q, causal=True, implementation="reference"))
