"""``jaxflash.attention`` and its chunked XLA path, Hydragen shared-prefix attention and decode attention.

The XLA-path cases use the same body as the kernel tests (:func:`jaxflash.testing.attention.check_case`):
out, lse, dq, dk, dv against the f32 reference, with chunks small enough for >= 3 per axis.
Tolerances: ``jaxflash.testing`` per input dtype (f32 1e-5, bf16 2e-2; gradients twice that).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflash
from jaxflash.ops.attention import (
    AttentionSpec,
    ChunkConfig,
    FlashConfig,
    MaskArrays,
    combine_by_lse,
    cudnn_unsupported_reason,
)
from jaxflash.testing import assert_close, assert_grads_close, kernel_implementation, random_normal
from jaxflash.testing.attention import ALL_MASKS_CASE, AttentionCase, check_case
from jaxflash.utils import true_span

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
    spec = AttentionSpec(q_len=2048, kv_len=2048, scale=1.0, causal=True)
    lo, hi = true_span(spec.tile_liveness(MaskArrays(), 256, 256, 8, 8).any(0))
    assert int((hi - lo).sum()) == 8 * 9 // 2  # the lower triangle of 8 x 8 chunks: 36 of 64


@pytest.mark.parametrize(
    "spec_kw",
    [dict(causal=True), dict(window=(3, 5)), dict(causal=True, window=(11, None)), dict(window=(None, 0))],
)
@pytest.mark.parametrize("lens", [(37, 45), (45, 37), (40, 40)])
def test_tile_liveness_is_exact_for_band_masks(spec_kw, lens):
    """A tile is live iff some entry of it is visible: skipping dead tiles never drops work."""
    tq, tk = lens
    spec = AttentionSpec(q_len=tq, kv_len=tk, scale=1.0, **spec_kw)
    t = 8
    nq, nk = -(-tq // t), -(-tk // t)
    live = np.asarray(spec.tile_liveness(MaskArrays(), t, t, nq, nk))[0]
    dense = np.array(spec.element_mask(jnp.arange(nq * t)[:, None], jnp.arange(nk * t)[None, :]))
    dense[tq:] = False
    expected = dense.reshape(nq, t, nk, t).any(axis=(1, 3))
    np.testing.assert_array_equal(live, expected)
    if spec.causal and tq == tk:
        assert live.sum() < live.size * 0.7  # causal skips about half the tiles


def test_tile_liveness_with_per_sequence_diagonals_covers_every_visible_entry():
    """With kv_lengths the diagonal moves per sequence; no tile holding a visible entry is skipped."""
    spec = AttentionSpec(q_len=20, kv_len=45, scale=1.0, causal=True, window=(6, None))
    lengths = jnp.array([45, 23, 7])
    masks = MaskArrays(kv_lengths=lengths, offsets=jnp.broadcast_to((lengths - 20)[:, None], (3, 20)))
    t = 8
    live = np.asarray(spec.tile_liveness(masks, t, t, 3, 6))
    for b, n in enumerate(np.asarray(lengths)):
        q_pos, kv_pos = np.arange(24)[:, None], np.arange(48)[None, :]
        rel = kv_pos - q_pos - (n - 20)
        dense = (rel <= 0) & (rel >= -6) & (kv_pos < n) & (q_pos < 20)
        visible = dense.reshape(3, t, 6, t).any(axis=(1, 3))
        assert not np.any(visible & ~live[b])
        np.testing.assert_array_equal(live[b], visible)  # exact for a per-sequence diagonal


BAD_INPUTS = [
    (dict(q=(2, 8, 4)), ValueError, "q must have rank 4"),
    (dict(k=(2, 8, 2, 16), v=(2, 9, 2, 16)), ValueError, "k and v must have the same shape"),
    (dict(k=(3, 8, 2, 16), v=(3, 8, 2, 16)), ValueError, "k must have shape.*batch=2"),
    (dict(k=(2, 8, 3, 16), v=(2, 8, 3, 16)), ValueError, "multiple of kv_heads"),
    (dict(k=(2, 8, 0, 16), v=(2, 8, 0, 16)), ValueError, "non-empty"),
    (dict(k=(2, 8, 2, 8), v=(2, 8, 2, 8)), ValueError, "k must have shape.*head_dim=16"),
    (dict(kw=dict(block_mask=np.ones((5, 5), bool))), ValueError, "block_mask"),
    (dict(kw=dict(block_mask=np.ones((8,), bool))), ValueError, "block_mask"),
    (dict(kw=dict(window=(-1, 2))), ValueError, "window.*left"),
    (dict(kw=dict(window=(2, -3))), ValueError, "window.*right"),
    (dict(kw=dict(window=2.5)), TypeError, "window"),
    (dict(kw=dict(window=(1, 2, 3))), ValueError, "window"),
    (dict(kw=dict(window=(1.5, None))), ValueError, "window.*left"),
    (dict(kw=dict(kv_lengths=np.array([3, 4, 5]))), ValueError, "kv_lengths"),
    (dict(kw=dict(kv_lengths=np.array([3, -1]))), ValueError, "kv_lengths must lie in"),
    (dict(kw=dict(kv_lengths=np.array([3, 9]))), ValueError, "kv_lengths must lie in"),
    (dict(kw=dict(kv_lengths=np.array([3.0, 4.0]))), ValueError, "kv_lengths"),
    (dict(kw=dict(segment_ids=np.zeros((2, 9), np.int32))), ValueError, "q_len == kv_len|segment_ids"),
    (
        dict(kw=dict(segment_ids=(np.zeros((2, 8), np.int32), np.zeros((2, 7), np.int32)))),
        ValueError,
        "kv_segment_ids",
    ),
    (dict(kw=dict(dropout_rate=0.1)), ValueError, "dropout_key"),
    (dict(kw=dict(dropout_rate=1.5, dropout_key=jax.random.key(0))), ValueError, "dropout_rate"),
    (dict(kw=dict(dropout_rate=float("nan"), dropout_key=jax.random.key(0))), ValueError, "dropout_rate"),
    (dict(kw=dict(dropout_rate=0.1, dropout_key=3)), TypeError, "dropout_key"),
    (dict(kw=dict(logits_soft_cap=-1.0)), ValueError, "logits_soft_cap"),
    (dict(kw=dict(logits_soft_cap=float("nan"))), ValueError, "logits_soft_cap"),
    (dict(kw=dict(scale="0.5")), TypeError, "scale"),
    (dict(kw=dict(scale=float("nan"))), ValueError, "scale"),
    (dict(kw=dict(causal="yes")), TypeError, "causal"),
    (dict(dtype_k=jnp.bfloat16), ValueError, "dtype"),
    (dict(q_list=True), TypeError, "q must be a jax or numpy array"),
]


@pytest.mark.parametrize("bad,error,match", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(bad, error, match):
    q = jnp.zeros(bad.get("q", (2, 8, 4, 16)))
    k = jnp.zeros(bad.get("k", (2, 8, 2, 16)), bad.get("dtype_k", jnp.float32))
    v = jnp.zeros(bad.get("v", (2, 8, 2, 16)), bad.get("dtype_k", jnp.float32))
    if bad.get("q_list"):
        q = np.zeros((2, 8, 4, 16)).tolist()
    with pytest.raises(error, match=match):
        jaxflash.attention(q, k, v, **bad.get("kw", {}))


def test_value_checks_under_jit_are_skipped_or_checkified():
    """Under jit kv_lengths' values are unknown while tracing: the check runs only as a checkify check."""
    from jax.experimental import checkify

    from jaxflash.utils import value_checks

    q = jnp.zeros((2, 8, 2, 16))

    def f(q, lengths):
        return jaxflash.attention(q, q, q, kv_lengths=lengths, implementation="xla")

    jax.jit(f)(q, jnp.array([3, -1]))  # no error while tracing
    with value_checks():  # a fresh function: a function traced before keeps its trace
        err, _ = checkify.checkify(jax.jit(lambda q, n: f(q, n)))(q, jnp.array([3, -1]))
    with pytest.raises(checkify.JaxRuntimeError, match="kv_lengths must lie in"):
        err.throw()


