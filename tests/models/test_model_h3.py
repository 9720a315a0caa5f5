"""H3 pinned to its equations: shift-SSM kernel, S4D-Lin Vandermonde kernel, mul_sum heads; causality
and the recurrent step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import H3, H3Config
from jaxflash.models.h3 import DiagSSMKernel, ShiftSSMKernel, SSMParam

from jaxflash.testing import assert_close, random_normal


def test_shift_kernel_at_init_is_c_truncated():
    k = ShiftSSMKernel(5, 8, rngs=nnx.Rngs(0))
    C = np.asarray(k.C[...])
    assert_close(k.kernel(8), C.T)  # B = e_1: K[c, i] = C[c, i]
    kk = np.asarray(k.kernel(13))
    assert_close(kk[:8], C.T)
    assert np.all(kk[8:] == 0), "the shift SSM is an FIR of length N"


def test_shift_kernel_with_trained_b_is_the_correlation(key):
    k = ShiftSSMKernel(3, 6, rngs=nnx.Rngs(1))
    k.B.set_value(random_normal(key, (3, 6)))
    B, C = np.asarray(k.B[...], np.float64), np.asarray(k.C[...], np.float64)
    expected = np.zeros((6, 3))
    for c in range(3):
        for i in range(6):
            expected[i, c] = sum(B[c, n] * C[c, n + i] for n in range(6 - i))
    assert_close(k.kernel(6), expected, atol=1e-6)


@pytest.mark.parametrize("disc", ["bilinear", "zoh"])
def test_s4d_kernel_equals_vandermonde_form(disc):
    ker = DiagSSMKernel(4, 16, dt_min=1e-2, dt_max=1e-1, discretization=disc, rngs=nnx.Rngs(2))
    # S4D-Lin init: A_n = -1/2 + i pi n.
    A = -np.exp(np.asarray(ker.inv_A_real[...], np.float64)) + 1j * np.asarray(ker.A_imag[...], np.float64)
    assert_close(A.real, np.full((4, 8), -0.5), atol=1e-6)
    assert_close(A.imag, np.broadcast_to(np.pi * np.arange(8), (4, 8)), atol=1e-5)
    dt = np.exp(np.asarray(ker.log_dt[...], np.float64))[:, None]
    assert np.all((dt >= 1e-2 - 1e-9) & (dt <= 1e-1 + 1e-9))
    C = np.asarray(ker.C[..., 0], np.float64) + 1j * np.asarray(ker.C[..., 1], np.float64)
    if disc == "bilinear":
        dA = (1 + dt * A / 2) / (1 - dt * A / 2)
        dB = dt / (1 - dt * A / 2)
    else:
        dA = np.exp(dt * A)
        dB = (dA - 1) / A
    longest = 4097  # the kernel is built in blocks of ~sqrt(length): a partial last block here
    expected = np.zeros((longest, 4))
    power = np.ones_like(dA)
    for step in range(longest):  # explicit powers dA^l, not exp(l log dA)
        expected[step] = 2 * np.real(np.sum(C * dB * power, axis=-1))
        power = power * dA
    for length in (1, 50, 64, longest):
        assert_close(ker.kernel(length), expected[:length], atol=2e-5, rtol=1e-4)


def _direct_causal_conv(x, k):
    """y[t, c] = sum_{j <= t} k[j, c] x[t - j, c] in float64."""
    length = x.shape[1]
    y = np.zeros_like(x)
    for t in range(length):
        for j in range(min(t + 1, k.shape[0])):
            y[:, t] += k[j] * x[:, t - j]
    return y


def test_h3_forward_is_the_mul_sum_equations(key):
    d, dh, length = 8, 2, 7
    h3 = H3(d, H3Config(d_state=4, head_dim=dh), implementation="xla", rngs=nnx.Rngs(3))
    u = random_normal(key, (2, length, d))
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    parts = nnx.jit(
        lambda m, u: (
            m(u),
            m.q_proj(u),
            m.k_proj(u),
            m.v_proj(u),
            m.shift_kernel.kernel(4),
            m.diag_kernel.kernel(length),
        )
    )(h3, u)
    out, q, k, v, ks, kd = map(f64, parts)  # kd: [l, heads]
    k_bar = _direct_causal_conv(k, ks) + f64(h3.D_k[...]) * k
    heads = d // dh
    D = f64(h3.D[...])
    y = np.zeros((2, length, heads, dh))
    for h in range(heads):
        for i in range(dh):
            for j in range(dh):
                kv = k_bar[..., h * dh + i] * v[..., h * dh + j]
                s = _direct_causal_conv(kv[..., None], kd[:, h : h + 1])[..., 0] + D[h] * kv
                y[:, :, h, j] += q[..., h * dh + i] * s
    # safari's output layout: feature j * heads + h.
    expected = y.transpose(0, 1, 3, 2).reshape(2, length, d) @ f64(h3.out_proj.kernel[...]) + f64(
        h3.out_proj.bias[...]
    )
    assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_is_causal_and_step_matches(key, checks, head_dim):
    h3 = H3(8, H3Config(d_state=6, head_dim=head_dim), implementation="xla", rngs=nnx.Rngs(4))
    u = random_normal(key, (2, 9, 8))
    checks.causal(h3, u, cut=5)
    checks.step(h3, u, atol=5e-5)
    for cut in (2, 6):  # shorter than d_state, and as long
        checks.prefill(h3, u, cut=cut, atol=5e-5)  # the SSM states in closed form from the prompt


def test_h3_bad_head_dim():
    with pytest.raises(ValueError, match="head_dim=3 must divide d_model=8"):
        H3(8, H3Config(head_dim=3), rngs=nnx.Rngs(0))


def test_h3_shift_c_init_range():
    # safari: kaiming_uniform_(a=sqrt(5)) on (channels, 1, N), so U(+-1/sqrt(N)) whatever the width.
    k = ShiftSSMKernel(16, 8, rngs=nnx.Rngs(5))
    bound = 1 / math.sqrt(8)
    C = np.asarray(k.C[...])
    assert np.all(np.abs(C) <= bound) and np.abs(C).max() > bound / 2
    assert jax.tree.leaves(nnx.state(k, nnx.Param))  # B and C are parameters


def test_diag_b_is_a_trainable_factor_of_c(key):
    """safari's diagonal SSM keeps B (init 1) as its own parameter and uses C * B; folding B into C
    (diag_B=False) gives the same kernel."""
    with_b = DiagSSMKernel(3, 8, trainable_B=True, rngs=nnx.Rngs(6))
    folded = DiagSSMKernel(3, 8, trainable_B=False, rngs=nnx.Rngs(6))
    assert_close(with_b.kernel(20), folded.kernel(20), atol=1e-6)  # B = 1 at init
    B = np.asarray(random_normal(key, (3, 4, 2)))
    with_b.B[...] = jnp.asarray(B)
    C = np.asarray(folded.C[...])
    Cb = (C[..., 0] + 1j * C[..., 1]) * (B[..., 0] + 1j * B[..., 1])
    folded.C[...] = jnp.asarray(np.stack([Cb.real, Cb.imag], -1), jnp.float32)
    assert_close(with_b.kernel(20), folded.kernel(20), atol=1e-5)
    assert isinstance(with_b.B, SSMParam)  # the SSM learning rate, no weight decay
    assert not hasattr(folded, "B")
