"""Generation: a parallel prefill, then one jitted decode loop. Greedy decoding equals repeatedly taking
the argmax of the parallel forward for every causal model and mixer; ragged prompts, stop tokens, top-k /
top-p, log-probabilities, the streaming callback, reproducible sampling, shape buckets; bad calls raise."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import (
    M2GPT,
    H3Config,
    HyenaConfig,
    LanguageModel,
    Parcae,
    m2_gpt_tiny,
    parcae_tiny,
    tiny_lm,
)

from jaxflash.inference import generate
from jaxflash.inference.generate import filter_logits


def _greedy_by_forward(model, prompt, n):
    """Greedy decoding by the parallel forward alone: the models are causal, so one compiled forward
    over the final length (zeros where tokens are still to come) gives every step's logits."""
    prompt = np.asarray(prompt)
    b, length = prompt.shape
    tokens = np.zeros((b, length + n), np.int32)
    tokens[:, :length] = prompt
    forward = nnx.jit(lambda m, t: m(t))
    for i in range(n):
        logits = forward(model, jnp.asarray(tokens))
        tokens[:, length + i] = np.argmax(np.asarray(logits[:, length + i - 1]), axis=-1)
    return tokens


MODELS = {
    "attention": lambda: LanguageModel(tiny_lm("attention"), rngs=nnx.Rngs(0)),
    "hyena": lambda: LanguageModel(tiny_lm("hyena"), rngs=nnx.Rngs(0)),
    "hyena_order3": lambda: LanguageModel(
        tiny_lm("hyena", hyena=HyenaConfig(order=3, filter_order=16, emb_dim=5)),
        rngs=nnx.Rngs(0),
    ),
    "h3": lambda: LanguageModel(tiny_lm("h3"), rngs=nnx.Rngs(0)),
    "h3_heads": lambda: LanguageModel(tiny_lm("h3", h3=H3Config(d_state=8, head_dim=2)), rngs=nnx.Rngs(0)),
    "long_conv": lambda: LanguageModel(tiny_lm("long_conv"), rngs=nnx.Rngs(0)),
    "s4d": lambda: LanguageModel(tiny_lm("s4d"), rngs=nnx.Rngs(0)),
    "hybrid": lambda: LanguageModel(
        tiny_lm("h3", attn_layer_idx=(1,), learned_pos_emb=True), rngs=nnx.Rngs(0)
    ),
    "m2_gpt": lambda: M2GPT(m2_gpt_tiny(), rngs=nnx.Rngs(0)),
    "parcae": lambda: Parcae(parcae_tiny(), rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_generation_follows_the_parallel_forward(name):
    model = MODELS[name]()
    prompt = np.array([[1, 5, 7, 2, 4], [3, 3, 0, 9, 1]], np.int32)
    out = generate(model, prompt, 4, temperature=0.0)
    assert out.tokens.shape == (2, 9) and (np.asarray(out.tokens[:, :5]) == prompt).all()
    np.testing.assert_array_equal(np.asarray(out.tokens), _greedy_by_forward(model, prompt, 4))
    np.testing.assert_array_equal(np.asarray(out.lengths), [9, 9])


def test_ragged_prompts_equal_generating_each_alone():
    model = MODELS["hybrid"]()
    rows = [[1, 2, 3, 4, 5, 6, 7], [4, 1], [2, 9, 9, 1]]
    out = generate(model, rows, 5, temperature=0.0)
    assert out.tokens.shape == (3, 12)
    for i, row in enumerate(rows):
        alone = _greedy_by_forward(model, np.array([row]), 5)[0]
        n = len(row) + 5
        assert int(out.lengths[i]) == n
        np.testing.assert_array_equal(np.asarray(out.tokens[i, :n]), alone)
        assert (np.asarray(out.tokens[i, n:]) == 0).all()  # pad_id after each row's own end
    # The same as a right-padded array with prompt_lengths.
    padded = np.zeros((3, 7), np.int32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    again = generate(model, padded, 5, prompt_lengths=[7, 2, 4], temperature=0.0)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(out.tokens))


def test_stop_tokens_end_each_row_and_the_loop():
    model = MODELS["attention"]()
    prompt = np.array([[1, 5, 7], [3, 3, 0]], np.int32)
    free = np.asarray(generate(model, prompt, 8, temperature=0.0).tokens)
    stop = int(free[0, 5])  # the third generated token of row 0
    out = generate(model, prompt, 8, temperature=0.0, stop_tokens=[stop], pad_id=15)
    for i in range(2):
        gen = list(free[i, 3:])
        end = 3 + (gen.index(stop) + 1 if stop in gen else 8)
        assert int(out.lengths[i]) == end
        np.testing.assert_array_equal(np.asarray(out.tokens[i, :end]), free[i, :end])
        assert (np.asarray(out.tokens[i, end:]) == 15).all()


def test_sampling_is_reproducible_under_a_key_and_uses_the_temperature():
    model = MODELS["attention"]()
    prompt = np.array([[1, 2]], np.int32)
    a = generate(model, prompt, 12, temperature=1.0, key=jax.random.key(1)).tokens
    b = generate(model, prompt, 12, temperature=1.0, key=jax.random.key(1)).tokens
    c = generate(model, prompt, 12, temperature=1.0, key=jax.random.key(2)).tokens
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    cold = generate(model, prompt, 12, temperature=1e-4, key=jax.random.key(3)).tokens
    np.testing.assert_array_equal(cold, generate(model, prompt, 12, temperature=0.0).tokens)
    # top_k=1 is greedy whatever the temperature.
    top1 = generate(model, prompt, 12, temperature=2.0, top_k=1, key=jax.random.key(4)).tokens
    np.testing.assert_array_equal(top1, generate(model, prompt, 12, temperature=0.0).tokens)


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()  # noqa: E731
    assert kept(top_k=2) == [True, True, False, False, False]
    assert kept(top_p=0.5) == [True, False, False, False, False]  # 0.5 reaches 0.5
    assert kept(top_p=0.6) == [True, True, False, False, False]
    assert kept(top_p=0.86) == [True, True, True, True, False]
    assert kept(top_p=1.0) == [True] * 5


def test_logprobs_are_the_models_own():
    model = MODELS["h3"]()
    prompt = np.array([[1, 5, 7]], np.int32)
    out = generate(model, prompt, 4, temperature=0.0, return_logprobs=True)
    tokens = np.asarray(out.tokens)
    logp = jax.nn.log_softmax(model(jnp.asarray(tokens[:, :-1])), axis=-1)
    expected = np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs[:, 3:]), expected[:, 2:], atol=1e-5)
    assert (np.asarray(out.logprobs[:, :3]) == 0).all()


