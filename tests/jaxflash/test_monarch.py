"""jaxflash.monarch_matmul, blockdiag_matmul, to_dense and project against independent references.

The ground truth is the m2 repository's definition (``blockdiag_butterfly_multiply_reference``)
transcribed into float64 NumPy with explicit block-diagonal and permutation matrices (its
``version=3``) and, for the square case, its one-einsum ``version=1``.
"""

# ruff: noqa: E741  (the m2 factor-shape letters k, q, p, l, s, r)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jaxflash
from jaxflash import monarch
from jaxflash.ops.monarch import MonarchConfig, MonarchXlaConfig
from jaxflash.testing import assert_close, assert_grads_close
from jaxflash.testing.monarch import float64_monarch, pooled_normals, random_factors, square_factors

SQUARE_N = (16, 64, 256, 1024, 4096)
# (w1 shape (k, q, p), w2 shape (l, s, r)) with l * r == k * q: rectangular, unequal and odd blocks.
RECT_SHAPES = [
    ((3, 5, 2), (5, 4, 3)),
    ((2, 6, 5), (4, 7, 3)),
    ((4, 2, 3), (2, 5, 4)),
    ((8, 8, 4), (8, 16, 8)),
    ((7, 3, 11), (3, 13, 7)),
]


def _dense_by_definition(w1, w2) -> np.ndarray:
    """M = P_out . BlockDiag(w2) . P_mid . BlockDiag(w1) in float64, one explicit matrix per factor."""
    w1 = np.asarray(w1, np.float64)
    w2 = np.asarray(w2, np.float64)
    k, q, p = w1.shape
    l, s, r = w2.shape
    b1 = scipy.linalg.block_diag(*w1)
    b2 = scipy.linalg.block_diag(*w2)
    p_mid = np.zeros((l * r, k * q))  # rearrange 'b (r l) -> b (l r)'
    for li in range(l):
        for ri in range(r):
            p_mid[li * r + ri, ri * l + li] = 1.0
    p_out = np.zeros((s * l, l * s))  # rearrange 'b (l s) -> b (s l)'
    for li in range(l):
        for si in range(s):
            p_out[si * l + li, li * s + si] = 1.0
    return p_out @ b2 @ p_mid @ b1


# --- the dense form -------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", [((4, 4, 4), (4, 4, 4)), ((8, 8, 8), (8, 8, 8)), *RECT_SHAPES])
def test_to_dense_matches_the_definition(key, shapes):
    w1, w2 = random_factors(key, *shapes)
    assert_close(monarch.to_dense(w1, w2), _dense_by_definition(w1, w2), scale=2)


@pytest.mark.parametrize("b", [4, 8, 16])
def test_square_matches_m2_single_einsum_form(key, b):
    # m2 version=1: einsum('bkp,kqp,qlk->blq') over x reshaped (batch, k, p), for k=q=p=l=s=r.
    kx, kw = jax.random.split(key)
    w1, w2 = random_factors(kw, (b, b, b), (b, b, b))
    x = pooled_normals(kx, (5, b * b))[0]
    x64, w1_64, w2_64 = (np.asarray(a, np.float64) for a in (x, w1, w2))
    expected = np.einsum("bkp,kqp,qlk->blq", x64.reshape(5, b, b), w1_64, w2_64).reshape(5, b * b)
    for impl in ("xla", "reference"):
        assert_close(jaxflash.monarch_matmul(x, w1, w2, implementation=impl), expected, scale=4)


# --- the implementations agree --------------------------------------------------------------------


@pytest.mark.parametrize("n", SQUARE_N)
def test_square_forms_agree(key, n):
    b = int(round(n**0.5))
    kx, kw = jax.random.split(key)
    w1, w2 = random_factors(kw, (b, b, b), (b, b, b))
    x = pooled_normals(kx, (3, n))[0]
    ref = jaxflash.monarch_matmul(x, w1, w2, implementation="reference")
    assert_close(jaxflash.monarch_matmul(x, w1, w2, implementation="xla"), ref, scale=4)
    if n <= 256:  # the float64 definition builds n x n permutation matrices and multiplies them
        assert_close(ref, np.asarray(x, np.float64) @ _dense_by_definition(w1, w2).T, scale=4)


