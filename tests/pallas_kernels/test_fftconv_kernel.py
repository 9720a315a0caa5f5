"""The FFT convolution kernels (pallas_kernels/fftconv/) in interpret mode on CPU (compiled on GPU/TPU),
through jaxflash.fftconv with their FFTConvConfig, against float64 NumPy and the reference's autodiff;
and their plans and stages, by the kernel modules' public functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxflash.pallas_kernels import fftconv as fk
from jaxflash.pallas_kernels.fftconv import outer_dft, stages

import jaxflash
from jaxflash.ops.fftconv import FFTConvConfig, kept_frequency_mask
from jaxflash.testing import assert_close, assert_grads_close, kernel_implementation, random_normal
from jaxflash.testing.fftconv import check_against_reference, float64_fftconv, random_inputs

IMPL = kernel_implementation()
# Two batch rows per program: batch 5 gives 3 programs along the batch axis, channels 3 along the other.
SMALL = FFTConvConfig(block_rows=2)
F32_TOL = dict(atol=1e-4, rtol=1e-4)
HIGHEST = jax.lax.Precision.HIGHEST


def run(args, *, keep=None, fft_size=None, causal=True, config=SMALL, implementation=IMPL):
    """``jaxflash.fftconv`` on ``(u, k, skip, pre, post)``. A dense causal call runs at the kernels' own
    FFT size, the next power of two >= seq + kernel_len - 1 when interpreted; the tests pick sizes that
    make it the one they mean."""
    u, k, skip, pre, post = args
    return jaxflash.fftconv(
        u,
        k,
        skip=skip,
        pre_gate=pre,
        post_gate=post,
        causal=causal,
        fft_size=fft_size,
        keep_frequencies=keep,
        implementation=implementation,
        config=config,
    )


def want(args, n, keep=None):
    """float64: the size-n circular convolution (the causal one when n >= seq + kernel_len - 1)."""
    return float64_fftconv(*args, fft_size=n, keep=keep)


def circular(args, n):
    """The same causal problem as a size-n circular one: the kernel zero-padded to n, which pins the
    kernels' FFT size at n."""
    u, k, *rest = args
    return (u, jnp.pad(k, ((0, n - k.shape[0]), (0, 0))), *rest)


def grad_check(key, args, *, keep=None, causal=True, scale=10.0, config=SMALL):
    def kern(*a):
        return run(a, keep=keep, causal=causal, config=config)

    def ref(*a):
        return run(a, keep=keep, causal=causal, config=None, implementation="reference")

    argnums = [i for i, a in enumerate(args) if a is not None]
    assert_grads_close(kern, ref, args, key=key, argnums=argnums, scale=scale)


# --- config, plan and stages (plain jnp, fast) -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_rows=3), "block_rows"),
        (dict(row_block_rows=0), "row_block_rows"),
        (dict(min_dim=12), "min_dim"),
        (dict(max_order2_size=100), "max_order2_size"),
        (dict(inner_size=2), "inner_size"),
        (dict(max_dense_outer=1), "max_dense_outer"),
        (dict(num_warps=0), "num_warps"),
        (dict(num_stages=1.5), "num_stages"),
    ],
)
def test_config_validates_its_fields(kwargs, match):
    with pytest.raises(ValueError, match=rf"FFTConvConfig.{match} must be"):
        FFTConvConfig(**kwargs)


def test_factor_and_plan():
    assert stages.factor(32) == (8, 4) and stages.factor(64) == (8, 8) and stages.factor(16384) == (128, 128)
    with pytest.raises(ValueError, match="power-of-two"):
        stages.factor(48)
    plan = stages.make_stage_plan(seq_len=13, kernel_len=5, n=64, kept=None)
    assert plan.rows_in == 2 and plan.rows_dk == 1 and plan.cols == tuple(range(8))
    sparse = stages.make_stage_plan(seq_len=32, kernel_len=32, n=64, kept=kept_frequency_mask(64, 9))
    # Bins 0..8 sit in columns k2 = 0, 1 (bin k1 + 8 k2), their mirrors 56..63 in k2 = 7; padded to
    # a power of two with the dropped column 2 (its kernel spectrum is zeroed): half the work skipped.
    assert sparse.cols == (0, 1, 2, 7)


