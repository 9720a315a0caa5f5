"""jaxflash.column_sparse_attention (Chipmunk's csp_attn) and its column-set helpers.

The kernel runs in interpret mode here (compiled on GPU: ``kernel_implementation()``); the XLA path and
the kernel are checked against the dense masked reference and against ``jaxflash.attention`` when every
column is selected. Shapes: odd q_len not a multiple of block_q (the last group partial), >= 3 groups,
GQA (2 q heads on 1 kv head), counts from 0 to max_cols, column tiles small enough for 3 per group.
Tolerances: ``jaxflash.testing`` per dtype against the f32 reference (f32 1e-5; bf16 inputs 2e-2 on the
output, twice that for gradients).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflash
from jaxflash.ops.column_sparse_attention import ColumnSparseConfig
from jaxflash.testing import assert_close, assert_grads_close, kernel_implementation, random_normal

IMPL = kernel_implementation()
IMPLS = ["xla", IMPL]
SMALL_TILES = ColumnSparseConfig(block_k=4)  # max_cols 9 -> 3 column tiles per group

B, TQ, TK, HQ, HK, D, BLOCK_Q = 1, 13, 23, 2, 1, 16, 4  # 4 query groups, the last of 1 query
N_GROUPS = -(-TQ // BLOCK_Q)
MAX_COLS = 9


def _config(implementation):
    return SMALL_TILES if implementation.startswith("pallas") else None


def _qkv(key, dtype=jnp.float32, tq=TQ, tk=TK):
    kq, kk, kv = jax.random.split(key, 3)
    return (
        random_normal(kq, (B, tq, HQ, D), dtype),
        random_normal(kk, (B, tk, HK, D), dtype),
        random_normal(kv, (B, tk, HK, D), dtype),
    )


def _random_columns(key, n_groups=N_GROUPS, tk=TK, max_cols=MAX_COLS):
    """Distinct random ids per group; counts cover 0, max_cols and values between; padding is junk."""
    ids = jnp.argsort(jax.random.uniform(key, (B, HQ, n_groups, tk)), axis=-1)[..., :max_cols]
    counts = jnp.array([[[0, max_cols, 3, 5], [max_cols, 1, 0, 7]]], jnp.int32)[..., :n_groups]
    junk = jnp.where(jnp.arange(max_cols) < counts[..., None], ids, 10_000)  # out of range, ignored
    return junk.astype(jnp.int32), counts


def _all_columns(n_groups=N_GROUPS, tk=TK):
    ids = jnp.broadcast_to(jnp.arange(tk, dtype=jnp.int32), (B, HQ, n_groups, tk))
    return ids, jnp.full((B, HQ, n_groups), tk, jnp.int32)


def _csp(implementation, indices, counts, **kwargs):
    def f(q, k, v):
        return jaxflash.column_sparse_attention(
            q,
            k,
            v,
            indices,
            counts,
            block_q=BLOCK_Q,
            return_lse=True,
            implementation=implementation,
            config=_config(implementation) if implementation != "reference" else None,
            **kwargs,
        )

    return f


# --- the op --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS)
def test_all_columns_equals_dense_attention(key, implementation):
    q, k, v = _qkv(key)
    out, lse = _csp(implementation, *_all_columns())(q, k, v)
    dense, dense_lse = jaxflash.attention(q, k, v, return_lse=True, implementation="reference")
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (B, TQ, HQ)
    assert_close((out, lse), (dense, dense_lse))


@pytest.mark.parametrize("implementation", IMPLS)
def test_random_columns_match_reference(key, implementation):
    kx, kc = jax.random.split(key)
    q, k, v = _qkv(kx)
    indices, counts = _random_columns(kc)
    out, lse = _csp(implementation, indices, counts)(q, k, v)
    ref_out, ref_lse = _csp("reference", indices, counts)(q, k, v)
    assert_close((out, lse), (ref_out, ref_lse))
    # Groups with count 0 (group 0 of head 0, group 2 of head 1) output 0 and lse -inf.
    assert jnp.all(out[:, :BLOCK_Q, 0] == 0) and jnp.all(lse[:, :BLOCK_Q, 0] == -jnp.inf)
    assert jnp.all(out[:, 2 * BLOCK_Q : 3 * BLOCK_Q, 1] == 0)
    assert jnp.all(jnp.isfinite(lse[:, BLOCK_Q:, 0]))


def test_reference_is_masked_softmax_over_the_selected_columns(key):
    kx, kc = jax.random.split(key)
    q, k, v = _qkv(kx)
    indices, counts = _random_columns(kc)
    out, lse = _csp("reference", indices, counts)(q, k, v)
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    for h in range(HQ):
        for i in range(TQ):
            g = i // BLOCK_Q
            cols = np.asarray(indices[0, h, g, : counts[0, h, g]])
            if cols.size == 0:
                continue
            s = k64[0, cols, 0] @ q64[0, i, h] / np.sqrt(D)
            p = np.exp(s - s.max())
            np.testing.assert_allclose(out[0, i, h], p @ v64[0, cols, 0] / p.sum(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(lse[0, i, h], s.max() + np.log(p.sum()), rtol=1e-5)


@pytest.mark.parametrize("implementation", IMPLS)
def test_gradients_match_reference(key, implementation):
    kx, kc, kg = jax.random.split(key, 3)
    q, k, v = _qkv(kx)
    indices, counts = _random_columns(kc)
    assert_grads_close(
        _csp(implementation, indices, counts), _csp("reference", indices, counts), (q, k, v), key=kg
    )


@pytest.mark.parametrize("implementation", IMPLS)
def test_bf16_matches_f32_reference(key, implementation):
    kx, kc = jax.random.split(key)
    q, k, v = _qkv(kx, jnp.bfloat16)
    indices, counts = _random_columns(kc)
    out, lse = _csp(implementation, indices, counts)(q, k, v)
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_out, ref_lse = _csp("reference", indices, counts)(*f32)
    # bf16 products and a bf16 P.V (FlashAttention's rounding), then a bf16 output: the bf16 tolerance.
    assert_close((out, lse), (ref_out, ref_lse), dtype=jnp.bfloat16)


def test_jit_matches_eager_and_default_is_xla(key):
    kx, kc = jax.random.split(key)
    q, k, v = _qkv(kx)
    indices, counts = _random_columns(kc)
    indices = jnp.where(indices == 10_000, 0, indices)  # under jit the ids are not value-checked
    f = lambda *a: jaxflash.column_sparse_attention(*a, block_q=BLOCK_Q)  # noqa: E731
    eager = f(q, k, v, indices, counts)
    assert_close(jax.jit(f)(q, k, v, indices, counts), eager, atol=0, rtol=0)
    xla = jaxflash.column_sparse_attention(q, k, v, indices, counts, block_q=BLOCK_Q, implementation="xla")
    assert_close(eager, xla, atol=0, rtol=0)
    assert "xla" in jaxflash.supported("column_sparse_attention")["column_sparse_attention"]


@pytest.mark.parametrize("implementation", [*IMPLS, "reference"])
def test_unselected_non_finite_columns_do_not_leak(key, implementation):
    kx, kc = jax.random.split(key)
    q, k, v = _qkv(kx)
    indices, counts = _random_columns(kc)
    listed = np.zeros(TK, bool)
    for h in range(HQ):
        for g in range(N_GROUPS):
            listed[np.asarray(indices[0, h, g, : counts[0, h, g]])] = True
    hidden = int(np.flatnonzero(~listed)[0]) if (~listed).any() else None
    if hidden is None:
        pytest.skip("every column is selected somewhere")
    out = _csp(implementation, indices, counts)(q, k.at[:, hidden].set(jnp.nan), v.at[:, hidden].set(jnp.inf))
    assert_close(out, _csp(implementation, indices, counts)(q, k, v))


def test_chipmunk_delta_identity(key):
    """At a full step, R = O - csp(q, k, v) makes csp + R reproduce the dense output (paper, step 2)."""
    kx, kc = jax.random.split(key)
    q, k, v = _qkv(kx)
    dense, lse = jaxflash.attention(q, k, v, return_lse=True)
    cs = jaxflash.column_sums(q, k, lse, block_q=BLOCK_Q)
    indices, counts = jaxflash.topk_columns(cs, 5, random_fraction=0.1, key=kc, multiple_of=4)
    for implementation in IMPLS:
        sparse = _csp(implementation, indices, counts)(q, k, v)[0]
        residual = dense - sparse
        assert_close(sparse + residual, dense)
        assert float(jnp.abs(residual).max()) > 1e-3  # the sparse part alone is not the dense output


def test_mask_to_indices_round_trip(key):
    mask = jax.random.bernoulli(key, 0.3, (B, HQ, N_GROUPS, TK)).at[0, 0, 1].set(False)
    indices, counts = jaxflash.mask_to_indices(mask)
    assert indices.shape == (B, HQ, N_GROUPS, TK) and indices.dtype == counts.dtype == jnp.int32
    np.testing.assert_array_equal(counts, mask.sum(-1))
    for h in range(HQ):
        for g in range(N_GROUPS):
            n = int(counts[0, h, g])
            np.testing.assert_array_equal(indices[0, h, g, :n], np.flatnonzero(mask[0, h, g]))
            assert jnp.all(indices[0, h, g, n:] == 0)
    narrow = jaxflash.mask_to_indices(mask, max_cols=int(counts.max()))
    np.testing.assert_array_equal(narrow[0], indices[..., : int(counts.max())])
    with pytest.raises(ValueError, match="more than max_cols"):
        jaxflash.mask_to_indices(mask, max_cols=int(counts.max()) - 1)
    with pytest.raises(ValueError, match="bool"):
        jaxflash.mask_to_indices(mask.astype(jnp.int32))


# --- column sums and top-k -----------------------------------------------------------------------------


def test_column_sums_match_a_naive_loop(key):
    q, k, _ = _qkv(key, tq=7, tk=2100)  # 3 kv chunks of 1024, the last partial; 2 groups of 4 and 3
    lse = jax.random.normal(key, (B, 7, HQ)) + 5.0
    lse = lse.at[0, 2, 1].set(-jnp.inf)  # a query that saw no key contributes nothing
    cs = jaxflash.column_sums(q, k, lse, block_q=BLOCK_Q, scale=0.3)
    assert cs.shape == (B, HQ, 2, 2100) and cs.dtype == jnp.float32
    q64, k64, lse64 = (np.asarray(x, np.float64) for x in (q, k, lse))
    expected = np.zeros(cs.shape)
    for h in range(HQ):
        for i in range(7):
            if np.isfinite(lse64[0, i, h]):
                expected[0, h, i // BLOCK_Q] += np.exp(0.3 * k64[0, :, 0] @ q64[0, i, h] - lse64[0, i, h])
    assert_close(cs, expected, rtol=1e-5, atol=1e-7)


def test_column_sums_of_the_dense_lse_total_the_group_sizes(key):
    q, k, v = _qkv(key)
    _, lse = jaxflash.attention(q, k, v, return_lse=True)
    totals = jaxflash.column_sums(q, k, lse, block_q=BLOCK_Q).sum(-1)
    assert_close(totals, jnp.broadcast_to(jnp.array([4.0, 4.0, 4.0, 1.0]), totals.shape))


def test_topk_columns_picks_the_true_top_k(key):
    colsum = jax.random.uniform(key, (2, 3, 40))
    indices, counts = jaxflash.topk_columns(colsum, 6)
    assert indices.shape == (2, 3, 6) and jnp.all(counts == 6)
    expected = np.sort(np.argsort(-np.asarray(colsum), axis=-1, kind="stable")[..., :6], axis=-1)
    np.testing.assert_array_equal(indices, expected)
    # Ties go to the lower column id: columns 3, 5 and 9 share the top sum; k = 2 keeps 3 and 5.
    tied = jnp.zeros((1, 12)).at[0, jnp.array([3, 5, 9])].set(1.0)
    np.testing.assert_array_equal(jaxflash.topk_columns(tied, 2)[0], [[3, 5]])


def test_topk_columns_random_extras_and_multiple_of(key):
    kc, kr = jax.random.split(key)
    colsum = jax.random.uniform(kc, (4, 50))
    top = jaxflash.topk_columns(colsum, 6)[0]
    # 6 + round(0.1 * 44) = 10 columns, padded to 12 with the next-best sums.
    indices, counts = jaxflash.topk_columns(colsum, 6, random_fraction=0.1, key=kr, multiple_of=4)
    assert indices.shape == (4, 12) and jnp.all(counts == 12)
    ranked = np.argsort(-np.asarray(colsum), axis=-1, kind="stable")
    for g in range(4):
        row = np.asarray(indices[g])
        assert len(set(row.tolist())) == 12 and np.all(np.diff(row) > 0)  # distinct, ascending
        assert set(np.asarray(top[g]).tolist()) <= set(row.tolist())
        assert len(set(row.tolist()) - set(np.asarray(top[g]).tolist())) == 6  # 4 random, 2 padding
    again = jaxflash.topk_columns(colsum, 6, random_fraction=0.1, key=kr, multiple_of=4)[0]
    np.testing.assert_array_equal(indices, again)  # deterministic given the key
    other = jaxflash.topk_columns(colsum, 6, random_fraction=0.1, key=jax.random.fold_in(kr, 1))[0]
    assert not np.array_equal(indices[:, :10], other)  # another key, other random columns
    # No random columns: the padding is exactly the next-best columns.
    padded = jaxflash.topk_columns(colsum, 6, multiple_of=4)[0]
    np.testing.assert_array_equal(padded, np.sort(ranked[:, :8], axis=-1))
    # A multiple beyond kv_len stops at every column.
    everything = jaxflash.topk_columns(colsum, 45, multiple_of=32)
    np.testing.assert_array_equal(everything[0], np.broadcast_to(np.arange(50), (4, 50)))
    with pytest.raises(ValueError, match="pass key="):
        jaxflash.topk_columns(colsum, 6, random_fraction=0.1)
    with pytest.raises(ValueError, match="k=51"):
        jaxflash.topk_columns(colsum, 51)


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_input_raises(key):
    q, k, v = _qkv(key)
    indices, counts = _all_columns()
    csp = jaxflash.column_sparse_attention
    with pytest.raises(ValueError, match="block_q"):
        csp(q, k, v, indices, counts, block_q=0)
    with pytest.raises(ValueError, match="n_groups=4"):
        csp(q, k, v, indices[:, :, :3], counts, block_q=BLOCK_Q)
    with pytest.raises(ValueError, match="counts must have shape"):
        csp(q, k, v, indices, counts[..., :3], block_q=BLOCK_Q)
    with pytest.raises(ValueError, match="integers"):
        csp(q, k, v, indices.astype(jnp.float32), counts, block_q=BLOCK_Q)
    with pytest.raises(ValueError, match=r"kv_len=23\)"):
        csp(q, k, v, indices.at[0, 1, 2, 4].set(23), counts, block_q=BLOCK_Q)
    with pytest.raises(ValueError, match="max_cols=23"):
        csp(q, k, v, indices, counts.at[0, 0, 0].set(24), block_q=BLOCK_Q)
    with pytest.raises(ValueError, match="share one dtype"):
        csp(q, k.astype(jnp.bfloat16), v, indices, counts, block_q=BLOCK_Q)
    with pytest.raises(ValueError, match="lse must be"):
        jaxflash.column_sums(q, k, jnp.zeros((B, TQ)), block_q=BLOCK_Q)
    with pytest.raises(ValueError, match="block_k"):
        ColumnSparseConfig(block_k=0)
    if IMPL == "pallas_interpret":
        with pytest.raises(NotImplementedError, match="gpu"):
            csp(q, k, v, indices, counts, block_q=BLOCK_Q, implementation="pallas")