RECT_BATCHES = [(), (7,), (2, 3), (1, 2, 3), (5,)]


@pytest.mark.parametrize(("shapes", "batch"), list(zip(RECT_SHAPES, RECT_BATCHES, strict=True)))
def test_rectangular_forms_agree_over_batch_dims(key, shapes, batch):
    kx, kw = jax.random.split(key)
    w1, w2 = random_factors(kw, *shapes)
    n = shapes[0][0] * shapes[0][2]
    m = shapes[1][0] * shapes[1][1]
    x = pooled_normals(kx, (*batch, n))[0]
    expected = np.asarray(x, np.float64) @ _dense_by_definition(w1, w2).T
    for impl in ("xla", "reference", None):
        y = jaxflash.monarch_matmul(x, w1, w2, implementation=impl)
        assert y.shape == (*batch, m)
        assert_close(y, expected, scale=4, err_msg=f"{impl=}")


def test_kernel_implementation_agrees_through_public_api(key):
    # The fused kernel's family (l == q, r == k, all >= 16); its own tests live in tests/pallas_kernels.
    kx, kw = jax.random.split(key)
    w1, w2 = random_factors(kw, (16, 16, 16), (16, 16, 16))
    x = pooled_normals(kx, (2, 3, 256))[0]
    ref = jaxflash.monarch_matmul(x, w1, w2, implementation="reference")
    assert_close(jaxflash.monarch_matmul(x, w1, w2, implementation="pallas_interpret"), ref, scale=4)


def test_kernel_refuses_shapes_outside_its_family(key):
    w1, w2 = random_factors(key, *RECT_SHAPES[1])  # l=4 != q=6
    x = pooled_normals(key, (2, 10))[0]
    with pytest.raises(NotImplementedError, match="l == q and r == k"):
        jaxflash.monarch_matmul(x, w1, w2, implementation="pallas_interpret")


def test_default_implementation_on_cpu_is_xla_and_registered():
    assert jaxflash.registered("monarch_matmul")["monarch_matmul"] == (
        "pallas",
        "pallas_interpret",
        "xla",
        "reference",
    )
    on_cpu = jaxflash.supported("monarch_matmul", "cpu")["monarch_matmul"]
    assert on_cpu == ("pallas_interpret", "xla", "reference")


@pytest.mark.parametrize("impl", ["xla", "reference"])
def test_bf16_against_f32_reference(key, impl):
    kx, kw = jax.random.split(key)
    w1, w2 = random_factors(kw, (16, 16, 16), (16, 16, 16))
    x = pooled_normals(kx, (4, 256))[0]
    ref = jaxflash.monarch_matmul(x, w1, w2, implementation="reference")
    y = jaxflash.monarch_matmul(
        x.astype(jnp.bfloat16), w1.astype(jnp.bfloat16), w2.astype(jnp.bfloat16), implementation=impl
    )
    assert y.dtype == jnp.bfloat16
    # Two roundings of the inputs and one of the intermediate, each 2^-8 relative.
    assert_close(y, ref, dtype=jnp.bfloat16, scale=2)


def test_mixed_dtypes_promote(key):
    w1, w2 = random_factors(key, (4, 4, 4), (4, 4, 4))
    x = pooled_normals(key, (2, 16), dtype=jnp.bfloat16)[0]
    assert jaxflash.monarch_matmul(x, w1, w2).dtype == jnp.float32


def test_jit_matches_eager_and_empty_batch(key):
    w1, w2 = random_factors(key, *RECT_SHAPES[1])
    x = pooled_normals(key, (5, 10))[0]
    f = jax.jit(lambda x, w1, w2: jaxflash.monarch_matmul(x, w1, w2, implementation="xla"))
    assert_close(f(x, w1, w2), jaxflash.monarch_matmul(x, w1, w2, implementation="xla"))
    assert jaxflash.monarch_matmul(jnp.zeros((0, 10)), w1, w2).shape == (0, 28)