def test_stages_give_digit_reversed_fft(key):
    """F_{N1} X, twiddle, @ F_{N2} is the FFT with bin k1 + N1 k2 at [k1, k2] (no permutation)."""
    n = 64
    plan = stages.make_stage_plan(n // 2, n // 2, n, None)
    x = random_normal(key, (n // 2,))
    dft = stages.Stages(stages.stage_constants(plan, plan.rows_out, jnp.float32), jnp.float32, HIGHEST)
    br, bi = dft.forward(x.reshape(plan.rows_in, plan.n2))
    expected = np.fft.fft(np.asarray(x, np.float64), n=n).reshape(plan.n2, plan.n1).T
    assert_close(br, expected.real, **F32_TOL)
    assert_close(bi, expected.imag, **F32_TOL)


def test_compiled_size_limits():
    assert fk.fft_size_ok(64, compiled=False) is None
    assert "power-of-two" in fk.fft_size_ok(96, compiled=False)
    assert ">= 256" in fk.fft_size_ok(64, compiled=True)
    assert fk.fft_size_ok(2 * fk.MAX_FFT_SIZE, compiled=True) is None  # order 3
    assert fk.fft_size_ok(fk.MAX_PALLAS_FFT_SIZE, compiled=True) is None  # order 4
    assert "order-4" in fk.fft_size_ok(2 * fk.MAX_PALLAS_FFT_SIZE, compiled=False)
    assert fk.smallest_fft_size(300, compiled=True) == 512 and fk.smallest_fft_size(5, compiled=True) == 256
    # The limits follow the config: 4 rows of 16 at most, and at least two rows past order 2.
    small = FFTConvConfig(max_order2_size=32, inner_size=16, max_dense_outer=2)
    assert small.max_fft_size == 64 and fk.fft_size_ok(64, False, small) is None
    assert "order-4" in fk.fft_size_ok(128, False, small)
    assert "two rows" in fk.fft_size_ok(64, False, FFTConvConfig(max_order2_size=32, inner_size=64))


def test_sizes_past_the_config_fall_back_to_xla(key):
    args = random_inputs(key, 2, 60, 2, 60)
    small = FFTConvConfig(max_order2_size=32, inner_size=16, max_dense_outer=2)
    with pytest.raises(NotImplementedError, match="order-4 split"):
        run(args, config=small)
    # A default order with this config: the Pallas path refuses it, the XLA path refuses the config.
    with pytest.raises(NotImplementedError, match="no implementation of 'fftconv' could serve"):
        run(args, config=small, implementation=None)
    y = run(args, config={IMPL: small, "xla": None}, implementation=[IMPL, "xla"])
    assert_close(y, want(args, 128), **F32_TOL)


# --- forward -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seq,kernel_len,n",
    [(13, 13, 32), (30, 7, 64), (16, 16, 32)],  # odd full kernel; partial kernel with slack; exact 2L
)
def test_forward_matches_float64(key, seq, kernel_len, n):
    args = random_inputs(key, 5, seq, 3, kernel_len)
    y = run(args)
    assert y.shape == (5, seq, 3) and y.dtype == jnp.float32
    assert_close(y, want(args, n), **F32_TOL)


def test_forward_odd_channels_ungated(key):
    args = random_inputs(key, 2, 9, 111, 9, gated=False)
    assert_close(run(args), want(args, 32), **F32_TOL)


def test_forward_bf16(key):
    args = random_inputs(key, 5, 20, 3, 20, dtype=jnp.bfloat16)
    y = run(args)
    assert y.dtype == jnp.bfloat16
    # bf16 matmul operands in four DFT stages: a few bf16 ulps of the output's scale.
    assert_close(y, want(args, 64), dtype=jnp.bfloat16, scale=4.0)


@pytest.mark.parametrize("keep", [1, 5, 17])
def test_frequency_sparse(key, keep):
    args = random_inputs(key, 5, 16, 3, 16)
    assert_close(run(args, keep=keep), want(args, 32, keep), **F32_TOL)


def test_circular_kernel(key):
    u, _, skip, pre, post = random_inputs(key, 5, 16, 3, 16)
    k = random_normal(jax.random.fold_in(key, 3), (32, 3), scale=32**-0.5)
    args = (u, k, skip, pre, post)
    assert_close(run(args, causal=False), want(args, 32), **F32_TOL)


# --- gradients ----------------------------------------------------------------------------------------------


def test_grads_gated(key):
    # dk sums over batch * seq = 65 products: tolerance scaled accordingly.
    grad_check(key, random_inputs(key, 5, 13, 3, 9))


def test_grads_sparse_circular_ungated(key):
    u, _, skip, _, _ = random_inputs(key, 5, 16, 3, 16, gated=False)
    k = random_normal(jax.random.fold_in(key, 3), (32, 3), scale=32**-0.5)
    grad_check(key, (u, k, skip, None, None), keep=6, causal=False)


# --- through the public op with the default config ---------------------------------------------------------


def test_public_op_kernel_path(key):
    args = random_inputs(key, 3, 21, 4, 21)
    assert_close(run(args, config=None), want(args, 64), **F32_TOL)


def test_public_op_refuses_non_power_of_two_sparse(key):
    u, k, *_ = random_inputs(key, 2, 12, 2, 12, gated=False)
    # Frequency bins of N = 2 * 12 = 24 cannot be laid out by the power-of-two kernel.
    with pytest.raises(NotImplementedError, match="power-of-two"):
        jaxflash.fftconv(u, k, keep_frequencies=3, implementation=IMPL)
    # ... and the default order falls back to the XLA path.
    y = jaxflash.fftconv(u, k, keep_frequencies=3)
    assert_close(y, float64_fftconv(u, k, fft_size=24, keep=3), **F32_TOL)


def test_compiled_plan_keeps_matmul_dims_at_least_16():
    plan = stages.make_stage_plan(100, 3, 256, kept_frequency_mask(256, 2), min_dim=16)
    assert plan.n1 == plan.n2 == 16
    assert plan.rows_in == 16 and plan.rows_dk == 16 and len(plan.cols) == 16


def test_compiled_plan_shapes_in_interpret_mode(key):
    """The padded rows and columns of the compiled plan (all matmul dims >= 16) change nothing."""
    args = random_inputs(key, 3, 100, 2, 40)
    config = FFTConvConfig(block_rows=1, min_dim=16)
    assert_close(run(args, keep=20, fft_size=256, config=config), want(args, 256, 20), **F32_TOL)


def test_gpu_check_logic_in_interpret_mode():
    """The `make gpu-check` comparison (compiled kernel vs reference) run here on the interpreter."""
    from jaxflash.bench import fftconv as bench

    report = check_against_reference(16, "float32", gated=True, implementation=IMPL, batch=3, chans=2)
    assert report["y_rel_err"] < report["rel_tol"] and "dpost_rel_err" in report
    assert len(bench.GPU_CHECKS) >= 4 and all(s >= 256 for s in bench.GPU_SIZES)


# --- order 3: outer DFT (XLA) around the complex-row kernel ------------------------------------------------

# Rows of 16 samples, so sizes above 32 take the order-3 path: P = 4 .. 16 rows here.
ORDER3 = FFTConvConfig(block_rows=2, max_order2_size=32, inner_size=16)


def row_spectra(x, plan):
    """Outer stages, then each row's inner order-2 stages: the spectrum of ``x`` [1, n, 1] by row."""
    ar, ai = outer_dft.outer_forward(x, plan)  # [1, P, 1, S1, S2]
    consts = stages.stage_constants(plan.inner, plan.inner.n1, jnp.float32)
    dft = stages.Stages(consts, jnp.float32, HIGHEST)
    rows = [dft.forward(ar[0, p, 0], ai[0, p, 0]) for p in range(plan.outer)]
    return np.stack([np.asarray(r) + 1j * np.asarray(i) for r, i in rows])


def test_order3_plan():
    plan = outer_dft.make_plan(seq_len=50, kernel_len=7, n=128, inner_size=16, max_dense_outer=64)
    assert plan.outer == 8 and plan.inner.n == 16 and (plan.inner.n1, plan.inner.n2) == (4, 4)
    # Rows of the [8, 16] view: input and output in the first ceil(50 / 16) = 4, lags < 7 in one.
    assert (plan.rows_in, plan.rows_out, plan.rows_dk) == (4, 4, 1)
    with pytest.raises(ValueError, match="multiple"):
        outer_dft.make_plan(10, 10, 16, inner_size=16, max_dense_outer=64)
    with pytest.raises(ValueError, match="at most"):
        outer_dft.make_plan(10, 10, 16 * 2 * 64**2, inner_size=16, max_dense_outer=64)
    assert plan.factors == (8, 1)  # one dense outer stage
    # Order 4: 512 rows past 64 dense ones split as 32 x 16; rows in order kp = k1 + 32 k2.
    plan4 = outer_dft.make_plan(seq_len=3000, kernel_len=3000, n=16 * 512, inner_size=16, max_dense_outer=64)
    assert plan4.factors == (32, 16)
    order = outer_dft.row_order(plan4.factors)
    assert sorted(order) == list(range(512)) and order[1] == 32 and order[16] == 1


def test_order3_spectrum_layout(key):
    """Outer DFT + twiddles, then each row's inner stages, give bin kp + P * (k1 + S1 * k2) at
    [kp, k1, k2]: the layout the kernel's spectrum is stored in."""
    n = 128
    plan = outer_dft.make_plan(n, n, n, inner_size=16, max_dense_outer=64)
    x = random_normal(key, (1, n, 1))
    got = row_spectra(x, plan)
    kr, ki = outer_dft.kernel_spectrum(x[0], plan, None)
    expected = np.asarray(kr[0]) + 1j * np.asarray(ki[0])
    assert_close(got.real, expected.real, **F32_TOL)
    assert_close(got.imag, expected.imag, **F32_TOL)
    direct = np.fft.fft(np.asarray(x[0, :, 0], np.float64))
    assert_close(expected[3, 2, 1].real, direct[3 + 8 * (2 + 4 * 1)].real, **F32_TOL)


@pytest.mark.parametrize(
    "seq,kernel_len,n",
    [(30, 7, 64), (50, 50, 128), (64, 64, 128), (130, 20, 256)],  # partial; full; exact 2L; P = 16
)
def test_order3_forward_matches_float64(key, seq, kernel_len, n):
    args = random_inputs(key, 5, seq, 3, kernel_len)
    y = run(args, config=ORDER3)
    assert y.shape == (5, seq, 3) and y.dtype == jnp.float32
    assert_close(y, want(args, n), **F32_TOL)


def test_order3_circular_kernel_ungated(key):
    u, _, skip, _, _ = random_inputs(key, 3, 40, 2, 40, gated=False)
    k = random_normal(jax.random.fold_in(key, 3), (64, 2), scale=64**-0.5)
    args = (u, k, skip, None, None)
    assert_close(run(args, causal=False, config=ORDER3), want(args, 64), **F32_TOL)


def test_order3_bf16(key):
    args = random_inputs(key, 5, 40, 3, 40, dtype=jnp.bfloat16)
    y = run(args, config=ORDER3)
    assert y.dtype == jnp.bfloat16
    # bf16 operands in the row kernel's four DFT stages (the outer stages run in f32).
    assert_close(y, want(args, 128), dtype=jnp.bfloat16, scale=4.0)


def test_order3_grads_gated(key):
    # Batch 5 in blocks of 2: the kernel-gradient's last batch block is partial.
    grad_check(key, random_inputs(key, 5, 37, 3, 21), config=ORDER3)


def test_order3_frequency_sparse_skips_columns():
    # N = 256 as 16 rows of 16 (4 x 4 inner): keeping 9 bins needs inner bins 0 and 15 of every row,
    # i.e. columns k2 = 0 and 3 of the 4.
    kept = kept_frequency_mask(256, 9)
    plan = outer_dft.make_plan(128, 128, 256, inner_size=16, max_dense_outer=64, kept=kept)
    assert plan.inner.cols == (0, 3)
    mask = outer_dft.row_mask(kept, plan)
    assert mask.shape == (16, 4, 2) and mask.sum() == 2 * 9 - 1  # bins 0..8 and 248..255


@pytest.mark.parametrize("keep", [1, 9, 40])
def test_order3_frequency_sparse(key, keep):
    args = random_inputs(key, 5, 100, 3, 100)
    assert_close(run(args, keep=keep, fft_size=256, config=ORDER3), want(args, 256, keep), **F32_TOL)


def test_order3_row_blocks_of_four(key):
    """Four batch rows per row-kernel program: batch 5 is one full block and one of a single row."""
    config = FFTConvConfig(max_order2_size=32, inner_size=16, row_block_rows=4)
    grad_check(key, random_inputs(key, 5, 37, 3, 21), config=config)


def test_order3_compiled_plan_shapes_in_interpret_mode(key):
    """Rows of 256 samples (inner matmuls 16 x 16, Triton's minimum), 4 rows: the compiled plan's shapes."""
    args = random_inputs(key, 3, 300, 2, 300)
    config = FFTConvConfig(row_block_rows=1, min_dim=16, max_order2_size=256, inner_size=256)
    assert_close(run(args, config=config), want(args, 1024), **F32_TOL)


def test_public_op_order3_default_sizes(key):
    """seq 1100 -> FFT size 4096 > MAX_FFT_SIZE: the default config's order 3 (4 rows of 1024)."""
    args = random_inputs(key, 2, 1100, 2, 1100)
    assert_close(run(args, config=None), want(args, 4096), **F32_TOL)


def test_order4_default_config(key):
    """The default config at FFT size 131072: 128 rows of 1024, past 64 so order 4 (16 x 8 outer)."""
    n = 131072
    seq = n // 2 - 1000
    args = random_inputs(key, 3, seq, 2, seq)
    assert_close(run(args, config=None), want(args, n), **F32_TOL)
    # Gradients: dk sums batch * seq ~ 2e5 products.
    grad_check(key, args, scale=100.0, config=None)


# Rows of 16 samples, dense outer stages of at most 4 rows: sizes past 64 take order 4.
ORDER4 = FFTConvConfig(block_rows=2, max_order2_size=32, inner_size=16, max_dense_outer=4)


def test_order4_spectrum_layout(key):
    """Two outer stages leave outer bin k1 + P1 k2 at row k1 P2 + k2; the kernel's spectrum matches."""
    n = 16 * 8
    plan = outer_dft.make_plan(n, n, n, inner_size=16, max_dense_outer=4)
    assert plan.factors == (4, 2)
    x = random_normal(key, (1, n, 1))
    got = row_spectra(x, plan)
    kr, ki = outer_dft.kernel_spectrum(x[0], plan, None)
    assert_close(got.real, np.asarray(kr[0]), **F32_TOL)
    assert_close(got.imag, np.asarray(ki[0]), **F32_TOL)
    direct = np.fft.fft(np.asarray(x[0, :, 0], np.float64))
    kp = outer_dft.row_order(plan.factors)[3]  # row 3 = (k1 1, k2 1): outer bin 1 + 4 * 1 = 5
    assert kp == 5
    assert_close(got[3, 2, 1].real, direct[kp + 8 * (2 + 4 * 1)].real, **F32_TOL)


@pytest.mark.parametrize(
    "seq,kernel_len,n,pad",
    # 4 x 2 and 4 x 4 outer stages; full and partial kernels; 3 input rows of 16 (kernel padded to 256).
    [(70, 13, 128, False), (100, 100, 256, False), (130, 9, 256, False), (37, 37, 256, True)],
)
def test_order4_forward_matches_float64(key, seq, kernel_len, n, pad):
    args = random_inputs(key, 5, seq, 3, kernel_len)
    if pad:
        args = circular(args, n)
    assert_close(run(args, causal=not pad, config=ORDER4), want(args, n), **F32_TOL)


def test_order4_grads_gated(key):
    grad_check(key, random_inputs(key, 5, 90, 3, 41), config=ORDER4)


def test_order4_circular_bf16(key):
    u, _, skip, pre, post = random_inputs(key, 3, 70, 2, 70, dtype=jnp.bfloat16)
    k = random_normal(jax.random.fold_in(key, 3), (128, 2), jnp.bfloat16, scale=128**-0.5)
    args = (u, k, skip, pre, post)
    y = run(args, causal=False, config=ORDER4)
    assert_close(y, want(args, 128), dtype=jnp.bfloat16, scale=4.0)


def test_order4_frequency_sparse_grads(key):
    u, _, skip, pre, _ = random_inputs(key, 3, 100, 2, 100)
    k = random_normal(jax.random.fold_in(key, 3), (256, 2), scale=256**-0.5)  # circular
    args = (u, k, skip, pre, None)
    assert_close(run(args, keep=20, causal=False, config=ORDER4), want(args, 256, 20), **F32_TOL)
    grad_check(key, args, keep=20, causal=False, config=ORDER4)
