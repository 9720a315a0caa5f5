"""The leaf utilities every layer shares (``jaxflash.utils``)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxflash import utils


def test_grid_arithmetic():
    assert [utils.cdiv(n, 8) for n in (1, 8, 9, 21)] == [1, 1, 2, 3]
    assert [utils.next_pow2(n) for n in (0, 1, 2, 3, 17, 64)] == [1, 1, 2, 4, 32, 64]


def test_true_span_numpy_and_jax():
    mask = np.array([[False, True, True, False], [False, False, False, False], [True, False, False, True]])
    lo, hi = utils.true_span(mask)
    assert isinstance(lo, np.ndarray) and lo.tolist() == [1, 0, 0] and hi.tolist() == [3, 0, 4]
    lo_j, hi_j = utils.true_span(jnp.asarray(mask))
    assert lo_j.tolist() == [1, 0, 0] and hi_j.tolist() == [3, 0, 4]


def test_matmul_precision_is_highest_for_f32_only():
    assert utils.matmul_precision(jnp.float32) == jax.lax.Precision.HIGHEST
    assert utils.matmul_precision(jnp.bfloat16) is None


def test_zero_cotangent_kinds():
    assert utils.zero_cotangent(None) is None
    assert utils.zero_cotangent(jnp.ones(3)).tolist() == [0.0, 0.0, 0.0]
    assert utils.zero_cotangent(jnp.ones(3, jnp.int32)).dtype == jax.dtypes.float0


def test_memory_estimates():
    assert utils.memory_budget_bytes() > 2**20
    assert utils.fits_in_memory(1024) and not utils.fits_in_memory(10 * utils.memory_budget_bytes())
    assert utils.format_bytes(3 * 2**30) == "3.0 GiB" and utils.format_bytes(12) == "12 B"
    assert "needs ~2.0 TiB" in utils.memory_estimate_message("the thing", 2 * 2**40)


def test_check_values_raises_eagerly_and_checkifies_under_jit(monkeypatch):
    with pytest.raises(ValueError, match="x must be >= 0; min -2"):
        utils.check_values(jnp.array([1, -2]) >= 0, "x must be >= 0; min {}", jnp.array([1, -2]).min())
    utils.check_values(np.array([True]), "never raised")

    def f(x):
        utils.check_values(x >= 0, "x must be >= 0; min {}, bound {}", x.min(), 0)
        return x

    monkeypatch.delenv(utils.VALUE_CHECKS_ENV_VAR, raising=False)
    assert jax.jit(f)(jnp.array([-1])).tolist() == [-1]  # skipped under jit by default
    with utils.value_checks():
        err, _ = checkify.checkify(jax.jit(lambda x: f(x)))(jnp.array([-3]))
    with pytest.raises(checkify.JaxRuntimeError, match="x must be >= 0; min -3, bound 0"):
        err.throw()
    monkeypatch.setenv(utils.VALUE_CHECKS_ENV_VAR, "1")
    assert utils.value_checks_enabled()
    with utils.value_checks(False):
        assert not utils.value_checks_enabled()


@pytest.mark.parametrize(
    "value,kw,match",
    [
        (0, {}, "n must be a positive integer; got 0"),
        (True, {}, "n must be a positive integer; got True"),
        (2.0, {}, "n must be a positive integer; got 2.0"),
        (-1, dict(minimum=0), "n must be an integer >= 0; got -1"),
        (24, dict(power_of_two=True), "n must be a power of two >= 1; got 24"),
        (8, dict(minimum=16, power_of_two=True), "n must be a power of two >= 16; got 8"),
    ],
)
def test_check_int_names_the_argument_and_what_it_accepts(value, kw, match):
    with pytest.raises(ValueError, match=match):
        utils.check_int("n", value, **kw)


def test_check_int_accepts_numpy_integers():
    assert utils.check_int("n", np.int64(32), minimum=16, power_of_two=True) == 32
    assert utils.is_int(np.int32(3)) and not utils.is_int(True) and not utils.is_int(3.0)


def test_check_real_names_the_value_and_its_bounds():
    from jaxflash.utils import check_real

    assert check_real("lr", 3e-4, above=0) == 3e-4 and check_real("p", 1, at_least=0, at_most=1) == 1.0
    for value, bounds, words in [
        (0.0, dict(above=0), "lr must be a finite number > 0; got 0.0"),
        (float("nan"), dict(above=0), "finite"),
        (float("inf"), {}, "finite"),
        (True, {}, "got True"),
        ("1", {}, "got '1'"),
        (1.0, dict(at_least=0, below=1), ">= 0 and < 1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            check_real("lr", value, **bounds)
