"""The dispatch contract every op uses, exercised with small ops registered here."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from jaxflash.ops import registry
from jaxflash.ops.registry import dispatch, register, registered, supported, unregister

OP = "_test_square"


@pytest.fixture
def op():
    """An op with a refusing Pallas path, an XLA path that refuses odd sizes, and a reference."""
    calls = []

    @register(OP, "pallas_interpret")
    def _interp(x):
        calls.append("pallas_interpret")
        return x * x

    @register(OP, "xla")
    def _xla(x):
        if x.shape[0] % 2:
            raise NotImplementedError("odd sizes are not supported")
        calls.append("xla")
        return x * x

    @register(OP, "reference")
    def _ref(x):
        calls.append("reference")
        return x**2

    yield calls
    unregister(OP)


def test_default_order_picks_xla_on_cpu(op, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    x = jnp.arange(4.0)
    assert jnp.array_equal(dispatch(OP, None, x), x * x)
    # "pallas" is not registered and the interpreter is never a default choice.
    assert op == ["xla"]


def test_explicit_choice(op):
    dispatch(OP, "pallas_interpret", jnp.ones(3))
    dispatch(OP, "reference", jnp.ones(3))
    assert op == ["pallas_interpret", "reference"]


def test_fallback_on_not_implemented(op, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    dispatch(OP, None, jnp.ones(3))  # xla refuses odd sizes
    assert op == ["reference"]


def test_sequence_is_tried_in_order(op):
    dispatch(OP, ("xla", "pallas_interpret", "reference"), jnp.ones(3))
    assert op == ["pallas_interpret"]


def test_explicit_choice_reraises_with_reason(op):
    with pytest.raises(NotImplementedError, match="implementation='xla'.*odd sizes are not supported"):
        dispatch(OP, "xla", jnp.ones(3))


def test_platform_restriction_is_a_reason():
    @register(OP, "pallas")
    def _pallas(x):
        raise AssertionError("must not be called on CPU")

    try:
        assert supported(OP, "cpu")[OP] == ()
        assert supported(OP, "gpu")[OP] == ("pallas",)
        with pytest.raises(NotImplementedError, match=r"runs on \['gpu', 'tpu'\].*'cpu'"):
            dispatch(OP, "pallas", jnp.ones(2))
    finally:
        unregister(OP)


def test_non_default_implementation_runs_only_when_named(monkeypatch):
    calls = []
    register(OP, "xla", default=False)(lambda x: calls.append("xla") or x * x)
    register(OP, "reference")(lambda x: calls.append("reference") or x**2)
    try:
        monkeypatch.delenv(registry.ENV_VAR, raising=False)
        dispatch(OP, None, jnp.ones(2))
        dispatch(OP, "xla", jnp.ones(2))
        dispatch(OP, ("xla", "reference"), jnp.ones(2))
        monkeypatch.setenv(registry.ENV_VAR, "xla")
        dispatch(OP, None, jnp.ones(2))
        assert calls == ["reference", "xla", "xla", "xla"]
    finally:
        unregister(OP)


def test_all_fail_lists_each_reason(op):
    with pytest.raises(NotImplementedError) as info:
        dispatch(OP, ("pallas", "xla"), jnp.ones(3))
    msg = str(info.value)
    assert "tried pallas, xla" in msg
    assert "- pallas: '_test_square' has no 'pallas' implementation registered" in msg
    assert "- xla: odd sizes are not supported" in msg


def test_environment_override(op, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    dispatch(OP, None, jnp.ones(4))
    monkeypatch.setenv(registry.ENV_VAR, "xla, pallas_interpret")
    dispatch(OP, None, jnp.ones(3))
    # An explicit argument wins over the environment.
    dispatch(OP, "xla", jnp.ones(4))
    assert op == ["reference", "pallas_interpret", "xla"]


def test_environment_single_choice_reraises(op, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "xla")
    with pytest.raises(NotImplementedError, match="odd sizes"):
        dispatch(OP, None, jnp.ones(3))


def test_bad_input_is_not_retried():
    tried = []

    @register(OP, "xla")
    def _xla(x):
        tried.append("xla")
        raise ValueError("x must be 1-D")

    @register(OP, "reference")
    def _ref(x):
        tried.append("reference")
        return x

    try:
        with pytest.raises(ValueError, match="x must be 1-D"):
            dispatch(OP, None, jnp.ones((2, 2)))
        assert tried == ["xla"]
    finally:
        unregister(OP)


@pytest.mark.parametrize("bad", ["cuda", ["xla", "triton"], ()])
def test_unknown_implementation_names(op, bad):
    with pytest.raises(ValueError, match="implementation"):
        dispatch(OP, bad, jnp.ones(2))


def test_unknown_env_value(op, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        dispatch(OP, None, jnp.ones(2))


def test_unknown_op():
    with pytest.raises(ValueError, match="no op named 'nope'"):
        dispatch("nope", None)


def test_registered_lists_in_canonical_order(op):
    assert registered(OP) == {OP: ("pallas_interpret", "xla", "reference")}
    assert supported(OP, "cpu") == {OP: ("pallas_interpret", "xla", "reference")}
    assert OP in registered()


def test_duplicate_registration_is_an_error(op):
    with pytest.raises(ValueError, match="already has a 'xla' implementation"):
        register(OP, "xla")(lambda x: x)


def test_dispatch_under_jit(op, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    f = jax.jit(lambda x: dispatch(OP, None, x))
    x = jnp.arange(5.0)  # odd: falls back to the reference at trace time
    assert jnp.array_equal(f(x), x**2)
    assert op == ["reference"]


def test_package_level_listing():
    import jaxflash

    assert isinstance(jaxflash.registered(), dict)
    assert all(set(v) <= set(jaxflash.IMPLEMENTATIONS) for v in jaxflash.supported().values())


# --- configs -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TileConfig:
    tile: int = 4


@dataclasses.dataclass(frozen=True)
class _ChunkConfig:
    chunk: int = 8


@pytest.fixture
def configured_op():
    """An op whose interpreter path takes a _TileConfig, whose XLA path takes a _ChunkConfig, and whose
    reference takes none. Each records the config it was given."""
    seen = []

    @register(OP, "pallas_interpret", config_type=_TileConfig)
    def _interp(x, *, config):
        seen.append(("pallas_interpret", config))
        return x

    @register(OP, "xla", config_type=_ChunkConfig)
    def _xla(x, *, config):
        seen.append(("xla", config))
        return x

    @register(OP, "reference")
    def _ref(x):
        seen.append(("reference", None))
        return x

    yield seen
    unregister(OP)


def test_config_reaches_the_implementation_of_its_type(configured_op, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    dispatch(OP, None, jnp.ones(2))  # no config: the implementation gets None, its default
    dispatch(OP, "xla", jnp.ones(2), config=_ChunkConfig(16))
    dispatch(OP, ("xla", "pallas_interpret"), jnp.ones(2), config=_TileConfig(2))  # xla refuses it
    dispatch(OP, None, jnp.ones(2), config={"pallas_interpret": _TileConfig(1)})  # xla runs with None
    assert configured_op == [
        ("xla", None),
        ("xla", _ChunkConfig(16)),
        ("pallas_interpret", _TileConfig(2)),
        ("xla", None),
    ]
    assert registry.config_types(OP) == {"pallas_interpret": _TileConfig, "xla": _ChunkConfig}


def test_a_config_the_named_implementation_cannot_take_is_refused_clearly(configured_op):
    with pytest.raises(
        NotImplementedError, match=r"'xla' takes a _ChunkConfig; config=_TileConfig.*'pallas_interpret'"
    ):
        dispatch(OP, "xla", jnp.ones(2), config=_TileConfig())
    with pytest.raises(NotImplementedError, match="'reference' takes no config"):
        dispatch(OP, "reference", jnp.ones(2), config=_ChunkConfig())
    assert configured_op == []


def test_config_types_no_implementation_takes_are_type_errors(configured_op):
    with pytest.raises(TypeError, match="not a config of '_test_square'.*_ChunkConfig \\('xla'\\)"):
        dispatch(OP, None, jnp.ones(2), config=dict(chunk=8).items())
    with pytest.raises(TypeError, match=r"config\['reference'\]: .* takes no config"):
        dispatch(OP, None, jnp.ones(2), config={"reference": _ChunkConfig()})
    with pytest.raises(TypeError, match=r"config\['xla'\] must be a _ChunkConfig"):
        dispatch(OP, None, jnp.ones(2), config={"xla": _TileConfig()})
    with pytest.raises(ValueError, match="a key of config="):
        dispatch(OP, None, jnp.ones(2), config={"triton": _TileConfig()})


def test_unknown_env_value_names_the_variable(op, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "xla,fast")
    with pytest.raises(ValueError, match="'fast' in the JAXFLASH_IMPLEMENTATION environment variable"):
        dispatch(OP, None, jnp.ones(2))


def test_implementation_of_a_wrong_type_is_a_type_error(op):
    with pytest.raises(TypeError, match="implementation= must be a name"):
        dispatch(OP, 3, jnp.ones(2))
