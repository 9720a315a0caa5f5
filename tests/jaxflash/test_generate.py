"""Generation through the recurrent step: greedy decoding equals repeatedly taking the argmax of the
parallel forward, for each causal model family; sampling is reproducible under a key; bad calls raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import M2GPT, LanguageModel, Parcae, m2_gpt_tiny, parcae_tiny, tiny_lm

from jaxflash.inference import generate


def _greedy_by_forward(model, prompt, n):
    tokens = jnp.asarray(prompt)
    for _ in range(n):
        nxt = jnp.argmax(model(tokens)[:, -1], axis=-1)
        tokens = jnp.concatenate([tokens, nxt[:, None].astype(tokens.dtype)], axis=1)
    return tokens


@pytest.mark.parametrize(
    "build",
    [
        lambda: LanguageModel(tiny_lm("attention"), rngs=nnx.Rngs(0)),
        lambda: LanguageModel(tiny_lm("hyena"), rngs=nnx.Rngs(0)),
        lambda: LanguageModel(tiny_lm("h3"), rngs=nnx.Rngs(0)),
        lambda: M2GPT(m2_gpt_tiny(), rngs=nnx.Rngs(0)),
        lambda: Parcae(parcae_tiny(), rngs=nnx.Rngs(0)),
    ],
    ids=["attention", "hyena", "h3", "m2_gpt", "parcae"],
)
def test_greedy_generation_follows_the_parallel_forward(build):
    model = build()
    prompt = np.array([[1, 5, 7, 2], [3, 3, 0, 9]], np.int32)
    out = generate(model, prompt, 3, temperature=0.0)
    assert out.shape == (2, 7) and (np.asarray(out[:, :4]) == prompt).all()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_greedy_by_forward(model, prompt, 3)))


def test_sampling_is_reproducible_under_a_key_and_uses_the_temperature():
    model = LanguageModel(tiny_lm("attention"), rngs=nnx.Rngs(0))
    prompt = np.array([[1, 2]], np.int32)
    a = generate(model, prompt, 12, temperature=1.0, key=jax.random.key(1))
    b = generate(model, prompt, 12, temperature=1.0, key=jax.random.key(1))
    c = generate(model, prompt, 12, temperature=1.0, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    cold = generate(model, prompt, 12, temperature=1e-4, key=jax.random.key(3))
    np.testing.assert_array_equal(cold, generate(model, prompt, 12, temperature=0.0))


def test_bad_generation_calls_raise():
    model = LanguageModel(tiny_lm("attention"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, np.ones((1, 30), np.int32), 10, temperature=0.0)
    with pytest.raises(ValueError, match="key="):
        generate(model, np.ones((1, 3), np.int32), 2)
    with pytest.raises(ValueError, match=r"\[batch, length"):
        generate(model, np.ones((3,), np.int32), 2, temperature=0.0)
    with pytest.raises(TypeError, match="integer"):
        generate(model, np.ones((1, 3), np.float32), 2, temperature=0.0)
