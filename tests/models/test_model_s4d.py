"""S4D (safari's SSM baseline of the H3 synthetics) pinned to its equations: the S4D-Inv init, the ZOH
Vandermonde kernel, ``W_o GELU(K * u + D u)``; causality and the recurrent step; an S4D LM."""

import math

import jax
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import S4D, LanguageModel, S4DConfig, tiny_lm

from jaxflash.testing import assert_close, random_normal


def test_s4d_inv_init():
    layer = S4D(4, S4DConfig(d_state=8), rngs=nnx.Rngs(0))
    ker = layer.kernel
    n = np.arange(4)
    assert_close(ker.A_imag[...], np.broadcast_to(8 / math.pi * (8 / (1 + 2 * n) - 1), (4, 4)), rtol=1e-6)
    assert_close(np.exp(np.asarray(ker.inv_A_real[...])), np.full((4, 4), 0.5), rtol=1e-6)
    assert not hasattr(ker, "B")  # safari folds its random B into C
    assert ker.discretization == "zoh"


def test_s4d_forward_is_the_equations(key):
    d, length = 4, 11
    layer = S4D(d, S4DConfig(d_state=6, dt_min=1e-2, dt_max=1e-1), implementation="xla", rngs=nnx.Rngs(1))
    u = random_normal(key, (2, length, d))
    out = np.asarray(nnx.jit(lambda m, u: m(u))(layer, u), np.float64)
    ker = layer.kernel
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    A = -np.exp(f64(ker.inv_A_real[...])) + 1j * f64(ker.A_imag[...])
    dt = np.exp(f64(ker.log_dt[...]))[:, None]
    C = f64(ker.C[..., 0]) + 1j * f64(ker.C[..., 1])
    dA = np.exp(dt * A)
    k = np.stack([2 * np.real(np.sum(C * (dA - 1) / A * dA**t, -1)) for t in range(length)])  # [l, d]
    un = f64(u)
    y = np.zeros_like(un)
    for t in range(length):
        for s in range(t + 1):
            y[:, t] += k[t - s] * un[:, s]
    y += f64(layer.D[...]) * un
    gelu = 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    expected = gelu @ f64(layer.out_proj.kernel[...]) + f64(layer.out_proj.bias[...])
    assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_s4d_is_causal_and_step_matches(key, checks):
    layer = S4D(8, S4DConfig(d_state=6), implementation="xla", rngs=nnx.Rngs(2))
    u = random_normal(key, (2, 9, 8))
    checks.causal(layer, u, cut=5)
    checks.step(layer, u, atol=5e-5)
    checks.prefill(layer, u, cut=4, atol=5e-5)


def test_s4d_lm_steps(key, checks):
    model = LanguageModel(tiny_lm("s4d", init_std=0.2), rngs=nnx.Rngs(3))
    tokens = jax.random.randint(key, (2, 7), 0, 16)
    checks.step(model, tokens, max_len=10, atol=1e-4)
    checks.prefill(model, tokens, cut=3, max_len=10, atol=1e-4)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(d_state=5), "must be even"),
        (dict(init="legs"), "init='legs'"),
        (dict(dt_min=1.0), "dt_min <= dt_max"),
    ],
)
def test_s4d_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        S4DConfig(**kw)