def test_reference_refuses_sizes_that_cannot_fit_with_the_estimate():
    big = jax.ShapeDtypeStruct((8, 65536, 16, 64), jnp.float32)
    f = lambda q, k, v: jaxflash.attention(q, k, v, implementation="reference")
    with pytest.raises(NotImplementedError, match=r"reference materialises.*needs ~[0-9.]+ TiB"):
        jax.eval_shape(f, big, big, big)
    # The default order never picks it for such a size: the chunked path serves it.
    assert jax.eval_shape(lambda q, k, v: jaxflash.attention(q, k, v), big, big, big).shape == big.shape


# --- configs through the public op ---------------------------------------------------------------------


def test_config_is_forwarded_to_the_implementation_that_runs(key):
    q, k, v = _qkv(key, tq=40, tk=40)
    ref = jaxflash.attention(q, k, v, causal=True, implementation="reference")
    for config in (ChunkConfig(8, 16), ChunkConfig(40, 7, unmasked_full_tiles=False)):
        assert_close(jaxflash.attention(q, k, v, causal=True, implementation="xla", config=config), ref)
    by_name = {"xla": ChunkConfig(16, 16), "pallas_interpret": FlashConfig(16, 16, 16, 16)}
    out = jaxflash.attention(q, k, v, causal=True, implementation=("xla",), config=by_name)
    assert_close(out, ref)