# --- gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", [((8, 8, 8), (8, 8, 8)), RECT_SHAPES[0], RECT_SHAPES[4]])
def test_xla_gradients_match_reference_autodiff(key, shapes):
    kx, kw, kc = jax.random.split(key, 3)
    w1, w2 = random_factors(kw, *shapes)
    x = pooled_normals(kx, (6, shapes[0][0] * shapes[0][2]))[0]

    def f(impl):
        return lambda x, w1, w2: jaxflash.monarch_matmul(x, w1, w2, implementation=impl)

    assert_grads_close(f("xla"), f("reference"), (x, w1, w2), key=kc, scale=4)


@pytest.mark.parametrize(
    ("shapes", "rows", "chunk_bytes"),
    [
        (((8, 8, 8), (8, 8, 8)), 37, 8 * 64 * 4),  # chunks of 8 rows of 64 f32 features, a remainder of 5
        (RECT_SHAPES[4], 20, 16 * 77 * 4),  # chunks of 16 rows of 77 features, a remainder of 4
        (((8, 8, 8), (8, 8, 8)), 37, 1),  # the floor: chunks of 8 rows
        (((8, 8, 8), (8, 8, 8)), 37, 1 << 30),  # one chunk
    ],
)
def test_row_chunks_of_any_size_match_the_reference(key, shapes, rows, chunk_bytes):
    """The XLA path's row chunks (a scan forward, scan-accumulated weight gradients, a remainder chunk),
    chosen through its config: every chunk size gives the reference's product and gradients."""
    kx, kw, kc = jax.random.split(key, 3)
    w1, w2 = random_factors(kw, *shapes)
    x = pooled_normals(kx, (rows, shapes[0][0] * shapes[0][2]))[0]
    config = MonarchXlaConfig(chunk_bytes=chunk_bytes)

    def chunked(x, w1, w2):
        return jaxflash.monarch_matmul(x, w1, w2, implementation="xla", config=config)

    def reference(x, w1, w2):
        return jaxflash.monarch_matmul(x, w1, w2, implementation="reference")

    assert_close(jax.jit(chunked)(x, w1, w2), reference(x, w1, w2), scale=4)
    assert_grads_close(chunked, reference, (x, w1, w2), key=kc, scale=4)


@pytest.mark.parametrize("chunk_bytes", [0, -5, 2.0, True])
def test_xla_config_validates_chunk_bytes(chunk_bytes):
    with pytest.raises(ValueError, match="MonarchXlaConfig.chunk_bytes must be a positive integer"):
        MonarchXlaConfig(chunk_bytes=chunk_bytes)


def test_config_reaches_only_its_implementation(key):
    w1, w2 = random_factors(key, (4, 4, 4), (4, 4, 4))
    x = pooled_normals(key, (3, 16))[0]
    with pytest.raises(NotImplementedError, match="MonarchXlaConfig"):
        jaxflash.monarch_matmul(x, w1, w2, implementation="xla", config=MonarchConfig())
    with pytest.raises(NotImplementedError, match="takes no config"):
        jaxflash.monarch_matmul(x, w1, w2, implementation="reference", config=MonarchXlaConfig())
    with pytest.raises(TypeError, match="not a config of 'monarch_matmul'"):
        jaxflash.monarch_matmul(x, w1, w2, config=object())
    y = jaxflash.monarch_matmul(x, w1, w2, config={"xla": MonarchXlaConfig(chunk_bytes=1)})
    assert_close(y, monarch.reference(x, w1, w2), scale=4)


# --- projection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "m", "nblocks"),
    [(64, 64, 8), (64, 64, 4), (64, 64, 2), (32, 64, 4), (96, 48, 4), (48, 32, 4), (36, 36, 6), (16, 16, 1)],
)
def test_projection_recovers_a_monarch_matrix(key, n, m, nblocks):
    w1, w2 = random_factors(key, *monarch.monarch_shapes(n, m, nblocks))
    dense = monarch.to_dense(w1, w2)
    p1, p2 = monarch.project(dense, nblocks)
    assert p1.shape == w1.shape and p2.shape == w2.shape
    assert_close(monarch.to_dense(p1, p2), dense, scale=20)


