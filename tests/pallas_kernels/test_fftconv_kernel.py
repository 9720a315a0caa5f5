"""The Monarch-decomposed FFT convolution kernel (pallas_kernels/fftconv.py) in interpret mode on CPU
(compiled on GPU/TPU), against float64 NumPy and against its jnp reference's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxflash.pallas_kernels import fftconv as fk

import jaxflash
from jaxflash.testing import assert_close, assert_grads_close, kernel_implementation, random_normal

IMPL = kernel_implementation()
INTERPRET = IMPL == "pallas_interpret"
# Two batch rows per program: batch 5 gives 3 programs along the batch axis, channels 3 along the other.
SMALL = fk.FFTConvConfig(block_rows=2)
F32_TOL = dict(atol=1e-4, rtol=1e-4)


def numpy_conv(u, k, skip, pre, post, n, keep=None):
    """float64: size-n circular convolution of pre * u with k, first seq samples, skip, post gate."""
    u, k = np.asarray(u, np.float64), np.asarray(k, np.float64)
    x = u if pre is None else u * np.asarray(pre, np.float64)
    kf = np.fft.rfft(k, n=n, axis=0)
    if keep is not None:
        kf[keep:] = 0
    y = np.fft.irfft(np.fft.rfft(x, n=n, axis=1) * kf[None], n=n, axis=1)[:, : u.shape[1]]
    if skip is not None:
        y = y + np.asarray(skip, np.float64) * x
    return y if post is None else y * np.asarray(post, np.float64)


def inputs(key, batch, seq, chans, kernel_len, dtype=jnp.float32, gated=True):
    ku, kk, ks, kp, kq = jax.random.split(key, 5)
    u = random_normal(ku, (batch, seq, chans), dtype)
    k = random_normal(kk, (kernel_len, chans), dtype, scale=kernel_len**-0.5)
    skip = random_normal(ks, (chans,), jnp.float32)
    pre = random_normal(kp, (batch, seq, chans), dtype) if gated else None
    post = random_normal(kq, (batch, seq, chans), dtype) if gated else None
    return u, k, skip, pre, post


def run(args, n, keep=None, config=SMALL):
    return fk.fftconv(*args, fft_size=n, keep_frequencies=keep, interpret=INTERPRET, config=config)


def as64(args):
    return [None if a is None else np.asarray(jnp.asarray(a, jnp.float32), np.float64) for a in args]


# --- plan and stages (plain jnp, fast) ------------------------------------------------------------------


def test_factor_and_plan():
    assert fk.factor(32) == (8, 4) and fk.factor(64) == (8, 8) and fk.factor(16384) == (128, 128)
    with pytest.raises(ValueError, match="power-of-two"):
        fk.factor(48)
    plan = fk.make_plan(seq_len=13, kernel_len=5, n=64, keep_frequencies=None)
    assert plan.rows_in == 2 and plan.rows_dk == 1 and plan.cols == tuple(range(8))
    sparse = fk.make_plan(seq_len=32, kernel_len=32, n=64, keep_frequencies=9)
    # Bins 0..8 sit in columns k2 = 0, 1 (bin k1 + 8 k2), their mirrors 56..63 in k2 = 7; padded to
    # a power of two with the dropped column 2 (its kernel spectrum is zeroed): half the work skipped.
    assert sparse.cols == (0, 1, 2, 7)


def test_stages_give_digit_reversed_fft(key):
    """F_{N1} X, twiddle, @ F_{N2} is the FFT with bin k1 + N1 k2 at [k1, k2] (no permutation)."""
    n = 64
    plan = fk.make_plan(n // 2, n // 2, n, None)
    x = random_normal(key, (n // 2,))
    f1r, f1i, twr, twi, f2r, f2i, *_ = fk._consts_for(plan, plan.rows_out, jnp.float32)
    mm = lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)
    xr = x.reshape(plan.rows_in, plan.n2)
    br, bi = fk._forward_fft(xr, f1r, f1i, twr, twi, f2r, f2i, mm)
    want = np.fft.fft(np.asarray(x, np.float64), n=n).reshape(plan.n2, plan.n1).T
    assert_close(br, want.real, **F32_TOL)
    assert_close(bi, want.imag, **F32_TOL)


def test_compiled_size_limits():
    assert fk.fft_size_ok(64, compiled=False) is None
    assert "power-of-two" in fk.fft_size_ok(96, compiled=False)
    assert ">= 256" in fk.fft_size_ok(64, compiled=True)
    assert fk.fft_size_ok(2 * fk.MAX_FFT_SIZE, compiled=True) is None  # order 3
    assert fk.fft_size_ok(fk.MAX_PALLAS_FFT_SIZE, compiled=True) is None  # order 4
    assert "order-4" in fk.fft_size_ok(2 * fk.MAX_PALLAS_FFT_SIZE, compiled=False)
    assert fk.smallest_fft_size(300, compiled=True) == 512 and fk.smallest_fft_size(5, compiled=True) == 256


# --- forward -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seq,kernel_len,n",
    [(13, 13, 32), (30, 7, 64), (16, 16, 32)],  # odd full kernel; partial kernel with slack; exact 2L
)
def test_forward_matches_float64(key, seq, kernel_len, n):
    args = inputs(key, 5, seq, 3, kernel_len)
    y = run(args, n)
    assert y.shape == (5, seq, 3) and y.dtype == jnp.float32
    assert_close(y, numpy_conv(*as64(args), n), **F32_TOL)


def test_forward_odd_channels_ungated(key):
    args = inputs(key, 2, 9, 111, 9, gated=False)
    assert_close(run(args, 32), numpy_conv(*as64(args), 32), **F32_TOL)


def test_forward_bf16(key):
    args = inputs(key, 5, 20, 3, 20, dtype=jnp.bfloat16)
    y = run(args, 64)
    assert y.dtype == jnp.bfloat16
    # bf16 matmul operands in four DFT stages: a few bf16 ulps of the output's scale.
    assert_close(y, numpy_conv(*as64(args), 64), dtype=jnp.bfloat16, scale=4.0)


@pytest.mark.parametrize("keep", [1, 5, 17])
def test_frequency_sparse(key, keep):
    args = inputs(key, 5, 16, 3, 16)
    assert_close(run(args, 32, keep), numpy_conv(*as64(args), 32, keep), **F32_TOL)


def test_circular_kernel(key):
    u, _, skip, pre, post = inputs(key, 5, 16, 3, 16)
    k = random_normal(jax.random.fold_in(key, 3), (32, 3), scale=32**-0.5)
    args = (u, k, skip, pre, post)
    assert_close(run(args, 32), numpy_conv(*as64(args), 32), **F32_TOL)


# --- gradients ----------------------------------------------------------------------------------------------


def _grad_check(key, args, n, keep=None, dtype=None, scale=1.0, config=SMALL):
    def kern(*a):
        return run(a, n, keep, config)

    def ref(*a):
        return fk.reference(*a, fft_size=n, keep_frequencies=keep)

    argnums = [i for i, a in enumerate(args) if a is not None]
    assert_grads_close(kern, ref, args, key=key, argnums=argnums, dtype=dtype, scale=scale)


def test_grads_gated(key):
    # dk sums over batch * seq = 65 products: tolerance scaled accordingly.
    _grad_check(key, inputs(key, 5, 13, 3, 9), 32, scale=10.0)


def test_grads_sparse_circular_ungated(key):
    u, _, skip, _, _ = inputs(key, 5, 16, 3, 16, gated=False)
    k = random_normal(jax.random.fold_in(key, 3), (32, 3), scale=32**-0.5)
    _grad_check(key, (u, k, skip, None, None), 32, keep=6, scale=10.0)


# --- through the public op ---------------------------------------------------------------------------------


def test_public_op_kernel_path(key):
    u, k, skip, pre, post = inputs(key, 3, 21, 4, 21)
    y = jaxflash.fftconv(u, k, skip=skip, pre_gate=pre, post_gate=post, implementation=IMPL)
    assert_close(y, numpy_conv(*as64((u, k, skip, pre, post)), 64), **F32_TOL)


def test_public_op_refuses_non_power_of_two_sparse(key):
    u, k, *_ = inputs(key, 2, 12, 2, 12, gated=False)
    # Frequency bins of N = 2 * 12 = 24 cannot be laid out by the power-of-two kernel.
    with pytest.raises(NotImplementedError, match="power-of-two"):
        jaxflash.fftconv(u, k, keep_frequencies=3, implementation=IMPL)
    # ... and the default order falls back to the XLA path.
    y = jaxflash.fftconv(u, k, keep_frequencies=3)
    assert_close(y, numpy_conv(*as64((u, k, None, None, None)), 24, 3), **F32_TOL)


def test_compiled_plan_keeps_matmul_dims_at_least_16():
    plan = fk.make_plan(seq_len=100, kernel_len=3, n=256, keep_frequencies=2, min_dim=16)
    assert plan.n1 == plan.n2 == 16
    assert plan.rows_in == 16 and plan.rows_dk == 16 and len(plan.cols) == 16


def test_compiled_plan_shapes_in_interpret_mode(key):
    """The padded rows and columns of the compiled plan (all matmul dims >= 16) change nothing."""
    args = inputs(key, 3, 100, 2, 40)
    config = fk.FFTConvConfig(block_rows=1, min_dim=16)
    assert_close(run(args, 256, keep=20, config=config), numpy_conv(*as64(args), 256, 20), **F32_TOL)


def test_gpu_check_logic_in_interpret_mode():
    """The `make gpu-check` comparison (compiled kernel vs reference) run here on the interpreter."""
    from jaxflash.bench import fftconv as bench

    report = bench.check_against_reference(16, "float32", gated=True, implementation=IMPL, batch=3, chans=2)
    assert report["y_rel_err"] < report["rel_tol"] and "dpost_rel_err" in report
    assert len(bench.GPU_CHECKS) >= 4 and all(s >= 256 for s in bench.GPU_SIZES)


# --- order 3: outer DFT (XLA) around the complex-row kernel ------------------------------------------------

# Rows of 16 samples, so sizes above 32 take the order-3 path: P = 4 .. 16 rows here.
ORDER3 = fk.FFTConvConfig(block_rows=2, max_order2_size=32, inner_size=16)


def test_order3_plan():
    plan = fk.make_plan3(seq_len=50, kernel_len=7, n=128, inner_size=16)
    assert plan.outer == 8 and plan.inner.n == 16 and (plan.inner.n1, plan.inner.n2) == (4, 4)
    # Rows of the [8, 16] view: input and output in the first ceil(50 / 16) = 4, lags < 7 in one.
    assert (plan.rows_in, plan.rows_out, plan.rows_dk) == (4, 4, 1)
    with pytest.raises(ValueError, match="multiple"):
        fk.make_plan3(10, 10, 16, inner_size=16)
    with pytest.raises(ValueError, match="at most"):
        fk.make_plan3(10, 10, 16 * 2 * fk.MAX_DENSE_OUTER**2, inner_size=16)
    assert plan.factors == (8, 1)  # one dense outer stage
    # Order 4: 512 rows past 64 dense ones split as 32 x 16; rows in order kp = k1 + 32 k2.
    plan4 = fk.make_plan3(seq_len=3000, kernel_len=3000, n=16 * 512, inner_size=16)
    assert plan4.factors == (32, 16)
    order = fk.row_order(plan4.factors)
    assert sorted(order) == list(range(512)) and order[1] == 32 and order[16] == 1


def test_order3_spectrum_layout(key):
    """Outer DFT + twiddles, then each row's inner stages, give bin kp + P * (k1 + S1 * k2) at
    [kp, k1, k2]: the layout kernel_spectrum3 stores the kernel in."""
    n = 128
    plan = fk.make_plan3(n, n, n, inner_size=16)
    x = random_normal(key, (1, n, 1))
    ar, ai = fk.outer_forward(x, plan)  # [1, P, 1, S1, S2]
    f1r, f1i, twr, twi, f2r, f2i, *_ = fk._consts_for(plan.inner, plan.inner.n1, jnp.float32)
    mm = lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)
    rows = [fk._forward_fft(ar[0, p, 0], f1r, f1i, twr, twi, f2r, f2i, mm, xi=ai[0, p, 0]) for p in range(8)]
    got = np.stack([np.asarray(r) + 1j * np.asarray(i) for r, i in rows])
    kr, ki = fk.kernel_spectrum3(x[0], plan)
    want = np.asarray(kr[0]) + 1j * np.asarray(ki[0])
    assert_close(got.real, want.real, **F32_TOL)
    assert_close(got.imag, want.imag, **F32_TOL)
    direct = np.fft.fft(np.asarray(x[0, :, 0], np.float64))
    assert_close(want[3, 2, 1].real, direct[3 + 8 * (2 + 4 * 1)].real, **F32_TOL)


@pytest.mark.parametrize(
    "seq,kernel_len,n",
    [(30, 7, 64), (50, 50, 128), (64, 64, 128), (33, 20, 256)],  # partial; full; exact 2L; P = 16
)
def test_order3_forward_matches_float64(key, seq, kernel_len, n):
    args = inputs(key, 5, seq, 3, kernel_len)
    y = run(args, n, config=ORDER3)
    assert y.shape == (5, seq, 3) and y.dtype == jnp.float32
    assert_close(y, numpy_conv(*as64(args), n), **F32_TOL)


def test_order3_circular_kernel_ungated(key):
    u, _, skip, _, _ = inputs(key, 3, 40, 2, 40, gated=False)
    k = random_normal(jax.random.fold_in(key, 3), (64, 2), scale=64**-0.5)
    args = (u, k, skip, None, None)
    assert_close(run(args, 64, config=ORDER3), numpy_conv(*as64(args), 64), **F32_TOL)


def test_order3_bf16(key):
    args = inputs(key, 5, 40, 3, 40, dtype=jnp.bfloat16)
    y = run(args, 128, config=ORDER3)
    assert y.dtype == jnp.bfloat16
    # bf16 operands in the row kernel's four DFT stages (the outer stages run in f32).
    assert_close(y, numpy_conv(*as64(args), 128), dtype=jnp.bfloat16, scale=4.0)


def test_order3_grads_gated(key):
    # Batch 5 in blocks of 2: the kernel-gradient's last batch block is partial.
    _grad_check(key, inputs(key, 5, 37, 3, 21), 64, scale=10.0, config=ORDER3)


def test_order3_frequency_sparse_skips_columns():
    # N = 256 as 16 rows of 16 (4 x 4 inner): keeping 9 bins needs inner bins min(ks, 16 - ks) < 2 in
    # every row, i.e. columns k2 = 0 and 3 of the 4.
    plan = fk.make_plan3(128, 128, 256, inner_size=16, keep_frequencies=9)
    assert plan.inner.cols == (0, 3)
    mask = fk._row_mask(plan)
    assert mask.shape == (16, 4, 2) and mask.sum() == 2 * 9 - 1  # bins 0..8 and 248..255


@pytest.mark.parametrize("keep", [1, 9, 40])
def test_order3_frequency_sparse(key, keep):
    args = inputs(key, 5, 100, 3, 100)
    assert_close(run(args, 256, keep, ORDER3), numpy_conv(*as64(args), 256, keep), **F32_TOL)


def test_order3_row_blocks_of_four(key):
    """Four batch rows per row-kernel program: batch 5 is one full block and one of a single row."""
    config = fk.FFTConvConfig(max_order2_size=32, inner_size=16, row_block_rows=4)
    _grad_check(key, inputs(key, 5, 37, 3, 21), 64, scale=10.0, config=config)
    with pytest.raises(ValueError, match="powers of two"):
        run(inputs(key, 2, 37, 1, 21), 64, config=fk.FFTConvConfig(row_block_rows=3))


def test_order3_compiled_plan_shapes_in_interpret_mode(key):
    """Rows of 256 samples (inner matmuls 16 x 16, Triton's minimum), 4 rows: the compiled plan's shapes."""
    args = inputs(key, 3, 300, 2, 300)
    config = fk.FFTConvConfig(row_block_rows=1, min_dim=16, max_order2_size=256, inner_size=256)
    assert_close(run(args, 1024, config=config), numpy_conv(*as64(args), 1024), **F32_TOL)


def test_public_op_order3_default_sizes(key):
    """seq 1100 -> FFT size 4096 > MAX_FFT_SIZE: the default config's order 3 (4 rows of 1024)."""
    u, k, skip, pre, post = inputs(key, 2, 1100, 2, 1100)
    y = jaxflash.fftconv(u, k, skip=skip, pre_gate=pre, post_gate=post, implementation=IMPL)
    assert_close(y, numpy_conv(*as64((u, k, skip, pre, post)), 4096), **F32_TOL)


def test_order4_default_config(key):
    """The default config at FFT size 131072: 128 rows of 1024, past 64 so order 4 (16 x 8 outer)."""
    n = 131072
    seq = n // 2 - 1000
    args = inputs(key, 3, seq, 2, seq)
    y = fk.fftconv(*args, fft_size=n, interpret=INTERPRET)
    assert_close(y, numpy_conv(*as64(args), n), **F32_TOL)
    # Gradients: dk sums batch * seq ~ 2e5 products.
    _grad_check(key, args, n, scale=100.0, config=fk.FFTConvConfig())


# Rows of 16 samples, dense outer stages of at most 4 rows: sizes past 64 take order 4.
ORDER4 = fk.FFTConvConfig(block_rows=2, max_order2_size=32, inner_size=16, max_dense_outer=4)


def test_order4_spectrum_layout(key):
    """Two outer stages leave outer bin k1 + P1 k2 at row k1 P2 + k2; kernel_spectrum3 matches."""
    n = 16 * 8
    plan = fk.make_plan3(n, n, n, inner_size=16, max_dense_outer=4)
    assert plan.factors == (4, 2)
    x = random_normal(key, (1, n, 1))
    ar, ai = fk.outer_forward(x, plan)
    f1r, f1i, twr, twi, f2r, f2i, *_ = fk._consts_for(plan.inner, plan.inner.n1, jnp.float32)
    mm = lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)
    rows = [fk._forward_fft(ar[0, r, 0], f1r, f1i, twr, twi, f2r, f2i, mm, xi=ai[0, r, 0]) for r in range(8)]
    got = np.stack([np.asarray(re) + 1j * np.asarray(im) for re, im in rows])
    kr, ki = fk.kernel_spectrum3(x[0], plan)
    assert_close(got.real, np.asarray(kr[0]), **F32_TOL)
    assert_close(got.imag, np.asarray(ki[0]), **F32_TOL)
    direct = np.fft.fft(np.asarray(x[0, :, 0], np.float64))
    kp = fk.row_order(plan.factors)[3]  # row 3 = (k1 1, k2 1): outer bin 1 + 4 * 1 = 5
    assert kp == 5
    assert_close(got[3, 2, 1].real, direct[kp + 8 * (2 + 4 * 1)].real, **F32_TOL)


