"""jaxflash.ops.causal_monarch: the DFT member against float64 NumPy FFTs, causality of random members
of the causal family by perturbation, the polynomial-product identity behind it, and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflash.ops import causal_monarch as cm
from jaxflash.testing import assert_close, random_normal

# (seq, n1): N = 2 * seq = n1 * n0, including odd seq, n0 odd, n1 = 2 and a non-square split.
SIZES = [(8, 4), (9, 6), (7, 2), (12, 4)]
# f32 DFTs of unit-scale signals: errors of order 1e-6 at these sizes.
F32_TOL = dict(atol=1e-4, rtol=1e-4)
# float64, but the random points and triangular bases have condition numbers up to ~1e3.
F64_TOL = dict(atol=1e-9, rtol=1e-9)


def dense(fn, monarch):
    """The N x N matrix of ``fn`` (evaluate or interpolate), column j = fn(e_j)."""
    n = monarch.n1 * monarch.n0
    return np.asarray(fn(jnp.eye(n, dtype=monarch.r_blocks.dtype), monarch)).T


def numpy_causal_conv(u, k):
    """float64 NumPy causal convolution by rfft at size 2 * seq."""
    u, k = np.asarray(u, np.float64), np.asarray(k, np.float64)
    seq = u.shape[1]
    n = 2 * seq
    kf = np.fft.rfft(k, n=n, axis=0)
    return np.fft.irfft(np.fft.rfft(u, n=n, axis=1) * kf[None], n=n, axis=1)[:, :seq]


def random_family(seed, seq, n1):
    """Random non-DFT parameters of the causal family: per-block ell, triangular r, off-circle roots."""
    rng = np.random.default_rng(seed)
    n0 = 2 * seq // n1
    ell_mask, r_mask = cm.causal_monarch_masks(seq, n1)
    ell = (np.eye(n1) + 0.3 * rng.standard_normal((n0, n1, n1))) * ell_mask
    r = (np.eye(n0) + 0.3 * rng.standard_normal((n0, n0))) * r_mask
    # Phases of rho**n0 spread over the circle (distinct); moduli off 1 so the points are not the DFT's.
    phase = 2 * np.pi * (np.arange(n1) + 0.8 * rng.uniform(size=n1)) / (n1 * n0)
    roots = rng.uniform(0.95, 1.05, size=n1) * np.exp(1j * phase)
    return ell, r, roots


def coefficient_matrix(ell, r):
    """C[a n0 + m, j1 n0 + j0] = ell[j0, a, j1] r[m, j0]: basis q_j in monomial coefficients."""
    n0, n1, _ = ell.shape
    return np.einsum("jab,mj->ambj", ell, r).reshape(n1 * n0, n1 * n0)


@pytest.mark.parametrize("seq,n1", SIZES)
def test_default_factors_are_the_dft(seq, n1):
    monarch = cm.causal_monarch(seq, n1)
    n = 2 * seq
    m = dense(cm.monarch_evaluate, monarch)
    np.testing.assert_allclose(m, np.fft.fft(np.eye(n), axis=0), atol=1e-5)
    np.testing.assert_allclose(dense(cm.monarch_interpolate, monarch) @ m, np.eye(n), atol=1e-5)


@pytest.mark.parametrize("seq,n1", SIZES)
@pytest.mark.parametrize("kernel_len", [1, None])
def test_dft_factors_give_causal_fft_conv(seq, n1, kernel_len):
    ku, kk = jax.random.split(jax.random.key(seq * 10 + n1))
    kernel_len = kernel_len or seq
    u = random_normal(ku, (2, seq, 5))
    k = random_normal(kk, (kernel_len, 5), scale=1 / np.sqrt(kernel_len))
    y = cm.causal_monarch_conv(u, k, cm.causal_monarch(seq, n1))
    assert y.dtype == jnp.float32
    assert_close(y, numpy_causal_conv(u, k), **F32_TOL)


def test_dft_factors_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        u, k = rng.standard_normal((3, 9, 4)), rng.standard_normal((9, 4))
        y = cm.causal_monarch_conv(jnp.asarray(u), jnp.asarray(k), cm.causal_monarch(9, 6))
        assert y.dtype == jnp.float64
        assert_close(y, numpy_causal_conv(u, k), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("seq,n1", SIZES)
def test_random_family_is_causal(seq, n1):
    """Changing u after position t leaves y[:t+1] unchanged, and does change y after t."""
    with jax.enable_x64(True):
        ell, r, roots = random_family(seq, seq, n1)
        monarch = cm.causal_monarch(seq, n1, ell=ell, r=r, roots=roots)
        assert np.abs(dense(cm.monarch_evaluate, monarch) - np.fft.fft(np.eye(2 * seq), axis=0)).max() > 0.1
        rng = np.random.default_rng(seq)
        u, k = rng.standard_normal((2, seq, 3)), rng.standard_normal((seq, 3))
        conv = jax.jit(cm.causal_monarch_conv)
        y = np.asarray(conv(u, k, monarch))
        for t in range(seq - 1):
            u2 = u.copy()
            u2[:, t + 1 :] += rng.standard_normal(u2[:, t + 1 :].shape)
            y2 = np.asarray(conv(u2, k, monarch))
            np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], **F64_TOL, err_msg=f"{t=}")
            assert np.abs(y2[:, t + 1 :] - y[:, t + 1 :]).max() > 1e-3


@pytest.mark.parametrize("relax", ["no degree cap", "not triangular"])
def test_relaxed_family_is_not_causal(relax):
    """Each condition is needed: without it the perturbation test fails. causal_monarch rejects such
    parameters, so the factors are built by polynomial_monarch, which checks nothing."""
    seq, n1 = 8, 4
    with jax.enable_x64(True):
        ell, r, roots = random_family(7, seq, n1)
        noise = 0.3 * np.random.default_rng(1).standard_normal(ell.shape)
        ell = (
            ell
            + (np.tril(noise) if relax == "no degree cap" else noise) * ~cm.causal_monarch_masks(seq, n1)[0]
        )
        monarch = cm.polynomial_monarch(jnp.asarray(ell), jnp.asarray(r), jnp.asarray(roots))
        rng = np.random.default_rng(2)
        u, k = rng.standard_normal((1, seq, 2)), rng.standard_normal((seq, 2))
        u2 = u.copy()
        u2[:, seq // 2 :] += 1.0
        y, y2 = (np.asarray(cm.causal_monarch_conv(a, k, monarch)) for a in (u, u2))
        assert np.abs(y2[:, : seq // 2] - y[:, : seq // 2]).max() > 1e-3


@pytest.mark.parametrize("seq,n1", SIZES)
def test_random_family_is_a_polynomial_product(seq, n1):
    """y = C^{-1} ((C k) conv (C u)), independent of the points: the identity the proof rests on."""
    with jax.enable_x64(True):
        ell, r, roots = random_family(seq + 1, seq, n1)
        n = 2 * seq
        rng = np.random.default_rng(seq)
        u, k = rng.standard_normal((2, seq, 3)), rng.standard_normal((seq, 3))
        y = cm.causal_monarch_conv(
            jnp.asarray(u), jnp.asarray(k), cm.causal_monarch(seq, n1, ell=ell, r=r, roots=roots)
        )
        c = coefficient_matrix(ell, r)
        assert np.array_equal(c, np.tril(c))
        cu = np.einsum("mj,bjc->bmc", c[:, :seq], u)
        ck = c[:, :seq] @ k
        assert np.all(cu[:, seq:] == 0) and np.all(ck[seq:] == 0)  # the degree cap
        prod = np.stack([[np.convolve(ck[:, ch], cu[b, :, ch])[:n] for ch in range(3)] for b in range(2)])
        expected = np.linalg.solve(c, prod.transpose(2, 0, 1).reshape(n, -1)).reshape(n, 2, 3)
        assert_close(y, expected.transpose(1, 0, 2)[:, :seq], **F64_TOL)


def test_polynomial_monarch_of_causal_parameters_is_causal_monarch():
    seq, n1 = 9, 6
    with jax.enable_x64(True):
        ell, r, roots = random_family(5, seq, n1)
        built = cm.causal_monarch(seq, n1, ell=ell, r=r, roots=roots)
        unchecked = cm.polynomial_monarch(jnp.asarray(ell), jnp.asarray(r), jnp.asarray(roots))
        for a, b in zip(built, unchecked, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12)


def test_jit_matches_eager_and_traced_parameters_are_masked():
    seq, n1 = 8, 4
    ell, r, roots = random_family(3, seq, n1)
    u = random_normal(jax.random.key(0), (2, seq, 3))
    k = random_normal(jax.random.key(1), (seq, 3), scale=0.3)
    monarch = cm.causal_monarch(seq, n1, ell=ell, r=r, roots=roots)
    eager = cm.causal_monarch_conv(u, k, monarch)
    assert_close(jax.jit(cm.causal_monarch_conv)(u, k, monarch), eager, **F32_TOL)
    # Under jit values cannot be checked; entries outside the pattern are dropped instead.
    ell_mask, r_mask = cm.causal_monarch_masks(seq, n1)
    noise = np.random.default_rng(0).standard_normal(ell.shape)
    traced = jax.jit(lambda e, rr: cm.causal_monarch(seq, n1, ell=e, r=rr, roots=roots))(
        ell + noise * ~ell_mask, r + noise[0] * ~r_mask
    )
    assert_close(cm.causal_monarch_conv(u, k, traced), eager, **F32_TOL)


def test_masks():
    ell_mask, r_mask = cm.causal_monarch_masks(4, 4)  # N = 8, n0 = 2
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(ell_mask, expected)
    np.testing.assert_array_equal(r_mask, np.tril(np.ones((2, 2), dtype=bool)))


def _bad_constructor_args():
    ell, r, roots = random_family(0, 8, 4)
    upper = ell.copy()
    upper[1, 0, 2] = 0.5  # above the diagonal: not minimum degree j1
    capped = ell.copy()
    capped[0, 3, 1] = 0.5  # j1 = 1 < n1/2 with a = 3 >= n1/2: breaks the degree cap
    zero_diag = ell.copy()
    zero_diag[2, 1, 1] = 0.0
    r_upper = r + np.triu(np.ones_like(r), 1)
    same = roots.copy()
    same[1] = same[0] * np.exp(2j * np.pi / 4)  # n0 = 4: same 4th power as roots[0]
    return [
        (dict(seq_len=8, n1=3), "must be even"),
        (dict(seq_len=8, n1=6), "must be even and divide"),
        (dict(seq_len=0, n1=2), "positive integer"),
        (dict(seq_len=8, n1=4, ell=upper), "outside the causal pattern"),
        (dict(seq_len=8, n1=4, ell=capped), "outside the causal pattern"),
        (dict(seq_len=8, n1=4, ell=zero_diag), "zero diagonal"),
        (dict(seq_len=8, n1=4, r=r_upper), "outside the causal pattern"),
        (dict(seq_len=8, n1=4, r=r[:3, :3]), r"r.shape"),
        (dict(seq_len=8, n1=4, ell=ell[:, :3]), r"ell.shape"),
        (dict(seq_len=8, n1=4, ell=ell.astype(np.complex64)), "real floating-point"),
        (dict(seq_len=8, n1=4, roots=same), "coincide"),
        (dict(seq_len=8, n1=4, roots=np.zeros(4)), "nonzero"),
        (dict(seq_len=8, n1=4, roots=roots[:3]), r"roots.shape"),
    ]


@pytest.mark.parametrize("kwargs,match", _bad_constructor_args())
def test_constructor_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cm.causal_monarch(**kwargs)


@pytest.mark.parametrize(
    "u_shape,k_shape,match",
    [
        ((8, 3), (8, 3), r"u must be \[batch, seq, channels\]"),
        ((2, 8, 3), (8, 4), "k must be"),
        ((2, 8, 3), (9, 3), "k must be"),
        ((2, 8, 3), (8,), "k must be"),
        ((2, 6, 3), (6, 3), "factors are for seq_len=8"),
    ],
)
def test_conv_rejects_bad_shapes(u_shape, k_shape, match):
    monarch = cm.causal_monarch(8, 4)
    with pytest.raises(ValueError, match=match):
        cm.causal_monarch_conv(jnp.ones(u_shape), jnp.ones(k_shape), monarch)


def test_conv_accepts_array_likes():
    monarch = cm.causal_monarch(8, 4)
    u = np.random.default_rng(0).standard_normal((2, 8, 3)).astype(np.float32)
    k = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32)
    y = cm.causal_monarch_conv(u.tolist(), k.tolist(), monarch)
    assert_close(y, numpy_causal_conv(u, k), **F32_TOL)


def test_conv_rejects_integer_input_and_bad_vectors():
    monarch = cm.causal_monarch(8, 4)
    with pytest.raises(ValueError, match="real floating-point"):
        cm.causal_monarch_conv(jnp.ones((2, 8, 3), jnp.int32), jnp.ones((8, 3)), monarch)
    with pytest.raises(ValueError, match="must end in N"):
        cm.monarch_evaluate(jnp.ones((2, 15), jnp.complex64), monarch)
    with pytest.raises(ValueError, match="must end in N"):
        cm.monarch_interpolate(jnp.ones((2, 17), jnp.complex64), monarch)