def test_projection_error_is_monotone_in_the_number_of_blocks(key):
    # Monarch matrices with nblocks b are also Monarch with any divisor of b (each (l, k) sub-block of
    # the coarser grid is a union of finer ones with the same total rank budget, for b^2 <= n), so the
    # best-approximation error can only grow with b along 1 | 2 | 4 | 8 | 16, and is 0 at b = 1.
    n = 256
    dense = pooled_normals(key, (n, n))[0]
    errs = []
    for nb in (1, 2, 4, 8, 16):
        w1, w2 = monarch.project(dense, nb)
        errs.append(float(jnp.linalg.norm(monarch.to_dense(w1, w2) - dense)))
    total = float(jnp.linalg.norm(dense))
    assert errs[0] < 1e-4 * total
    assert all(b >= a - 1e-4 * total for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] > 0.5 * total  # a random matrix is far from the sqrt(n)-block Monarch class


@pytest.mark.parametrize(("n", "m", "nblocks"), [(64, 64, 8), (48, 32, 4)])
def test_projection_is_the_nearest_point(key, n, m, nblocks):
    kd, kp = jax.random.split(key)
    dense = pooled_normals(kd, (m, n))[0]
    w1, w2 = monarch.project(dense, nblocks)
    proj = monarch.to_dense(w1, w2)
    resid = dense - proj
    # The Monarch set is a cone, so at the optimum the residual is orthogonal to the projection.
    assert abs(float(jnp.vdot(resid, proj))) < 1e-4 * float(jnp.vdot(dense, dense))
    # Projecting again changes nothing.
    again = monarch.to_dense(*monarch.project(proj, nblocks))
    assert_close(again, proj, scale=20)
    # No nearby Monarch matrix is closer.
    best = float(jnp.linalg.norm(resid))
    for i, kk in enumerate(jax.random.split(kp, 4)):
        eps = 10.0 ** -(i + 1)
        n1, n2 = pooled_normals(kk, w1.shape, w2.shape)
        d1, d2 = w1 + eps * n1, w2 + eps * n2
        assert float(jnp.linalg.norm(dense - monarch.to_dense(d1, d2))) >= best * (1 - 1e-6)


def test_monarch_shapes_follow_fly_layout():
    assert monarch.monarch_shapes(1024, 1024, 32) == ((32, 32, 32), (32, 32, 32))
    assert monarch.monarch_shapes(64, 256, 4) == ((4, 16, 16), (4, 64, 16))
    assert monarch.monarch_shapes(256, 64, 4) == ((4, 16, 64), (4, 16, 16))


# --- blockdiag_matmul -------------------------------------------------------------------------------


@pytest.mark.parametrize(("w_shape", "batch"), [((4, 3, 5), ()), ((1, 7, 7), (6,)), ((8, 16, 8), (2, 3))])
def test_blockdiag_matches_block_diag_matrix(key, w_shape, batch):
    kx, kw = jax.random.split(key)
    w = pooled_normals(kw, w_shape)[0] * w_shape[2] ** -0.5
    x = pooled_normals(kx, (*batch, w_shape[0] * w_shape[2]))[0]
    expected = np.asarray(x, np.float64) @ scipy.linalg.block_diag(*np.asarray(w, np.float64)).T
    for impl in ("xla", "reference", None):
        assert_close(jaxflash.blockdiag_matmul(x, w, implementation=impl), expected, scale=4)


def test_blockdiag_gradients(key):
    kx, kw, kc = jax.random.split(key, 3)
    w = pooled_normals(kw, (4, 3, 5))[0]
    x = pooled_normals(kx, (3, 20))[0]

    def f(impl):
        return lambda x, w: jaxflash.blockdiag_matmul(x, w, implementation=impl)

    assert_grads_close(f("xla"), f("reference"), (x, w), key=kc, scale=4)


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_monarch_inputs_raise_value_errors_naming_shapes():
    w1 = jnp.ones((4, 4, 4))
    w2 = jnp.ones((4, 4, 4))
    with pytest.raises(ValueError, match=r"x.shape=\(2, 15\) must end in n=16"):
        jaxflash.monarch_matmul(jnp.ones((2, 15)), w1, w2)
    with pytest.raises(ValueError, match=r"compose.*w1.shape=\(4, 4, 4\).*k\*q=16.*w2.shape=\(4, 4, 3\)"):
        jaxflash.monarch_matmul(jnp.ones((2, 16)), w1, jnp.ones((4, 4, 3)))
    with pytest.raises(ValueError, match=r"3-D block stacks.*w1.shape=\(16, 16\)"):
        jaxflash.monarch_matmul(jnp.ones((2, 16)), jnp.ones((16, 16)), w2)
    with pytest.raises(ValueError, match="floating-point"):
        jaxflash.monarch_matmul(jnp.ones((2, 16), jnp.int32), w1, w2)
    with pytest.raises(ValueError, match="positive"):
        jaxflash.monarch_matmul(jnp.ones((2, 0)), jnp.ones((4, 0, 0)), jnp.ones((0, 4, 0)))
    with pytest.raises(ValueError, match="do not compose"):
        monarch.to_dense(w1, jnp.ones((3, 4, 4)))