def test_a_config_of_another_implementation_is_refused_clearly(key):
    q, k, v = _qkv(key)
    with pytest.raises(NotImplementedError, match="'xla' takes a ChunkConfig; config=FlashConfig"):
        jaxflash.attention(q, k, v, implementation="xla", config=FlashConfig())
    with pytest.raises(NotImplementedError, match="'reference' takes no config"):
        jaxflash.attention(q, k, v, implementation="reference", config=ChunkConfig())
    with pytest.raises(TypeError, match="not a config of 'attention'.*ChunkConfig"):
        jaxflash.attention(q, k, v, config={"chunk_q": 8}.items())
    with pytest.raises(TypeError, match=r"config\['reference'\]"):
        jaxflash.attention(q, k, v, config={"reference": ChunkConfig()})
    with pytest.raises(ValueError, match="ChunkConfig.chunk_q must be a positive int"):
        ChunkConfig(chunk_q=0)


# --- masked positions never reach visible outputs ------------------------------------------------------

MASKING_IMPLEMENTATIONS = ["reference", "xla", pytest.param(kernel_implementation(), marks=pytest.mark.slow)]


@pytest.mark.parametrize("implementation", MASKING_IMPLEMENTATIONS)
@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("value", [jnp.nan, jnp.inf])
def test_a_causally_hidden_non_finite_key_never_reaches_earlier_queries(implementation, where, value, key):
    q, k, v = _qkv(key, b=1, tq=24, tk=24)
    bad = {"k": k, "v": v}
    bad[where] = bad[where].at[:, 15].set(value)
    config = ChunkConfig(8, 8) if implementation == "xla" else None
    run = lambda q, k, v: jaxflash.attention(
        q, k, v, causal=True, return_lse=True, implementation=implementation, config=config
    )
    out, lse = run(q, bad["k"], bad["v"])
    clean_out, clean_lse = jaxflash.attention(
        q, k, v, causal=True, return_lse=True, implementation="reference"
    )
    assert_close(out[:, :15], clean_out[:, :15])
    assert_close(lse[:, :15], clean_lse[:, :15])
    assert np.all(np.isnan(np.asarray(out[:, 15:]))) and np.all(np.isnan(np.asarray(lse[:, 15:])))
    # The queries that cannot see the key get gradients as if it were not there.
    loss = lambda q: run(q, bad["k"], bad["v"])[0][:, :15].sum()
    clean = jax.grad(lambda q: run(q, k, v)[0][:, :15].sum())(q)
    assert_close(jax.grad(loss)(q)[:, :15], clean[:, :15])


@pytest.mark.parametrize("implementation", MASKING_IMPLEMENTATIONS)
def test_padding_beyond_kv_lengths_never_reaches_any_output(implementation, key):
    q, k, v = _qkv(key, b=2, tq=5, tk=24)
    lengths = jnp.array([17, 24])
    k_bad = k.at[0, 17:].set(jnp.nan)
    v_bad = v.at[0, 20].set(jnp.inf)
    run = lambda q, k, v: jaxflash.attention(
        q, k, v, kv_lengths=lengths, causal=True, implementation=implementation
    )
    assert_close(run(q, k_bad, v_bad), run(q, k, v))
    grads = jax.grad(lambda q, k, v: run(q, k, v).sum(), argnums=(0, 1, 2))(q, k_bad, v_bad)
    clean = jax.grad(lambda q, k, v: run(q, k, v).sum(), argnums=(0, 1, 2))(q, k, v)
    assert_close(grads, clean)


