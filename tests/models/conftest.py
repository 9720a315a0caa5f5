"""Checks shared by the model tests: causality by perturbation and step-vs-parallel equality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxflash.testing import assert_close


def assert_causal(module, x, cut: int, *, atol: float = 1e-5):
    """Outputs before ``cut`` must not change when the inputs at and after ``cut`` change, and the later
    outputs must change (so the check can fail)."""
    fn = nnx.jit(lambda m, x: m(x))
    y = fn(module, x)
    noise = 1.0 + jax.random.normal(jax.random.key(7), x[:, cut:].shape, x.dtype)
    y2 = fn(module, x.at[:, cut:].add(noise))
    np.testing.assert_allclose(np.asarray(y2[:, :cut]), np.asarray(y[:, :cut]), atol=atol, rtol=atol)
    assert float(jnp.max(jnp.abs(y2[:, cut:] - y[:, cut:]))) > 1e-3, (
        "the perturbation did not reach the output"
    )


def assert_step_matches(
    module, x, *, atol: float = 1e-5, max_len: int | None = None, expected=None, **init_kw
):
    """``step`` fed position by position (a mixer's ``[b, d]`` inputs or an LM's ``[b]`` tokens)
    reproduces the parallel forward (``expected``, else computed here) at every position."""
    y = nnx.jit(lambda m, x: m(x))(module, x) if expected is None else expected
    state = module.init_state(x.shape[0], max_len or x.shape[1] + 3, **init_kw)
    step = nnx.jit(lambda m, xt, s: m.step(xt, s))
    outs = []
    for t in range(x.shape[1]):
        out, state = step(module, x[:, t], state)
        outs.append(out)
    assert_close(jnp.stack(outs, axis=1), y, atol=atol, rtol=atol)


def assert_prefill_matches(module, x, cut: int, *, atol: float = 1e-5, max_len: int | None = None, **kw):
    """``prefill`` of the first ``cut`` positions gives the parallel forward's outputs there, and ``step``
    from the state it returns reproduces the forward at every later position (a mixer's ``[b, l, d]``
    inputs or an LM's ``[b, l]`` tokens)."""
    max_len = max_len or x.shape[1] + 3
    y = nnx.jit(lambda m, x: m(x))(module, x)
    head, state = nnx.jit(lambda m, x: m.prefill(x, max_len, **kw))(module, x[:, :cut])
    assert_close(head, y[:, :cut], atol=atol, rtol=atol)
    step = nnx.jit(lambda m, xt, s: m.step(xt, s))
    outs = []
    for t in range(cut, x.shape[1]):
        out, state = step(module, x[:, t], state)
        outs.append(out)
    assert_close(jnp.stack(outs, axis=1), y[:, cut:], atol=atol, rtol=atol)


@pytest.fixture
def checks():
    return type(
        "Checks",
        (),
        dict(
            causal=staticmethod(assert_causal),
            step=staticmethod(assert_step_matches),
            prefill=staticmethod(assert_prefill_matches),
        ),
    )