def test_array_likes_are_converted_explicitly(key):
    w1, w2 = random_factors(key, (3, 5, 2), (5, 4, 3))
    x = pooled_normals(key, (2, 6))[0]
    want = jaxflash.monarch_matmul(x, w1, w2)
    assert_close(jaxflash.monarch_matmul(np.asarray(x).tolist(), np.asarray(w1).tolist(), w2), want)
    w = pooled_normals(key, (2, 3, 3))[0]
    y = jaxflash.blockdiag_matmul(np.asarray(x).tolist(), np.asarray(w).tolist())
    assert_close(y, jaxflash.blockdiag_matmul(x, w))


@pytest.mark.parametrize("nblocks", [4.0, True, "4", 0])
def test_non_integer_nblocks_raise(nblocks):
    with pytest.raises(ValueError, match=r"nblocks must be a positive integer; got "):
        monarch.monarch_shapes(16, 16, nblocks)
    with pytest.raises(ValueError, match="nblocks must be a positive integer"):
        monarch.project(jnp.ones((16, 16)), nblocks)


def test_bad_projection_and_blockdiag_inputs():
    with pytest.raises(ValueError, match=r"nblocks=3 must divide both the input size n=16 and .* m=16"):
        monarch.project(jnp.ones((16, 16)), 3)
    with pytest.raises(ValueError, match=r"2-D.*dense.shape=\(16,\)"):
        monarch.project(jnp.ones((16,)), 4)
    with pytest.raises(ValueError, match="positive integer"):
        monarch.monarch_shapes(16, 16, 0)
    with pytest.raises(ValueError, match=r"x.shape=\(3, 10\) must end in n=12.*w.shape=\(4, 2, 3\)"):
        jaxflash.blockdiag_matmul(jnp.ones((3, 10)), jnp.ones((4, 2, 3)))
    with pytest.raises(ValueError, match=r"w.shape=\(12,\)"):
        jaxflash.blockdiag_matmul(jnp.ones((3, 12)), jnp.ones((12,)))


def test_bench_suite_builds_and_its_float64_reference_agrees(key):
    from jaxflash.bench import monarch as bench

    cases = bench.SUITE.cases(None, True)
    assert [(c.config["d"], c.config["pass"]) for c in cases] == [
        (256, "fwd"),
        (256, "fwd+bwd"),
        (1024, "fwd"),
        (1024, "fwd+bwd"),
    ]
    assert cases[0].config["FLOP ratio"] == "8x" and cases[0].baseline == "dense jnp.matmul"
    w1, w2 = square_factors(256, seed=1)
    x = pooled_normals(key, (8, 256))[0]
    expected = float64_monarch(np.asarray(x), w1, w2)
    assert_close(jaxflash.monarch_matmul(x, w1, w2, implementation="reference"), expected, scale=4)


def test_forward_mode_needs_the_reference_path(key):
    """The fast path's custom VJP gives reverse mode only (README, known issues); the reference has jvp."""
    w1, w2 = random_factors(key, (4, 4, 4), (4, 4, 4))
    x = pooled_normals(key, (3, 16))[0]
    tangent = jnp.ones_like(x)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: jaxflash.monarch_matmul(x, w1, w2, implementation="xla"), (x,), (tangent,))
    _, jvp_ref = jax.jvp(
        lambda x: jaxflash.monarch_matmul(x, w1, w2, implementation="reference"), (x,), (tangent,)
    )
    assert_close(jvp_ref, jaxflash.monarch_matmul(tangent, w1, w2, implementation="reference"))
