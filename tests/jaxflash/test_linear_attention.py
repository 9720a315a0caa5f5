"""jaxflash.linear_attention (Katharopoulos et al. 2020) and jaxflash.linear_attention_step.

The XLA path and the Pallas kernels (interpret mode here) are checked against the quadratic reference,
and the reference against an explicit loop in float64. Inputs: ``elu_feature_map`` of random normals
for q and k (positive features, so positive denominators), random normal values; d_v != d_k; sequence
lengths 37 and 100 in chunks of 16 (3 and 7 chunks, the last partial); q_len != kv_len when not causal.
Tolerances: ``jaxflash.testing`` per dtype (f32 1e-5; bf16 2e-2, its dots and output rounded to bf16),
twice that for gradients, against the f32 reference. The unnormalised output and the gradients are sums
over up to 100 positions, not of unit scale, so each leaf's atol is scaled by its largest magnitude.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflash
from jaxflash.ops.attention import FlashConfig
from jaxflash.ops.linear_attention import LinearAttentionConfig, LinearAttentionState
from jaxflash.testing import assert_close, random_normal, tolerance

IMPLS = ["xla", "pallas_interpret"]
CONFIG = LinearAttentionConfig(chunk_size=16)
B, H, DK, DV = 2, 2, 8, 12

# (q_len, kv_len, causal): 3 chunks causal; 3 query and 7 key chunks across.
CASES = {"causal_37": (37, 37, True), "cross_37_100": (37, 100, False)}


def _qkv(key, tq, tk, dtype=jnp.float32, dk=DK, dv=DV, b=B, h=H):
    kq, kk, kv = jax.random.split(key, 3)
    q = jaxflash.elu_feature_map(random_normal(kq, (b, tq, h, dk)))
    k = jaxflash.elu_feature_map(random_normal(kk, (b, tk, h, dk)))
    return q.astype(dtype), k.astype(dtype), random_normal(kv, (b, tk, h, dv), dtype)


def _config(implementation):
    return None if implementation == "reference" else CONFIG


def _attend(implementation, **kwargs):
    return functools.partial(
        jaxflash.linear_attention, implementation=implementation, config=_config(implementation), **kwargs
    )


@functools.partial(jax.jit, static_argnames=("implementation", "causal", "normalize", "eps"))
def _out_and_grads(q, k, v, w, *, implementation, causal, normalize, eps=1e-6):
    """The output and the gradients of ``sum(w * out)`` with respect to q, k and v."""

    def loss(q, k, v):
        out = _attend(implementation, causal=causal, normalize=normalize, eps=eps)(q, k, v)
        return (out.astype(jnp.float32) * w).sum(), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _assert_close_scaled(actual, expected, dtype, *, scale=1.0):
    """Each leaf within ``dtype``'s tolerance times ``scale``, its atol times the leaf's peak |value|."""
    tol = tolerance(dtype, scale=scale)
    for i, (a, e) in enumerate(zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True)):
        peak = max(1.0, float(jnp.abs(e.astype(jnp.float32)).max()))
        assert_close(a, e, atol=tol["atol"] * peak, rtol=tol["rtol"], err_msg=f"leaf {i} (peak {peak:.3g})")


# --- the reference ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("causal,tq,tk", [(True, 6, 6), (False, 5, 9)])
def test_reference_matches_a_loop(key, causal, tq, tk, normalize):
    q, k, v = _qkv(key, tq, tk, dk=3, dv=2, b=1)
    eps = 0.1
    out = jaxflash.linear_attention(
        q, k, v, causal=causal, normalize=normalize, eps=eps, implementation="reference"
    )
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    expected = np.zeros(out.shape)
    for h in range(H):
        for i in range(tq):
            num, den = np.zeros(2), 0.0
            for j in range(i + 1 if causal else tk):
                a = q64[0, i, h] @ k64[0, j, h]
                num, den = num + a * v64[0, j, h], den + a
            expected[0, i, h] = num / (den + eps) if normalize else num
    assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --- the implementations against the reference -----------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implementation", IMPLS)
def test_matches_reference_with_gradients(key, implementation, case, normalize):
    tq, tk, causal = CASES[case]
    kx, kw = jax.random.split(key)
    q, k, v = _qkv(kx, tq, tk)
    w = random_normal(kw, (B, tq, H, DV))
    statics = dict(causal=causal, normalize=normalize)
    out, grads = _out_and_grads(q, k, v, w, implementation=implementation, **statics)
    ref_out, ref_grads = _out_and_grads(q, k, v, w, implementation="reference", **statics)
    assert out.shape == (B, tq, H, DV) and out.dtype == jnp.float32
    _assert_close_scaled(out, ref_out, jnp.float32)
    _assert_close_scaled(grads, ref_grads, jnp.float32, scale=2.0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implementation", IMPLS)
def test_bf16_matches_f32_reference(key, implementation, case):
    tq, tk, causal = CASES[case]
    kx, kw = jax.random.split(key)
    q, k, v = _qkv(kx, tq, tk, jnp.bfloat16)
    w = random_normal(kw, (B, tq, H, DV))
    out, grads = _out_and_grads(q, k, v, w, implementation=implementation, causal=causal, normalize=True)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_out, ref_grads = _out_and_grads(*f32, w, implementation="reference", causal=causal, normalize=True)
    # bf16 operands of every dot (products, states, the cotangent) and a bf16 output: the bf16 tolerance.
    _assert_close_scaled(out, ref_out, jnp.bfloat16)
    _assert_close_scaled(grads, ref_grads, jnp.bfloat16, scale=2.0)


@pytest.mark.parametrize("implementation", [*IMPLS, "reference"])
def test_future_tokens_do_not_change_earlier_outputs(key, implementation):
    kx, ky = jax.random.split(key)
    q, k, v = _qkv(kx, 37, 37)
    q2, k2, v2 = _qkv(ky, 37, 37)
    p = 20  # inside the second chunk: the intra-chunk mask and the carried state both matter
    later = lambda x, y: x.at[:, p:].set(y[:, p:])  # noqa: E731
    attend = _attend(implementation, causal=True)
    out, changed = attend(q, k, v), attend(later(q, q2), later(k, k2), later(v, v2))
    # Exactly: the masked products are zeros, whatever the future holds.
    assert_close(changed[:, :p], out[:, :p], atol=0, rtol=0)
    assert float(jnp.abs(changed[:, p:] - out[:, p:]).min()) > 0


def test_eps_zero_gradients_are_finite(key):
    """eps=0 is allowed (positive features): the rows padding the last chunk must not divide 0 by 0."""
    kx, kw = jax.random.split(key)
    q, k, v = _qkv(kx, 37, 37)
    w = random_normal(kw, (B, 37, H, DV))
    grads = {}
    for implementation in IMPLS:
        _, grads[implementation] = _out_and_grads(
            q, k, v, w, implementation=implementation, causal=True, normalize=True, eps=0.0
        )
        assert all(bool(jnp.isfinite(g).all()) for g in grads[implementation]), implementation
    _assert_close_scaled(grads["pallas_interpret"], grads["xla"], jnp.float32, scale=2.0)


def test_jit_matches_eager_and_default_is_xla(key):
    q, k, v = _qkv(key, 37, 37)
    f = lambda q, k, v: jaxflash.linear_attention(q, k, v, causal=True, config=CONFIG)  # noqa: E731
    eager = f(q, k, v)
    assert_close(jax.jit(f)(q, k, v), eager, atol=0, rtol=0)
    assert_close(_attend("xla", causal=True)(q, k, v), eager, atol=0, rtol=0)
    # One chunk of 37 or three of 16: the same sums.
    assert_close(jaxflash.linear_attention(q, k, v, causal=True), eager)
    assert "xla" in jaxflash.supported("linear_attention")["linear_attention"]


# --- the recurrent state ---------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_prefill_then_steps_equal_the_causal_op(key, normalize):
    t, prefix = 37, 21
    q, k, v = _qkv(key, t, t)
    full, full_state = jaxflash.linear_attention(
        q, k, v, causal=True, normalize=normalize, return_state=True, config=CONFIG
    )
    out, state = jaxflash.linear_attention(
        q[:, :prefix], k[:, :prefix], v[:, :prefix], causal=True, normalize=normalize, return_state=True
    )
    assert isinstance(state, LinearAttentionState) and state.kv.dtype == state.k_sum.dtype == jnp.float32
    assert state.kv.shape == (B, H, DK, DV) and state.k_sum.shape == (B, H, DK)
    step = jax.jit(functools.partial(jaxflash.linear_attention_step, normalize=normalize))
    outs = [out]
    for i in range(prefix, t):
        y, state = step(state, q[:, i], k[:, i], v[:, i])
        outs.append(y[:, None])
    _assert_close_scaled(jnp.concatenate(outs, axis=1), full, jnp.float32)
    _assert_close_scaled(state, full_state, jnp.float32)
    # From the empty state, the first tokens alone.
    state = LinearAttentionState.zeros(B, H, DK, DV)
    for i in range(3):
        y, state = step(state, q[:, i], k[:, i], v[:, i])
        _assert_close_scaled(y, full[:, i], jnp.float32)


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_input_raises(key):
    q, k, v = _qkv(key, 7, 9)
    la = jaxflash.linear_attention
    with pytest.raises(ValueError, match="q must have rank 4"):
        la(q[:, :, 0], k, v)
    with pytest.raises(TypeError, match="k must be a jax or numpy array"):
        la(q, k.tolist(), v)
    with pytest.raises(ValueError, match="share one dtype"):
        la(q, k, v.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        la(q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32))
    with pytest.raises(ValueError, match="k must have shape"):
        la(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v must have shape"):
        la(q, k, v[:, :8])
    with pytest.raises(ValueError, match="q_len == kv_len"):
        la(q, k, v, causal=True)
    with pytest.raises(ValueError, match="non-empty"):
        la(q[:, :0], k, v)
    for eps in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            la(q, k, v, eps=eps)
    for flag in ("causal", "normalize", "return_state"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            la(q, k, v, **{flag: 1})
    with pytest.raises(ValueError, match="chunk_size"):
        LinearAttentionConfig(chunk_size=0)
    with pytest.raises(TypeError, match="not a config of 'linear_attention'"):
        la(q, k, v, config=FlashConfig())
    with pytest.raises(NotImplementedError, match="takes no config"):
        la(q, k, v, implementation="reference", config=CONFIG)
    with pytest.raises(NotImplementedError, match="gpu"):
        la(q, k, v, implementation="pallas")


def test_bad_step_input_raises(key):
    q, k, v = _qkv(key, 1, 1)
    q, k, v = q[:, 0], k[:, 0], v[:, 0]
    state = LinearAttentionState.zeros(B, H, DK, DV)
    step = jaxflash.linear_attention_step
    with pytest.raises(ValueError, match="q must have rank 3"):
        step(state, q[:, None], k, v)
    with pytest.raises(ValueError, match="q and k must have one shape"):
        step(state, q, k[..., :4], v)
    with pytest.raises(ValueError, match="share one dtype"):
        step(state, q, k.astype(jnp.bfloat16), v)
    with pytest.raises(TypeError, match="state must be a LinearAttentionState"):
        step(state.kv, q, k, v)
    with pytest.raises(ValueError, match=r"state must have kv \[batch, heads, d_k, d_v\]"):
        step(LinearAttentionState.zeros(B, H, DK, DV + 1), q, k, v)
    with pytest.raises(ValueError, match="state.k_sum must be floating point"):
        step(LinearAttentionState(state.kv, state.k_sum.astype(jnp.int32)), q, k, v)
    with pytest.raises(TypeError, match="state.kv must be a jax or numpy array"):
        step(LinearAttentionState(state.kv.tolist(), state.k_sum), q, k, v)
    with pytest.raises(ValueError, match="eps must be"):
        step(state, q, k, v, eps=-1e-6)
    with pytest.raises(TypeError, match="normalize must be a bool"):
        step(state, q, k, v, normalize="yes")
