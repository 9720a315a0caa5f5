"""Causal Monarch convolution: M2-GPT's sequence mixer as polynomial evaluation and interpolation.

Source. Fu et al. 2023, "Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture" (arXiv
2310.12109, M2-GPT) make the map ``u -> M^{-1} ((M k) * (M u))`` causal without masking. They read
Monarch multiplication as evaluating a multivariate polynomial at a set of points, and ``M^{-1}`` as
interpolation. The parameters are restricted so that the map is a product of polynomials of bounded
degree, and the inputs are zero-padded from length ``L`` to ``N = 2L``. The paper's own theorem and
its exact conditions were not available to this project (``reference/kernels.md`` section 4.3; the
m2 repository has no causal code). The family below and its proof are derived here, and the tests
check them; the paper's own family may be narrower or broader. The FFT convolution of FlashFFTConv
is one member of the family.

**Indexing.** ``N = 2L = n1 * n0`` with ``n1`` even. Coefficient (input) index ``j = j1 n0 + j0``
(``j1 < n1``, ``j0 < n0``). Point (output) index ``i = i0 + n1 i1`` (``i0 < n1``, ``i1 < n0``).

**Basis and points.** The basis polynomial of input ``j`` is::

    q_j(Z) = ell_{j0,j1}(Z^n0) * r_{j0}(Z),
    ell_{j0,j1}(X) = sum_a ell[j0, a, j1] X^a,    r_{j0}(Z) = sum_m r[m, j0] Z^m.

It is evaluated at the ``N`` points ``z_{i0,i1} = rho_{i0} w^{i1}``, where ``w = exp(-2 pi i / n0)``.
Every ``z`` in group ``i0`` has ``z^n0 = x_{i0} := rho_{i0}^n0``. With ``U(Z) = sum_j u_j q_j(Z)``,
``(M u)_i = U(z_i)``, and ``M`` is the order-2 Monarch matrix ``M = P . L . P . R``::

    R (n0 blocks j0, j1 -> i0):  R_{j0}[i0, j1] = ell_{j0,j1}(x_{i0})     = (V_x ell[j0])[i0, j1]
    L (n1 blocks i0, j0 -> i1):  L_{i0}[i1, j0] = r_{j0}(rho_{i0} w^{i1}) = (F diag(rho_{i0}^m) r)[i1, j0]

Here ``V_x`` is the Vandermonde matrix of the ``x_{i0}`` and ``F`` is the size-``n0`` DFT.
Interpolation is ``M^{-1} = R^{-1} . P . L^{-1} . P``, again two block-diagonal factors, with
``R_{j0}^{-1} = ell[j0]^{-1} V_x^{-1}`` and ``L_{i0}^{-1} = r^{-1} diag(rho_{i0}^{-m}) F^{-1}``.

**Causal family.** The map ``y = M^{-1} ((M k_pad) * (M u_pad))[:L]`` is causal when:

1. ``r`` is lower triangular with a nonzero diagonal, so ``r_{j0}`` has minimum degree ``j0``.
2. Each ``ell[j0]`` is lower triangular with a nonzero diagonal (``ell_{j0,j1}`` has minimum degree
   ``j1``). In addition ``ell[j0, a, j1] = 0`` for ``a >= n1/2 > j1``. This degree cap keeps
   ``deg q_j < L`` for every ``j < L``.
3. The ``x_{i0} = rho_{i0}^n0`` are nonzero and pairwise distinct, so that ``M`` is invertible.

The mask of conditions 1 and 2 is :func:`causal_monarch_masks`.

*Proof.* Write ``q_j(Z) = sum_m C[m, j] Z^m``. Then ``C[a n0 + m, j1 n0 + j0] = ell[j0, a, j1] r[m,
j0]``, and ``M = V C`` with ``V`` the Vandermonde matrix of the points. Conditions 1 and 2 make ``C``
lower triangular with a nonzero diagonal. With the cap, ``C u_pad`` and ``C k_pad`` are supported on
``[0, L)``. Their product therefore has degree at most ``2L - 2 < N``, and interpolating it at ``N``
distinct points returns it exactly::

    y = C^{-1} ((C k_pad) conv (C u_pad)),    conv = linear convolution, truncated to N.

Each of ``C``, ``conv`` and ``C^{-1}`` maps the first ``t + 1`` entries to the first ``t + 1``. So
``y[t]`` depends only on ``u[:t+1]`` and ``k[:t+1]``. Dropping either condition breaks causality;
random members of each relaxed family fail the perturbation test. The map does not depend on the
points ``rho``, which affect only round-off. With real ``ell`` and ``r`` it is real for real inputs.

**DFT case.** Take ``ell = I``, ``r = I`` and ``rho_{i0} = exp(-2 pi i i0 / N)``. Then
``q_j = Z^j``, the points are the ``N``-th roots of unity, ``M = F_N`` (the Cooley-Tukey factoring
of the DFT) and the map is the causal FFT convolution. These are the defaults of
:func:`causal_monarch`.

Public functions:

- :func:`causal_monarch` ``(seq_len, n1, *, ell, r, roots)``: the factors of ``M`` and ``M^{-1}``,
  the parameters checked against (and multiplied by) the causal pattern.
- :func:`polynomial_monarch` ``(ell, r, roots)``: the same factors for any parameters, unchecked: the
  whole polynomial-basis family, causal only inside the pattern.
- :func:`causal_monarch_masks` ``(seq_len, n1)``: where ``ell`` and ``r`` may be nonzero.
- :func:`monarch_evaluate` / :func:`monarch_interpolate`: ``M x`` and ``M^{-1} z`` over the last axis.
- :func:`causal_monarch_conv` ``(u, k, monarch)``: the depthwise causal map over
  ``u [batch, seq, channels]``.

Cost: ``M x`` and ``M^{-1} z`` take ``O(N (n1 + n0))`` multiply-adds, which is ``O(N^1.5)`` for
``n1 ~ n0 ~ sqrt(N)``. Pure ``jnp``. The factors are complex and
:func:`jaxflash.ops.monarch.monarch_matmul` takes real factors only, so the two block products are
written here as einsums.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from jaxflash.utils import is_traced

__all__ = [
    "CausalMonarch",
    "causal_monarch",
    "causal_monarch_conv",
    "causal_monarch_masks",
    "monarch_evaluate",
    "monarch_interpolate",
    "polynomial_monarch",
]

_HIGHEST = jax.lax.Precision.HIGHEST


class CausalMonarch(NamedTuple):
    """The block factors of the evaluation matrix ``M`` and of the interpolation matrix ``M^{-1}``.

    Sizes: ``N = n1 * n0 = 2 * seq_len``. Build with :func:`causal_monarch`.
    """

    r_blocks: Complex[Array, "n0 n1 n1"]  # R_{j0}[i0, j1] = ell_{j0,j1}(x_{i0})
    l_blocks: Complex[Array, "n1 n0 n0"]  # L_{i0}[i1, j0] = r_{j0}(rho_{i0} w^{i1})
    r_inv_blocks: Complex[Array, "n0 n1 n1"]  # R_{j0}^{-1}[j1, i0]
    l_inv_blocks: Complex[Array, "n1 n0 n0"]  # L_{i0}^{-1}[j0, i1]

    @property
    def n1(self) -> int:
        return self.r_blocks.shape[1]

    @property
    def n0(self) -> int:
        return self.r_blocks.shape[0]

    @property
    def seq_len(self) -> int:
        return self.n1 * self.n0 // 2


# --- validation -------------------------------------------------------------------------------------


def _check_sizes(seq_len: Any, n1: Any) -> int:
    for name, v in (("seq_len", seq_len), ("n1", n1)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer; got {name}={v!r}")
    n = 2 * seq_len
    if n1 % 2 or n % n1:
        divisors = [d for d in range(2, n + 1, 2) if n % d == 0]
        raise ValueError(
            f"n1={n1} must be even and divide N = 2 * seq_len = {n}: the degree cap splits the n1 "
            f"X-degrees in half. Valid choices: {divisors}"
        )
    return n // n1


def _check_real(name: str, a: Any) -> None:
    if not (jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)):
        raise ValueError(
            f"{name} must be a real floating-point array; got dtype {jnp.asarray(a).dtype}. Complex "
            f"coefficients would make the map complex-valued."
        )


def _check_pattern(name: str, a: Any, mask: np.ndarray, what: str) -> None:
    """Entries outside ``mask`` must be zero, and diagonal entries nonzero (checked when concrete)."""
    if is_traced(a):
        return
    a = np.asarray(a)
    outside = np.abs(np.where(mask, 0.0, a))
    if outside.max(initial=0.0) > 0:
        idx = np.unravel_index(int(np.argmax(outside)), a.shape)
        raise ValueError(
            f"{name} has a nonzero entry outside the causal pattern at index {tuple(int(i) for i in idx)} "
            f"({what}); multiply it by causal_monarch_masks(...) first"
        )
    diag = np.diagonal(a, axis1=-2, axis2=-1)
    if np.any(diag == 0):
        raise ValueError(
            f"{name} has a zero diagonal entry, so M is singular; every diagonal must be nonzero"
        )


def _check_roots(roots: Any, n1: int, n0: int) -> None:
    if is_traced(roots):
        return
    x = np.asarray(roots, np.complex128) ** n0
    if not np.all(np.isfinite(x)) or np.any(np.abs(x) == 0):
        raise ValueError(f"roots must be finite and nonzero; got roots={np.asarray(roots)}")
    gap = np.abs(x[:, None] - x[None, :])
    np.fill_diagonal(gap, np.inf)
    if gap.min() <= 1e-9 * np.abs(x).max():
        a, b = np.unravel_index(int(np.argmin(gap)), gap.shape)
        raise ValueError(
            f"roots[{a}]**n0 and roots[{b}]**n0 (n0={n0}) coincide, so two groups of points overlap "
            f"and M is singular; choose roots whose n0-th powers are distinct"
        )


# --- constructor ----------------------------------------------------------------------------------


def causal_monarch_masks(seq_len: int, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """Where ``ell[j0]`` (n1 x n1, shared by every j0) and ``r`` (n0 x n0) may be nonzero.

    ``ell_mask[a, j1]``: lower triangular (``a >= j1``), with ``a < n1/2`` whenever ``j1 < n1/2``.
    ``r_mask[m, j0]``: lower triangular. Multiplying free parameters by these masks keeps the map
    causal.
    """
    n0 = _check_sizes(seq_len, n1)
    a, j1 = np.indices((n1, n1))
    half = n1 // 2
    ell_mask = (a >= j1) & ~((j1 < half) & (a >= half))
    r_mask = np.tril(np.ones((n0, n0), dtype=bool))
    return ell_mask, r_mask


def causal_monarch(
    seq_len: int,
    n1: int,
    *,
    ell: Float[Array, "n0 n1 n1"] | None = None,
    r: Float[Array, "n0 n0"] | None = None,
    roots: Complex[Array, " n1"] | None = None,
) -> CausalMonarch:
    """Monarch factors of ``M`` (and ``M^{-1}``) for a causal basis at padded size ``N = 2 * seq_len``.

    Args:
      seq_len: ``L``, the unpadded sequence length.
      n1: number of X-degrees (``R``'s block size and ``L``'s block count); even, divides ``2L``.
        ``n0 = 2L / n1``.
      ell: ``(n0, n1, n1)`` or ``(n1, n1)`` (shared), real; ``ell[j0, a, j1]`` is the coefficient of
        ``X^a`` in ``ell_{j0,j1}``. Must vanish outside ``causal_monarch_masks`` and have a nonzero
        diagonal. Default: identity (monomials).
      r: ``(n0, n0)`` real; ``r[m, j0]`` is the coefficient of ``Z^m`` in ``r_{j0}``. Lower triangular
        with a nonzero diagonal. Default: identity.
      roots: ``(n1,)`` complex ``rho_{i0}``, with nonzero and distinct ``rho^n0``. Default:
        ``exp(-2 pi i i0 / N)``, which with the default ``ell`` and ``r`` gives ``M = DFT_N``.

    Traced (jitted) arguments cannot be checked for values. ``ell`` and ``r`` are always multiplied
    by the masks, so the map is causal even then.

    Returns:
      A :class:`CausalMonarch`, complex128 when x64 is enabled, else complex64.
    """
    n0 = _check_sizes(seq_len, n1)
    n = n1 * n0
    ell_mask, r_mask = causal_monarch_masks(seq_len, n1)
    if ell is None:
        ell = np.eye(n1)
    if r is None:
        r = np.eye(n0)
    if roots is None:
        roots = np.exp(-2j * np.pi * np.arange(n1) / n)
    # Lists become float64/complex128 NumPy arrays: the checks below run in full precision.
    ell, r, roots = (a if hasattr(a, "shape") else np.asarray(a) for a in (ell, r, roots))
    _check_real("ell", ell)
    _check_real("r", r)
    if jnp.shape(ell) not in ((n1, n1), (n0, n1, n1)):
        raise ValueError(
            f"ell.shape={jnp.shape(ell)} must be (n1, n1)=({n1}, {n1}) or (n0, n1, n1)=({n0}, {n1}, {n1})"
        )
    if jnp.shape(r) != (n0, n0):
        raise ValueError(f"r.shape={jnp.shape(r)} must be (n0, n0)=({n0}, {n0}) with n0 = 2 * seq_len / n1")
    if jnp.shape(roots) != (n1,):
        raise ValueError(f"roots.shape={jnp.shape(roots)} must be (n1,)=({n1},)")
    _check_pattern(
        "ell", ell, ell_mask, "ell[j0] must be lower triangular with ell[j0, a, j1] = 0 for a >= n1/2 > j1"
    )
    _check_pattern("r", r, r_mask, "r must be lower triangular")
    _check_roots(roots, n1, n0)

    cdtype = jax.dtypes.canonicalize_dtype(np.complex128)  # complex64 unless x64 is enabled
    rdtype = jnp.finfo(cdtype).dtype
    ell = jnp.broadcast_to(jnp.asarray(ell, rdtype) * ell_mask, (n0, n1, n1))
    return _build(ell, jnp.asarray(r, rdtype) * r_mask, jnp.asarray(roots, cdtype))


def polynomial_monarch(
    ell: Float[Array, "n0 n1 n1"], r: Float[Array, "n0 n0"], roots: Complex[Array, " n1"]
) -> CausalMonarch:
    """The factors of ``M`` and ``M^{-1}`` for the basis ``q_j(Z) = ell_{j0,j1}(Z^n0) r_{j0}(Z)`` at the
    points ``roots[i0] * w^i1`` (module docstring), with nothing checked or masked.

    ``ell`` and ``r`` are inverted by triangular solves (their upper parts ignored there), so
    ``M^{-1}`` inverts ``M`` only for lower-triangular parameters with nonzero diagonals and distinct
    ``roots**n0``; the map :func:`causal_monarch_conv` computes with them is causal only when they meet
    the causal pattern too, which :func:`causal_monarch` enforces. This is the whole family, for
    studying what each condition buys.
    """
    roots = jnp.asarray(roots)
    return _build(jnp.asarray(ell), jnp.asarray(r), roots.astype(jnp.result_type(roots, jnp.complex64)))


@jax.jit
def _build(ell: jax.Array, r: jax.Array, rho: jax.Array) -> CausalMonarch:
    n0, n1, _ = ell.shape
    x = rho**n0
    vx = x[:, None] ** jnp.arange(n1)  # V_x[i0, a]
    ell_inv = jax.scipy.linalg.solve_triangular(
        ell, jnp.broadcast_to(jnp.eye(n1, dtype=ell.dtype), ell.shape), lower=True
    )
    r_inv = jax.scipy.linalg.solve_triangular(r, jnp.eye(n0, dtype=r.dtype), lower=True)
    powers = rho[:, None] ** jnp.arange(n0)  # rho_{i0}^m
    i1 = jnp.arange(n0)
    dft = jnp.exp(-2j * jnp.pi * jnp.outer(i1, i1) / n0).astype(rho.dtype)  # F[i1, m]

    r_blocks = jnp.einsum("ia,jab->jib", vx, ell, precision=_HIGHEST)
    r_inv_blocks = jnp.einsum("jba,ai->jbi", ell_inv, jnp.linalg.inv(vx), precision=_HIGHEST)
    l_blocks = jnp.einsum("km,im,mj->ikj", dft, powers, r, precision=_HIGHEST)
    l_inv_blocks = jnp.einsum("jm,im,mk->ijk", r_inv, 1 / powers, jnp.conj(dft) / n0, precision=_HIGHEST)
    return CausalMonarch(r_blocks, l_blocks, r_inv_blocks, l_inv_blocks)


# --- evaluation, interpolation, convolution -------------------------------------------------------


def _check_last_axis(name: str, a: Any, n: int) -> None:
    if jnp.ndim(a) < 1 or jnp.shape(a)[-1] != n:
        raise ValueError(f"{name}.shape={jnp.shape(a)} must end in N = n1 * n0 = {n}")


def monarch_evaluate(x: Complex[Array, "*batch N"], monarch: CausalMonarch) -> Complex[Array, "*batch N"]:
    """``M x`` over the last axis: the values ``U(z_i)`` at the points, in point order ``i = i0 + n1 i1``."""
    x = jnp.asarray(x)
    _check_last_axis("x", x, monarch.n1 * monarch.n0)
    return _evaluate(x, monarch)


def monarch_interpolate(z: Complex[Array, "*batch N"], monarch: CausalMonarch) -> Complex[Array, "*batch N"]:
    """``M^{-1} z`` over the last axis: basis coefficients from values at the points."""
    z = jnp.asarray(z)
    _check_last_axis("z", z, monarch.n1 * monarch.n0)
    return _interpolate(z, monarch)


def _evaluate(x: jax.Array, monarch: CausalMonarch) -> jax.Array:
    n1, n0 = monarch.n1, monarch.n0
    batch = x.shape[:-1]
    xs = x.reshape(*batch, n1, n0)  # [j1, j0]
    h = jnp.einsum("jib,...bj->...ij", monarch.r_blocks, xs, precision=_HIGHEST)  # R: [i0, j0]
    z = jnp.einsum("ikj,...ij->...ik", monarch.l_blocks, h, precision=_HIGHEST)  # L: [i0, i1]
    return jnp.swapaxes(z, -1, -2).reshape(*batch, n1 * n0)


def _interpolate(z: jax.Array, monarch: CausalMonarch) -> jax.Array:
    n1, n0 = monarch.n1, monarch.n0
    batch = z.shape[:-1]
    zs = jnp.swapaxes(z.reshape(*batch, n0, n1), -1, -2)  # [i0, i1]
    h = jnp.einsum("ijk,...ik->...ij", monarch.l_inv_blocks, zs, precision=_HIGHEST)  # L^{-1}: [i0, j0]
    xs = jnp.einsum("jbi,...ij->...bj", monarch.r_inv_blocks, h, precision=_HIGHEST)  # R^{-1}: [j1, j0]
    return xs.reshape(*batch, n1 * n0)


def causal_monarch_conv(
    u: Float[Array, "batch seq channels"],
    k: Float[Array, "kernel_len channels"],
    monarch: CausalMonarch,
) -> Float[Array, "batch seq channels"]:
    """Depthwise ``y = M^{-1} ((M k_pad) * (M u_pad))[:seq]`` with zero padding to ``N = 2 * seq``.

    ``y[:, t]`` depends only on ``u[:, :t+1]`` and ``k[:t+1]``. With the default factors of
    :func:`causal_monarch` it is the causal convolution ``y[t] = sum_s k[s] u[t - s]``.

    Args:
      u: ``[batch, seq, channels]``, real; array-likes are converted with ``jnp.asarray``, as is ``k``.
      k: ``[kernel_len, channels]``, real, ``kernel_len <= seq`` (zero-padded to ``seq``).
      monarch: factors from ``causal_monarch(seq, n1, ...)``.

    Returns:
      ``[batch, seq, channels]`` in the promoted dtype of ``u`` and ``k``. The imaginary part is
      dropped: for real ``ell`` and ``r`` the map is real, and the part dropped is round-off.
    """
    u, k = jnp.asarray(u), jnp.asarray(k)
    for name, a in (("u", u), ("k", k)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"{name} must be a real floating-point array; got dtype {a.dtype}")
    if jnp.ndim(u) != 3:
        raise ValueError(f"u must be [batch, seq, channels]; got u.shape={jnp.shape(u)}")
    batch, seq, chans = jnp.shape(u)
    if jnp.ndim(k) != 2 or jnp.shape(k)[1] != chans or not 0 < jnp.shape(k)[0] <= seq:
        raise ValueError(
            f"k must be [kernel_len, channels] with 0 < kernel_len <= seq={seq} and channels={chans}; "
            f"got k.shape={jnp.shape(k)}"
        )
    if monarch.seq_len != seq:
        raise ValueError(
            f"the factors are for seq_len={monarch.seq_len} (N={2 * monarch.seq_len}) but u has seq={seq}; "
            f"build them with causal_monarch({seq}, n1)"
        )
    return _conv(u, k, monarch)


@jax.jit
def _conv(u: jax.Array, k: jax.Array, monarch: CausalMonarch) -> jax.Array:
    batch, seq, chans = u.shape
    dtype = jnp.result_type(u, k)
    cdtype = jnp.result_type(dtype, monarch.r_blocks.dtype)
    n = 2 * seq
    u_pad = jnp.zeros((batch, chans, n), cdtype).at[..., :seq].set(jnp.swapaxes(u, 1, 2))
    k_pad = jnp.zeros((chans, n), cdtype).at[:, : k.shape[0]].set(jnp.swapaxes(k, 0, 1))
    y = _interpolate(_evaluate(k_pad, monarch) * _evaluate(u_pad, monarch), monarch)
    return jnp.swapaxes(jnp.real(y[..., :seq]), 1, 2).astype(dtype)