@pytest.mark.parametrize(
    "seq,kernel_len,n",
    [(50, 13, 128), (100, 100, 256), (120, 9, 256), (37, 37, 256)],  # 4 x 2 and 4 x 4 outer; partial
)
def test_order4_forward_matches_float64(key, seq, kernel_len, n):
    args = inputs(key, 5, seq, 3, kernel_len)
    assert_close(run(args, n, config=ORDER4), numpy_conv(*as64(args), n), **F32_TOL)


def test_order4_grads_gated(key):
    _grad_check(key, inputs(key, 5, 90, 3, 41), 256, scale=10.0, config=ORDER4)


def test_order4_circular_bf16(key):
    u, _, skip, pre, post = inputs(key, 3, 70, 2, 70, dtype=jnp.bfloat16)
    k = random_normal(jax.random.fold_in(key, 3), (128, 2), jnp.bfloat16, scale=128**-0.5)
    args = (u, k, skip, pre, post)
    assert_close(run(args, 128, config=ORDER4), numpy_conv(*as64(args), 128), dtype=jnp.bfloat16, scale=4.0)


def test_order4_frequency_sparse_grads(key):
    u, _, skip, pre, _ = inputs(key, 3, 100, 2, 100)
    k = random_normal(jax.random.fold_in(key, 3), (256, 2), scale=256**-0.5)  # circular
    args = (u, k, skip, pre, None)
    assert_close(run(args, 256, 20, ORDER4), numpy_conv(*as64(args), 256, 20), **F32_TOL)
    _grad_check(key, args, 256, keep=20, scale=10.0, config=ORDER4)