def test_unused_cache_slots_and_padded_prefixes_never_reach_outputs(key):
    b, s, hq, hk, d = 3, 12, 4, 2, 16
    k1, k2, k3 = jax.random.split(key, 3)
    q = random_normal(k1, (b, hq, d))
    kc, vc = random_normal(k2, (b, s, hk, d)), random_normal(k3, (b, s, hk, d))
    lengths = jnp.array([1, 12, 7])
    garbage = jnp.arange(s)[None, :, None, None] >= lengths[:, None, None, None]
    kc_bad, vc_bad = jnp.where(garbage, jnp.nan, kc), jnp.where(garbage, jnp.inf, vc)
    for window in (None, 3):
        out = jaxflash.decode_attention(q, kc_bad, vc_bad, lengths, window=window, implementation="xla")
        assert_close(out, jaxflash.decode_attention(q, kc, vc, lengths, window=window, implementation="xla"))
    # Hydragen: a right-padded prefix and padded suffixes.
    qs = q[:, None]
    prefix = (kc[:1], vc[:1])
    bad_prefix = (kc[:1].at[:, 8:].set(jnp.nan), vc[:1])
    kw = dict(prefix_lengths=[jnp.array([8])], suffix_lengths=lengths, implementation="xla")
    out = jaxflash.shared_prefix_attention(qs, [bad_prefix], kc_bad, vc_bad, **kw)
    assert_close(out, jaxflash.shared_prefix_attention(qs, [prefix], kc, vc, **kw))


# --- causal alignment per sequence (FlashAttention's cache_seqlens) and per packed sequence (varlen) -----

ALIGNMENT_IMPLEMENTATIONS = [
    "reference",
    "xla",
    pytest.param(kernel_implementation(), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("implementation", ALIGNMENT_IMPLEMENTATIONS)
@pytest.mark.parametrize("window", [None, (9, None)])
def test_chunked_prefill_aligns_the_causal_diagonal_per_sequence(implementation, window, key):
    """64 new queries against a cache of 256 with lengths [100, 256]: each sequence's queries are its last
    64 tokens, so they see their own past and never the keys after them."""
    q, k, v = _qkv(key, b=2, tq=64, tk=256, hq=2, hk=1, d=16)
    lengths = jnp.array([100, 256])
    config = ChunkConfig(16, 32) if implementation == "xla" else None
    out = jaxflash.attention(
        q, k, v, causal=True, window=window, kv_lengths=lengths, implementation=implementation, config=config
    )
    for i, n in enumerate([100, 256]):
        ref = jaxflash.attention(
            q[i : i + 1],
            k[i : i + 1, :n],
            v[i : i + 1, :n],
            causal=True,
            window=window,
            implementation="reference",
        )
        assert_close(out[i : i + 1], ref)


@pytest.mark.parametrize("implementation", ALIGNMENT_IMPLEMENTATIONS)
def test_packed_sequences_align_each_segment_as_varlen_attention_does(implementation, key):
    """Packed sequences whose query and key counts differ per sequence (a chunked prefill of a packed
    batch): each segment's last query sits on the diagonal of the segment's last key."""
    q_counts, k_counts = [5, 3, 8], [9, 3, 20]
    q, k, v = _qkv(key, b=1, tq=sum(q_counts), tk=sum(k_counts), hq=2, hk=2, d=16)
    q_seg = jnp.repeat(jnp.arange(3), jnp.array(q_counts))[None]
    kv_seg = jnp.repeat(jnp.arange(3), jnp.array(k_counts))[None]
    config = ChunkConfig(4, 8) if implementation == "xla" else None
    out = jaxflash.attention(
        q, k, v, causal=True, segment_ids=(q_seg, kv_seg), implementation=implementation, config=config
    )
    q0 = k0 = 0
    for nq, nk in zip(q_counts, k_counts, strict=True):
        ref = jaxflash.attention(
            q[:, q0 : q0 + nq],
            k[:, k0 : k0 + nk],
            v[:, k0 : k0 + nk],
            causal=True,
            implementation="reference",
        )
        assert_close(out[:, q0 : q0 + nq], ref)
        q0, k0 = q0 + nq, k0 + nk


def test_packed_self_attention_with_equal_segments_is_unchanged(key):
    """The common packed case (q and kv share one segment array) aligns every segment on the main diagonal."""
    q, k, v = _qkv(key, b=1, tq=16, tk=16, d=16)
    seg = jnp.array([[0] * 6 + [1] * 10])
    out = jaxflash.attention(q, k, v, causal=True, segment_ids=seg, implementation="xla")
    dense = jnp.tril(jnp.ones((16, 16), bool)) & (seg[0][:, None] == seg[0][None, :])
    s = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, 2, axis=2)) / 4.0
    p = jax.nn.softmax(jnp.where(dense, s, -jnp.inf), axis=-1)
    assert_close(out, jnp.einsum("bhqk,bkhd->bqhd", p, jnp.repeat(v, 2, axis=2)))


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
