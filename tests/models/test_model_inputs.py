"""Bad input fails with a clear error, never a silent result: a config of the wrong type, token ids out
of range or of the wrong rank or dtype, a step past the recurrent state, a sequence past max_seq_len,
parameters that cannot fit in memory. Every check raises before the model computes anything."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.experimental import checkify
from jaxflash.models import (
    M2GPT,
    LanguageModel,
    LongConv,
    LongConvConfig,
    M2Bert,
    Parcae,
    m2_bert_tiny,
    m2_gpt_tiny,
    parcae_tiny,
    tiny_lm,
)

from jaxflash.utils import value_checks


@pytest.fixture(scope="module")
def lm():
    return LanguageModel(tiny_lm("attention"), rngs=nnx.Rngs(0))


# Shapes only: these models cannot compute, so each check they pass on must fire before any compute.
@pytest.fixture(scope="module")
def bert():
    return nnx.eval_shape(lambda: M2Bert(m2_bert_tiny(), rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def parcae():
    return nnx.eval_shape(lambda: Parcae(parcae_tiny(), rngs=nnx.Rngs(0)))


CONFIGS = [
    (LanguageModel, tiny_lm()),
    (M2GPT, m2_gpt_tiny()),
    (M2Bert, m2_bert_tiny()),
    (Parcae, parcae_tiny()),
]


@pytest.mark.parametrize("cls, config", CONFIGS, ids=lambda x: getattr(x, "__name__", ""))
def test_a_config_dict_is_refused_with_the_class_to_build(cls, config):
    name = type(config).__name__
    with pytest.raises(
        TypeError, match=rf"{cls.__name__} takes a {name}; got dict\. Build one with {name}\(\*\*config\)"
    ):
        cls(dataclasses.asdict(config), rngs=nnx.Rngs(0))
    other_family = parcae_tiny() if name != "ParcaeConfig" else tiny_lm()
    with pytest.raises(TypeError, match=f"takes a {name}; got {type(other_family).__name__}"):
        cls(other_family, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", [16, -1])
def test_token_ids_out_of_range_raise_eagerly(lm, parcae, bad):
    tokens = jnp.array([[1, 2, bad]])
    calls = [lambda: lm(tokens), lambda: parcae(tokens), lambda: lm.step(tokens[:, -1], lm.init_state(1, 4))]
    for call in calls:
        with pytest.raises(ValueError, match=r"tokens must lie in \[0, vocab_size=16\); got min .* and max"):
            call()


def test_m2_bert_ids_and_token_types_are_checked(bert):
    ids = jnp.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=16\)"):
        bert(ids.at[0, 1].set(16))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, type_vocab_size=2\)"):
        bert(ids, jnp.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"token_type_ids must have input_ids' shape \(1, 3\)"):
        bert(ids, jnp.array([[0, 1]]))


def test_token_rank_and_dtype(lm, parcae, bert):
    for call in (lambda t: lm(t), lambda t: parcae(t)):
        with pytest.raises(
            ValueError, match=r"tokens must have shape \[batch, seq\]; got shape \(3,\); add a batch axis"
        ):
            call(jnp.array([1, 2, 3]))
        with pytest.raises(TypeError, match="tokens must be integer ids; got dtype float32"):
            call(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"input_ids must have shape \[batch, seq\]"):
        bert(jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"step takes one id per sequence, tokens of shape \[batch\]"):
        lm.step(jnp.array([[1]]), lm.init_state(1, 4))


def test_token_range_under_jit_is_a_checkify_check_when_value_checks_are_on(lm):
    graphdef, state = nnx.split(lm)
    forward = lambda state, tokens: nnx.merge(graphdef, state)(tokens)  # noqa: E731
    bad = jnp.array([[1, 16]])
    with value_checks(False):  # the default: skipped under jit, and the id reads a NaN embedding row
        assert not bool(jnp.all(jnp.isfinite(jax.jit(forward)(state, bad))))
    with value_checks():
        err, _ = jax.jit(checkify.checkify(forward))(state, bad)
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"tokens must lie in \[0, vocab_size=16\); got min 1 and max 16"
    ):
        err.throw()


def test_step_past_the_kv_cache_raises(lm):
    state = lm.init_state(1, 4)
    token = jnp.array([3])
    for _ in range(4):
        _, state = lm.step(token, state)
    with pytest.raises(ValueError, match="step at position 4 is past max_len=4 of the KV cache"):
        lm.step(token, state)
    with pytest.raises(ValueError, match="max_len 33 exceeds max_seq_len=32"):
        lm.init_state(1, 33)


def test_step_past_the_convolution_history_raises():
    # Hyena, long convolutions and M2 step through the same history convolution.
    layer = LongConv(4, 8, LongConvConfig(), implementation="xla", rngs=nnx.Rngs(0))
    state = layer.init_state(1, 2)
    u = jnp.ones((1, 4))
    for _ in range(2):
        _, state = layer.step(u, state)
    with pytest.raises(ValueError, match="step at position 2 is past max_len=2 of the convolution history"):
        layer.step(u, state)


def test_sequences_longer_than_max_seq_len_are_refused(lm, bert, parcae):
    tokens = jnp.zeros((1, 33), jnp.int32)
    for model in (lm, bert, parcae):
        with pytest.raises(ValueError, match="sequence length 33 exceeds max_seq_len=32"):
            model(tokens)
    with pytest.raises(ValueError, match="max_len 33 exceeds max_seq_len=32"):
        parcae.init_state(1, 33)


@pytest.mark.parametrize(
    "cls, config",
    [
        (LanguageModel, tiny_lm(vocab_size=2**40)),
        (M2GPT, m2_gpt_tiny(d_model=2**16, d_inner=2**16, n_layers=1)),
        (M2Bert, m2_bert_tiny(vocab_size=2**40)),
        (Parcae, parcae_tiny(vocab_size=2**40)),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_parameters_that_cannot_fit_are_refused_before_allocating(cls, config):
    start = time.perf_counter()
    with pytest.raises(
        ValueError, match=rf"{cls.__name__} \([0-9,]+ parameters\) needs ~.*; shrink vocab_size"
    ):
        cls(config, rngs=nnx.Rngs(0))
    assert time.perf_counter() - start < 10, "the estimate comes from shapes alone"
