"""The shared numerics of the test suite must catch what they exist to catch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflash.testing import (
    assert_close,
    assert_grads_close,
    kernel_implementation,
    random_normal,
    tolerance,
)


def test_tolerance_table():
    assert tolerance(jnp.float32) == {"atol": 1e-5, "rtol": 1e-5}
    assert tolerance(jnp.bfloat16, scale=2)["atol"] == pytest.approx(4e-2)
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance(jnp.int32)


def test_random_normal_is_fresh_and_cast(key):
    x = random_normal(key, (64,), jnp.bfloat16)
    y = random_normal(jax.random.split(key)[0], (64,), jnp.bfloat16)
    assert x.dtype == jnp.bfloat16
    assert not jnp.array_equal(x, y)
    assert float(jnp.std(x.astype(jnp.float32))) > 0.5


def test_assert_close_accepts_within_tolerance(key):
    x = random_normal(key, (8, 8))
    assert_close(x + 5e-6, x)
    assert_close({"a": x.astype(jnp.bfloat16)}, {"a": x})


def test_assert_close_reports_the_worst_element(key):
    x = random_normal(key, (4, 5))
    y = x.at[2, 3].add(1e-3)
    with pytest.raises(AssertionError, match=r"1 of 20 elements.*max abs error 0.001 at \(2, 3\)"):
        assert_close(y, x)


def test_assert_close_catches_nan_and_shape_and_tree():
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close(np.zeros(3), np.zeros(4))
    with pytest.raises(AssertionError, match="tree structures differ"):
        assert_close((np.zeros(3),), [np.zeros(3)])


def test_assert_grads_close_catches_a_wrong_backward(key):
    @jax.custom_vjp
    def wrong_square(x):
        return x * x

    wrong_square.defvjp(lambda x: (x * x, x), lambda x, g: (g * x,))  # should be 2 * g * x

    x = random_normal(key, (16,))
    assert_grads_close(lambda x: x * x, lambda x: x**2, (x,), key=key)
    with pytest.raises(AssertionError, match="gradient with respect to argument 0"):
        assert_grads_close(wrong_square, lambda x: x**2, (x,), key=key)


def test_assert_grads_close_respects_argnums(key):
    k1, k2 = jax.random.split(key)
    a, b = random_normal(k1, (3,)), random_normal(k2, (3,))
    # The gradients differ only in the second argument, which is not checked.
    assert_grads_close(
        lambda a, b: a * b, lambda a, b: a * jax.lax.stop_gradient(b), (a, b), key=key, argnums=(0,)
    )


def test_kernel_implementation_on_cpu():
    assert kernel_implementation() == "pallas_interpret"
