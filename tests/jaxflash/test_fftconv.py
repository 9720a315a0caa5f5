"""jaxflash.fftconv / short_conv (the "xla" and "reference" paths) against float64 NumPy and float64
autodiff. The Pallas kernel's own tests are in tests/pallas_kernels/test_fftconv_kernel.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflash
from jaxflash.ops import fftconv as ops
from jaxflash.testing import assert_close, assert_grads_close, random_normal, tolerance

# f32 FFTs of unit-scale signals: round-off grows like log N, far below 1e-4 at the sizes tested.
F32_TOL = dict(atol=1e-4, rtol=1e-4)


def numpy_fftconv(u, k, skip=None, pre=None, post=None, *, causal=True, fft_size=None, keep=None):
    """float64 NumPy: rfft convolution of size N (2 * seq causal, len(k) circular)."""
    u, k = np.asarray(u, np.float64), np.asarray(k, np.float64)
    seq = u.shape[1]
    x = u if pre is None else u * np.asarray(pre, np.float64)
    n = fft_size or (2 * seq if causal else k.shape[0])
    kf = np.fft.rfft(k, n=n, axis=0)
    if keep is not None:
        kf[keep:] = 0
    y = np.fft.irfft(np.fft.rfft(x, n=n, axis=1) * kf[None], n=n, axis=1)[:, :seq]
    if skip is not None:
        y = y + np.asarray(skip, np.float64) * x
    return y if post is None else y * np.asarray(post, np.float64)


def make_inputs(key, batch, seq, chans, kernel_len, *, gated=True, dtype=jnp.float32):
    """Unit-scale u and gates; a decaying kernel normalised so the output is of unit scale too."""
    ku, kk, ks, kp, kq = jax.random.split(key, 5)
    u = random_normal(ku, (batch, seq, chans), dtype)
    decay = jnp.exp(-3.0 * jnp.arange(kernel_len) / kernel_len)[:, None]
    k = (random_normal(kk, (kernel_len, chans)) * decay / jnp.sqrt(jnp.sum(decay**2))).astype(dtype)
    skip = random_normal(ks, (chans,), dtype)
    pre = random_normal(kp, (batch, seq, chans), dtype) if gated else None
    post = random_normal(kq, (batch, seq, chans), dtype) if gated else None
    return u, k, skip, pre, post


def call(u, k, skip, pre, post, implementation="xla", **kw):
    return jaxflash.fftconv(
        u, k, skip=skip, pre_gate=pre, post_gate=post, implementation=implementation, **kw
    )


def float64_grads(args, cot, **kw):
    """Gradients of <fftconv(args), cot> by autodiff of the reference implementation in float64."""
    with jax.enable_x64(True):
        args64 = [None if a is None else jnp.asarray(np.asarray(a, np.float64)) for a in args]
        idx = [i for i, a in enumerate(args64) if a is not None]

        def loss(*diff):
            full = list(args64)
            for i, d in zip(idx, diff, strict=True):
                full[i] = d
            y = call(*full, implementation="reference", **kw)
            return jnp.sum(y * jnp.asarray(np.asarray(cot, np.float64)))

        grads = jax.grad(loss, argnums=tuple(range(len(idx))))(*[args64[i] for i in idx])
        return [np.asarray(g) for g in grads], idx


# --- forward against float64 NumPy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,seq,chans,kernel_len",
    [
        (2, 7, 111, 7),  # odd sizes, direct route
        (3, 100, 111, 100),  # full kernel: whole-sequence rfft
        (2, 539, 111, 539),
        (2, 539, 111, 97),  # partial convolution: overlap-add
        (2, 4096, 16, 4096),
        (1, 4096, 5, 3),  # short kernel: direct sums
        (1, 2**16, 3, 2**16),
        (1, 2**16, 3, 1000),
    ],
)
def test_xla_matches_float64(key, batch, seq, chans, kernel_len):
    args = make_inputs(key, batch, seq, chans, kernel_len)
    y = call(*args)
    assert y.shape == (batch, seq, chans) and y.dtype == jnp.float32
    assert_close(y, numpy_fftconv(*args), **F32_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("seq,kernel_len", [(2**20, 2**20), (2**20, 4096), (300_001, 300_001)])
def test_xla_matches_float64_long(key, seq, kernel_len):
    args = make_inputs(key, 1, seq, 2, kernel_len)
    assert_close(call(*args), numpy_fftconv(*args), **F32_TOL)


@pytest.mark.parametrize("gated", [False, True])
def test_reference_matches_float64(key, gated):
    args = make_inputs(key, 2, 33, 111, 20, gated=gated)
    assert_close(call(*args, implementation="reference"), numpy_fftconv(*args), **F32_TOL)


def test_skip_and_gates_optional(key):
    u, k, *_ = make_inputs(key, 2, 50, 6, 50, gated=False)
    assert_close(jaxflash.fftconv(u, k, implementation="xla"), numpy_fftconv(u, k), **F32_TOL)


def test_bf16_inputs(key):
    args = make_inputs(key, 2, 300, 8, 300, dtype=jnp.bfloat16)
    y = call(*args)
    assert y.dtype == jnp.bfloat16
    # bf16 rounding of the inputs and of the output; the computation itself is f32.
    assert_close(
        y, numpy_fftconv(*[np.asarray(a.astype(jnp.float32)) for a in args]), dtype=jnp.bfloat16, scale=2.0
    )


def test_explicit_fft_size_gives_same_linear_convolution(key):
    args = make_inputs(key, 2, 40, 3, 25)
    assert_close(call(*args, fft_size=64), numpy_fftconv(*args), **F32_TOL)
    assert_close(call(*args, fft_size=64, implementation="reference"), numpy_fftconv(*args), **F32_TOL)


def test_jit_matches_eager_and_default_dispatch(key):
    args = make_inputs(key, 2, 129, 5, 129)
    eager = call(*args)
    jitted = jax.jit(lambda *a: call(*a))(*args)
    assert_close(jitted, eager, **F32_TOL)
    assert_close(call(*args, implementation=None), eager, **F32_TOL)


# --- bidirectional, frequency-sparse ------------------------------------------------------------------


def test_bidirectional_kernel_direct_sum(key):
    seq, chans = 13, 4
    k1, k2, k3 = jax.random.split(key, 3)
    kf, kr = random_normal(k1, (seq, chans)), random_normal(k2, (seq, chans))
    u = random_normal(k3, (2, seq, chans))
    k = ops.bidirectional_kernel(kf, kr)
    assert k.shape == (2 * seq, chans)
    un, kfn, krn = (np.asarray(a, np.float64) for a in (u, kf, kr))
    want = np.zeros_like(un)
    for t in range(seq):
        for d in range(seq):
            if t - d >= 0:
                want[:, t] += kfn[d] * un[:, t - d]
            if d >= 1 and t + d < seq:
                want[:, t] += krn[d - 1] * un[:, t + d]
    for impl in ("xla", "reference"):
        assert_close(jaxflash.fftconv(u, k, causal=False, implementation=impl), want, **F32_TOL)


@pytest.mark.parametrize("seq,n", [(64, 128), (100, 256), (539, 1078)])
def test_circular_gated(key, seq, n):
    u, _, skip, pre, post = make_inputs(key, 2, seq, 111, seq)
    k = random_normal(jax.random.fold_in(key, 1), (n, 111), scale=n**-0.5)
    args = (u, k, skip, pre, post)
    assert_close(call(*args, causal=False), numpy_fftconv(*args, causal=False), **F32_TOL)


def test_frequency_sparse_known_answer(key):
    """Keeping only the DC bin leaves y[t] = X(0) K(0) / N = sum(u) sum(k) / N at every t."""
    u, k, *_ = make_inputs(key, 2, 48, 5, 48, gated=False)
    n = 96
    u_sum = np.sum(np.asarray(u, np.float64), axis=1, keepdims=True)
    want = np.broadcast_to(u_sum * np.sum(np.asarray(k, np.float64), axis=0) / n, u.shape)
    for impl in ("xla", "reference"):
        assert_close(jaxflash.fftconv(u, k, keep_frequencies=1, implementation=impl), want, **F32_TOL)


@pytest.mark.parametrize("keep,causal", [(7, True), (49, True), (20, False)])
def test_frequency_sparse_matches_float64(key, keep, causal):
    u, k, skip, pre, post = make_inputs(key, 2, 96, 111, 96)
    if not causal:
        k = jnp.concatenate([k, k[::-1]], axis=0)
    args = (u, k, skip, pre, post)
    y = call(*args, keep_frequencies=keep, causal=causal)
    assert_close(y, numpy_fftconv(*args, keep=keep, causal=causal), **F32_TOL)


def test_frequency_sparse_all_bins_is_dense(key):
    args = make_inputs(key, 2, 40, 3, 40)
    assert_close(call(*args, keep_frequencies=41), numpy_fftconv(*args), **F32_TOL)


# --- gradients -----------------------------------------------------------------------------------------


GRAD_CASES = [
    dict(batch=2, seq=7, chans=111, kernel_len=7),  # direct
    dict(batch=3, seq=257, chans=111, kernel_len=257),  # whole-sequence rfft
    dict(batch=2, seq=600, chans=7, kernel_len=90),  # overlap-add forward, rfft backward
    dict(batch=2, seq=64, chans=5, kernel_len=64, keep=9),
    dict(batch=2, seq=64, chans=5, kernel_len=128, causal=False),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("gated", [False, True])
def test_grads_match_float64(key, case, gated):
    case = dict(case)
    kw = dict(causal=case.pop("causal", True), keep_frequencies=case.pop("keep", None))
    args = make_inputs(key, **case, gated=gated)
    if not gated:  # the ungated runs also cover skip=None
        args = (*args[:2], None, None, None)
    cot = random_normal(jax.random.fold_in(key, 7), args[0].shape)
    want, idx = float64_grads(args, cot, **kw)

    def loss(*diff):
        full = list(args)
        for i, d in zip(idx, diff, strict=True):
            full[i] = d
        return jnp.sum(call(*full, **kw) * cot)

    got = jax.grad(loss, argnums=tuple(range(len(idx))))(*[args[i] for i in idx])
    names = ["u", "k", "skip", "pre_gate", "post_gate"]
    for i, g, w in zip(idx, got, want, strict=True):
        # dk and dskip sum over batch and sequence: scale the tolerance with sqrt(batch * seq).
        scale = np.sqrt(case["batch"] * case["seq"]) if names[i] in ("k", "skip") else 1.0
        assert_close(g, w, atol=F32_TOL["atol"] * scale, rtol=F32_TOL["rtol"], err_msg=f"d{names[i]}")


def test_grads_close_to_reference_autodiff(key):
    args = make_inputs(key, 2, 100, 4, 100)
    assert_grads_close(
        lambda *a: call(*a), lambda *a: call(*a, implementation="reference"), args, key=key, scale=10.0
    )


# --- short_conv ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("taps", [1, 3, 4])
@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_short_conv_matches_numpy(key, taps, impl):
    k1, k2, k3 = jax.random.split(key, 3)
    u = random_normal(k1, (2, 19, 111))
    w = random_normal(k2, (taps, 111))
    b = random_normal(k3, (111,))
    un, wn = np.asarray(u, np.float64), np.asarray(w, np.float64)
    # torch Conv1d(groups=C, padding=taps-1)[..., :seq]: y[t] = sum_j w[j] u[t - taps + 1 + j]
    up = np.pad(un, ((0, 0), (taps - 1, 0), (0, 0)))
    want = sum(wn[j] * up[:, j : j + 19] for j in range(taps)) + np.asarray(b, np.float64)
    assert_close(jaxflash.short_conv(u, w, bias=b, implementation=impl), want, **F32_TOL)


def test_short_conv_grads(key):
    k1, k2, k3 = jax.random.split(key, 3)
    args = (random_normal(k1, (2, 11, 5)), random_normal(k2, (3, 5)), random_normal(k3, (5,)))
    assert_grads_close(
        lambda u, w, b: jaxflash.short_conv(u, w, bias=b, implementation="xla"),
        lambda u, w, b: jaxflash.short_conv(u, w, bias=b, implementation="reference"),
        args,
        key=key,
    )


def test_short_conv_bad_input(key):
    u = random_normal(key, (2, 10, 4))
    with pytest.raises(ValueError, match=r"\[taps, channels\]"):
        jaxflash.short_conv(u, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="batch, seq, channels"):
        jaxflash.short_conv(u[0], jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="bias"):
        jaxflash.short_conv(u, jnp.ones((3, 4)), bias=jnp.ones(3))


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "u_shape,k_shape,kw,match",
    [
        ((2, 10, 4), (11, 4), {}, "longer than the sequence"),
        ((2, 10, 4), (10, 3), {}, "3 channels but u has 4"),
        ((10, 4), (10, 4), {}, r"\[batch, seq, channels\]"),
        ((2, 10, 4), (10,), {}, r"\[kernel_len, channels\]"),
        ((2, 10, 4), (10, 4), dict(fft_size=16), "too small"),
        ((2, 10, 4), (9, 4), dict(causal=False), "at least as long as the sequence"),
        ((2, 10, 4), (20, 4), dict(causal=False, fft_size=32), "kernel length 20"),
        ((2, 10, 4), (10, 4), dict(keep_frequencies=0), "keep_frequencies"),
        ((2, 10, 4), (10, 4), dict(keep_frequencies=12), "keep_frequencies"),
        ((2, 10, 4), (10, 4), dict(skip=jnp.ones(3)), "skip"),
        ((2, 10, 4), (10, 4), dict(pre_gate=jnp.ones((2, 10, 3))), "pre_gate"),
        ((2, 10, 4), (10, 4), dict(post_gate=jnp.ones((1, 10, 4))), "post_gate"),
    ],
)
def test_bad_input_raises(u_shape, k_shape, kw, match):
    with pytest.raises(ValueError, match=match):
        jaxflash.fftconv(jnp.ones(u_shape), jnp.ones(k_shape), **kw)


def test_integer_input_raises():
    with pytest.raises(ValueError, match="floating-point"):
        jaxflash.fftconv(jnp.ones((1, 4, 2), jnp.int32), jnp.ones((4, 2)))


def test_bidirectional_kernel_bad_shapes():
    with pytest.raises(ValueError, match="k_forward and k_reverse"):
        ops.bidirectional_kernel(jnp.ones((4, 2)), jnp.ones((5, 2)))


def test_fast_size_and_routes():
    assert ops._fast_size(1999) == 2000 and ops._fast_size(2048) == 2048 and ops._fast_size(7) == 8
    assert all(ops._fast_size(n) >= n for n in range(1, 300))
    assert ops._route(1000, 8, True, None) == "direct"
    assert ops._route(1000, 200, True, None) == "blocks"
    assert ops._route(1000, 1000, True, None) == "fft"
    assert ops._route(1000, 8, True, 4) == "fft"
    assert tolerance(jnp.float32)["atol"] <= F32_TOL["atol"]


@pytest.mark.parametrize("chans", [48, 111], ids=["channel-last-slices", "channel-first-rows"])
def test_channel_chunking(key, monkeypatch, chans):
    """A tiny chunk budget forces the chunked loops (the big-sequence layouts) at test sizes."""
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 1024)
    # A sequence length used nowhere else, so no jit cache entry traced with the default budget is hit.
    args = make_inputs(key, 2, 101, chans, 101)
    assert ops._channel_chunk(2, chans, ops._fast_size(201)) < chans
    assert_close(call(*args), numpy_fftconv(*args), **F32_TOL)
    cot = random_normal(jax.random.fold_in(key, 7), args[0].shape)
    want, idx = float64_grads(args, cot)
    got = jax.grad(lambda *a: jnp.sum(call(*a) * cot), argnums=tuple(range(5)))(*args)
    for name, g, w in zip("u k skip pre post".split(), got, want, strict=True):
        scale = np.sqrt(2 * 101) if name in ("k", "skip") else 1.0
        assert_close(g, w, atol=F32_TOL["atol"] * scale, rtol=F32_TOL["rtol"], err_msg=f"d{name}")
