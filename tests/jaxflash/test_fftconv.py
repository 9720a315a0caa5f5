"""jaxflash.fftconv / short_conv (the "xla" and "reference" paths) against float64 NumPy and float64
autodiff. The Pallas kernels' own tests are in tests/pallas_kernels/test_fftconv_kernel.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflash
from jaxflash.ops import fftconv as ops
from jaxflash.ops.fftconv import FFTConvConfig, FFTConvXlaConfig
from jaxflash.testing import assert_close, assert_grads_close, random_normal, tolerance
from jaxflash.testing.fftconv import float64_fftconv, random_inputs

# f32 FFTs of unit-scale signals: round-off grows like log N, far below 1e-4 at the sizes tested.
F32_TOL = dict(atol=1e-4, rtol=1e-4)


def numpy_fftconv(u, k, skip=None, pre=None, post=None, *, causal=True, fft_size=None, keep=None):
    """float64 NumPy: rfft convolution of size N (2 * seq causal, len(k) circular)."""
    n = fft_size or (2 * u.shape[1] if causal else k.shape[0])
    return float64_fftconv(u, k, skip, pre, post, fft_size=n, keep=keep)


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


def assert_grads_match_float64(key, args, batch, seq, **kw):
    """jax.grad through ``call`` against :func:`float64_grads`; dk and dskip sum over batch * seq terms."""
    cot = random_normal(jax.random.fold_in(key, 7), args[0].shape)
    want, idx = float64_grads(args, cot, **{k: v for k, v in kw.items() if k != "config"})

    def loss(*diff):
        full = list(args)
        for i, d in zip(idx, diff, strict=True):
            full[i] = d
        return jnp.sum(call(*full, **kw) * cot)

    got = jax.grad(loss, argnums=tuple(range(len(idx))))(*[args[i] for i in idx])
    names = ["u", "k", "skip", "pre_gate", "post_gate"]
    for i, g, w in zip(idx, got, want, strict=True):
        scale = np.sqrt(batch * seq) if names[i] in ("k", "skip") else 1.0
        assert_close(g, w, atol=F32_TOL["atol"] * scale, rtol=F32_TOL["rtol"], err_msg=f"d{names[i]}")


# --- forward against float64 NumPy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,seq,chans,kernel_len",
    [
        (2, 7, 111, 7),  # odd sizes, short kernel
        (3, 100, 111, 100),  # full kernel
        (2, 539, 111, 539),
        (2, 539, 111, 97),  # partial convolution
        (2, 1000, 16, 1000),  # N >= 1999: not a power of two
        (2, 4096, 16, 4096),
        (1, 4096, 5, 3),  # short kernel
        (1, 2**16, 3, 2**16),
        (1, 2**16, 3, 1000),
    ],
)
def test_xla_matches_float64(key, batch, seq, chans, kernel_len):
    args = random_inputs(key, batch, seq, chans, kernel_len)
    y = call(*args)
    assert y.shape == (batch, seq, chans) and y.dtype == jnp.float32
    assert_close(y, numpy_fftconv(*args), **F32_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("seq,kernel_len", [(2**20, 2**20), (2**20, 4096), (300_001, 300_001)])
def test_xla_matches_float64_long(key, seq, kernel_len):
    args = random_inputs(key, 1, seq, 2, kernel_len)
    assert_close(call(*args), numpy_fftconv(*args), **F32_TOL)


@pytest.mark.parametrize("gated", [False, True])
def test_reference_matches_float64(key, gated):
    args = random_inputs(key, 2, 33, 111, 20, gated=gated)
    assert_close(call(*args, implementation="reference"), numpy_fftconv(*args), **F32_TOL)


def test_skip_and_gates_optional(key):
    u, k, *_ = random_inputs(key, 2, 50, 6, 50, gated=False)
    assert_close(jaxflash.fftconv(u, k, implementation="xla"), numpy_fftconv(u, k), **F32_TOL)


def test_bf16_inputs(key):
    args = random_inputs(key, 2, 300, 8, 300, dtype=jnp.bfloat16)
    y = call(*args)
    assert y.dtype == jnp.bfloat16
    # bf16 rounding of the inputs and of the output; the computation itself is f32.
    assert_close(y, numpy_fftconv(*args), dtype=jnp.bfloat16, scale=2.0)


def test_explicit_fft_size_gives_same_linear_convolution(key):
    args = random_inputs(key, 2, 40, 3, 25)
    assert_close(call(*args, fft_size=64), numpy_fftconv(*args), **F32_TOL)
    assert_close(call(*args, fft_size=64, implementation="reference"), numpy_fftconv(*args), **F32_TOL)


def test_jit_matches_eager_and_default_dispatch(key):
    args = random_inputs(key, 2, 129, 5, 129)
    eager = call(*args)
    jitted = jax.jit(lambda *a: call(*a))(*args)
    assert_close(jitted, eager, **F32_TOL)
    assert_close(call(*args, implementation=None), eager, **F32_TOL)


# --- the XLA path's regimes and its config ----------------------------------------------------------------

# Each forces one form of the XLA path: direct sums, overlap-add, whole-sequence rffts.
REGIMES = {
    "direct": FFTConvXlaConfig(direct_max_taps=10_000),
    "overlap-add": FFTConvXlaConfig(direct_max_taps=0, overlap_add_max_fraction=1.0),
    "whole-sequence": FFTConvXlaConfig(direct_max_taps=0, overlap_add_max_fraction=0.0),
}


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("kernel_len", [3, 12, 45])  # short, partial and full kernels of seq 45
def test_config_moving_the_thresholds_gives_the_same_answer(key, regime, kernel_len):
    """Each form serves every causal kernel length alike: forward and gradients against float64."""
    args = random_inputs(key, 2, 45, 7, kernel_len)
    config = REGIMES[regime]
    assert_close(call(*args, config=config), numpy_fftconv(*args), **F32_TOL)
    assert_grads_match_float64(key, args, 2, 45, config=config)


def test_frequency_sparse_ignores_the_thresholds(key):
    """Frequency-sparse bins are those of the size-N rfft, whatever the thresholds say."""
    args = random_inputs(key, 2, 96, 3, 5)
    want = numpy_fftconv(*args, keep=9)
    for config in REGIMES.values():
        assert_close(call(*args, keep_frequencies=9, config=config), want, **F32_TOL)


@pytest.mark.parametrize("chans", [48, 111], ids=["channel-last-slices", "channel-first-rows"])
def test_channel_chunking(key, chans):
    """A tiny chunk budget makes the XLA path loop over channel chunks, forward and backward."""
    config = FFTConvXlaConfig(chunk_elements=1024)
    args = random_inputs(key, 2, 101, chans, 101)
    program = str(jax.make_jaxpr(lambda *a: call(*a, config=config))(*args))
    assert "scan" in program or "while" in program
    assert_close(call(*args, config=config), numpy_fftconv(*args), **F32_TOL)
    assert_grads_match_float64(key, args, 2, 101, config=config)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(direct_max_taps=-1), "direct_max_taps"),
        (dict(direct_max_taps=2.5), "direct_max_taps"),
        (dict(overlap_add_max_fraction=1.5), "overlap_add_max_fraction"),
        (dict(chunk_elements=0), "chunk_elements"),
    ],
)
def test_xla_config_validates_its_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FFTConvXlaConfig(**kwargs)


def test_config_of_another_implementation_is_refused(key):
    args = random_inputs(key, 2, 16, 2, 16)
    with pytest.raises(NotImplementedError, match="FFTConvXlaConfig"):
        call(*args, implementation="xla", config=FFTConvConfig())
    with pytest.raises(NotImplementedError, match="takes no config"):
        call(*args, implementation="reference", config=FFTConvXlaConfig())
    # A mapping gives each implementation its own; the XLA path gets its config.
    y = call(*args, config={"xla": REGIMES["direct"]})
    assert_close(y, numpy_fftconv(*args), **F32_TOL)


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
    u, _, skip, pre, post = random_inputs(key, 2, seq, 111, seq)
    k = random_normal(jax.random.fold_in(key, 1), (n, 111), scale=n**-0.5)
    args = (u, k, skip, pre, post)
    assert_close(call(*args, causal=False), numpy_fftconv(*args, causal=False), **F32_TOL)


def test_frequency_sparse_known_answer(key):
    """Keeping only the DC bin leaves y[t] = X(0) K(0) / N = sum(u) sum(k) / N at every t."""
    u, k, *_ = random_inputs(key, 2, 48, 5, 48, gated=False)
    n = 96
    u_sum = np.sum(np.asarray(u, np.float64), axis=1, keepdims=True)
    want = np.broadcast_to(u_sum * np.sum(np.asarray(k, np.float64), axis=0) / n, u.shape)
    for impl in ("xla", "reference"):
        assert_close(jaxflash.fftconv(u, k, keep_frequencies=1, implementation=impl), want, **F32_TOL)


@pytest.mark.parametrize("keep,causal", [(7, True), (49, True), (20, False)])
def test_frequency_sparse_matches_float64(key, keep, causal):
    u, k, skip, pre, post = random_inputs(key, 2, 96, 111, 96)
    if not causal:
        k = jnp.concatenate([k, k[::-1]], axis=0)
    args = (u, k, skip, pre, post)
    y = call(*args, keep_frequencies=keep, causal=causal)
    assert_close(y, numpy_fftconv(*args, keep=keep, causal=causal), **F32_TOL)


def test_frequency_sparse_all_bins_is_dense(key):
    args = random_inputs(key, 2, 40, 3, 40)
    assert_close(call(*args, keep_frequencies=41), numpy_fftconv(*args), **F32_TOL)


def test_kept_frequency_mask_is_the_rfft_bins_and_mirrors():
    mask = ops.kept_frequency_mask(16, 3)
    assert np.flatnonzero(mask).tolist() == [0, 1, 2, 14, 15]
    assert ops.kept_frequency_mask(16, None).all() and ops.kept_frequency_mask(16, 9).all()


# --- gradients -----------------------------------------------------------------------------------------


GRAD_CASES = [
    dict(batch=2, seq=7, chans=111, kernel_len=7),  # short kernel
    dict(batch=3, seq=257, chans=111, kernel_len=257),  # full kernel
    dict(batch=2, seq=600, chans=7, kernel_len=90),  # partial kernel
    dict(batch=2, seq=64, chans=5, kernel_len=64, keep=9),
    dict(batch=2, seq=64, chans=5, kernel_len=128, causal=False),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("gated", [False, True])
def test_grads_match_float64(key, case, gated):
    case = dict(case)
    kw = dict(causal=case.pop("causal", True), keep_frequencies=case.pop("keep", None))
    args = random_inputs(key, **case, gated=gated)
    if not gated:  # the ungated runs also cover skip=None
        args = (*args[:2], None, None, None)
    assert_grads_match_float64(key, args, case["batch"], case["seq"], **kw)


def test_grads_close_to_reference_autodiff(key):
    args = random_inputs(key, 2, 100, 4, 100)
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


@pytest.mark.parametrize("name", ["u", "w", "bias"])
def test_short_conv_refuses_integer_inputs(key, name):
    """Integers would be truncated by the float kernels' cast back to u's dtype: refused instead."""
    args = dict(u=random_normal(key, (2, 10, 4)), w=jnp.ones((3, 4)), bias=jnp.ones(4))
    args[name] = args[name].astype(jnp.int32)
    with pytest.raises(ValueError, match=rf"{name} must be a floating-point array; got int32"):
        jaxflash.short_conv(args["u"], args["w"], bias=args["bias"])


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
        ((2, 10, 4), (10, 4), dict(fft_size=2**50), r"fft_size=1125899906842624 .* needs ~"),
    ],
)
def test_bad_input_raises(u_shape, k_shape, kw, match):
    with pytest.raises(ValueError, match=match):
        jaxflash.fftconv(jnp.ones(u_shape), jnp.ones(k_shape), **kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(fft_size=2048.0), r"fft_size must be an integer; got fft_size=2048.0 \(float\)"),
        (dict(fft_size=True), "fft_size must be an integer"),
        (dict(keep_frequencies=3.0), "keep_frequencies must be an integer"),
    ],
)
def test_non_integer_sizes_raise_type_errors(kw, match):
    with pytest.raises(TypeError, match=match):
        jaxflash.fftconv(jnp.ones((2, 10, 4)), jnp.ones((10, 4)), **kw)


def test_numpy_integer_sizes_are_accepted(key):
    args = random_inputs(key, 2, 40, 3, 25)
    y = call(*args, fft_size=np.int64(64), keep_frequencies=np.int32(33))
    assert_close(y, numpy_fftconv(*args, fft_size=64, keep=33), **F32_TOL)


def test_lists_are_converted_explicitly(key):
    u, k, skip, pre, post = (np.asarray(a) for a in random_inputs(key, 2, 12, 3, 12))
    want = numpy_fftconv(u, k, skip, pre, post)
    y = call(u.tolist(), k.tolist(), skip.tolist(), pre.tolist(), post.tolist())
    assert y.dtype == jnp.float32
    assert_close(y, want, **F32_TOL)
    assert_close(jaxflash.short_conv(u.tolist(), k[:3].tolist()), jaxflash.short_conv(u, k[:3]))


def test_integer_input_raises():
    with pytest.raises(ValueError, match="floating-point"):
        jaxflash.fftconv(jnp.ones((1, 4, 2), jnp.int32), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="u must be a floating-point array"):
        jaxflash.fftconv([[[1, 2]]], jnp.ones((1, 2)))


def test_non_finite_input_spreads_over_its_signal(key):
    """The documented behaviour: a NaN in one (batch, channel) signal makes that whole output NaN,
    earlier samples included, and leaves the other signals finite."""
    u, k, *_ = random_inputs(key, 2, 64, 3, 64, gated=False)
    u = u.at[0, 40, 1].set(jnp.nan)
    for impl in ("xla", "reference"):
        y = np.asarray(jaxflash.fftconv(u, k, implementation=impl))
        assert np.isnan(y[0, :, 1]).all(), impl
        assert np.isfinite(np.delete(y.reshape(-1, 3)[:64], 1, axis=1)).all()
        assert np.isfinite(y[1]).all()


def test_bidirectional_kernel_bad_shapes():
    with pytest.raises(ValueError, match="k_forward and k_reverse"):
        ops.bidirectional_kernel(jnp.ones((4, 2)), jnp.ones((5, 2)))


def test_f32_tolerance_is_within_the_table():
    assert tolerance(jnp.float32)["atol"] <= F32_TOL["atol"]
