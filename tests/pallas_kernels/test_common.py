"""Interpret mode and compiler parameters shared by every kernel family."""

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from jaxflash.pallas_kernels.common import INTERPRET_ENV_VAR, compiler_params, interpret_for

from jaxflash.testing import assert_close, random_normal
from jaxflash.utils import cdiv


def _scaled_copy(x, implementation, block=8):
    """A tiny kernel over a ragged 1-D grid: 3 blocks for 21 elements."""

    def kernel(x_ref, o_ref):
        o_ref[...] = 2.0 * x_ref[...]

    interpret = interpret_for(implementation)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=(cdiv(x.shape[0], block),),
        in_specs=[pl.BlockSpec((block,), lambda i: (i,))],
        out_specs=pl.BlockSpec((block,), lambda i: (i,)),
        interpret=interpret,
        compiler_params=compiler_params(interpret),
    )(x)


def test_cdiv():
    assert [cdiv(n, 8) for n in (1, 8, 9, 21)] == [1, 1, 2, 3]


@pytest.mark.parametrize("mode", ["", "tpu"])
def test_interpret_mode_runs_a_kernel(key, monkeypatch, mode):
    monkeypatch.setenv(INTERPRET_ENV_VAR, mode)
    x = random_normal(key, (21,))
    assert_close(_scaled_copy(x, "pallas_interpret"), 2.0 * x)


def test_interpret_values(monkeypatch):
    monkeypatch.delenv(INTERPRET_ENV_VAR, raising=False)
    assert interpret_for("pallas") is False
    assert interpret_for("pallas_interpret") is True
    monkeypatch.setenv(INTERPRET_ENV_VAR, "tpu")
    assert type(interpret_for("pallas_interpret")).__name__ == "InterpretParams"
    with pytest.raises(ValueError, match="not a Pallas implementation"):
        interpret_for("xla")


def test_compiler_params_on_cpu():
    assert compiler_params(True, num_warps=4) is None
    with pytest.raises(NotImplementedError, match="need a GPU or TPU"):
        compiler_params(False, num_warps=4)


def test_compiled_kernel_refuses_cpu(key):
    with pytest.raises(NotImplementedError):
        _scaled_copy(jnp.ones(8), "pallas")