def test_streaming_callback_sees_every_position_in_order():
    model = MODELS["attention"]()
    seen = []
    out = generate(
        model,
        [[1, 2, 3], [4]],
        3,
        temperature=0.0,
        callback=lambda t, tok, gen: seen.append(
            (int(t), np.asarray(tok).tolist(), np.asarray(gen).tolist())
        ),
    )
    jax.effects_barrier()
    assert [t for t, _, _ in seen] == list(range(1, 6))  # the prefill covers the common prefix (1)
    for t, tok, _ in seen:
        assert tok == np.asarray(out.tokens[:, t]).tolist()
    # Row 0 reads its prompt at 1-2 and generates at 3-5; row 1 generates at 1-3 and is done after.
    assert [gen for _, _, gen in seen] == [
        [False, True],
        [False, True],
        [True, True],
        [True, False],
        [True, False],
    ]


def test_one_compilation_per_shape_bucket(caplog):
    """Counted from JAX's own compile log (``jax_log_compiles``): the decode program compiles once."""
    model = MODELS["attention"]()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        for length in (5, 6, 7):  # prefill 4, prompt width 8, cache 16: one bucket
            generate(model, np.ones((1, length), np.int32), 6, temperature=0.0)
    compiles = [r for r in caplog.records if "Finished XLA compilation of jit(_decode)" in r.getMessage()]
    assert len(compiles) == 1


def test_bad_generation_calls_raise():
    model = MODELS["attention"]()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, np.ones((1, 30), np.int32), 10, temperature=0.0)
    with pytest.raises(ValueError, match="key="):
        generate(model, np.ones((1, 3), np.int32), 2)
    with pytest.raises(ValueError, match=r"\[batch, length"):
        generate(model, np.ones((3,), np.int32), 2, temperature=0.0)
    with pytest.raises(TypeError, match="integer"):
        generate(model, np.ones((1, 3), np.float32), 2, temperature=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1, 2], []], 2, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, np.ones((1, 3), np.int32), 2, top_p=1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, np.ones((1, 3), np.int32), 2, top_p=0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="vocab_size=16"):
        generate(model, np.full((1, 3), 16, np.int32), 2, temperature=0.0)
    with pytest.raises(ValueError, match="stop_tokens"):
        generate(model, np.ones((1, 3), np.int32), 2, temperature=0.0, stop_tokens=[99])
    with pytest.raises(TypeError, match="no prefill/step"):
        generate(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), np.ones((1, 3), np.int32), 2, temperature=0.0)
