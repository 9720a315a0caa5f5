"""The Hydragen engine: generating from shared prefixes gives the tokens of generating from the
concatenated prompts (greedy), for 1-3 sharing levels, GQA, ragged prefixes and suffixes, RoPE and
learned positions, stop tokens, num_return_sequences; models without KV caches are refused."""

import jax
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import AttentionConfig, LanguageModel, tiny_lm

from jaxflash.inference import generate, generate_many, hydragen_generate


def _model(**kw):
    # tiny_lm's attention: 4 query heads, 2 KV heads (GQA), RoPE.
    return LanguageModel(tiny_lm("attention", max_seq_len=48, **kw), rngs=nnx.Rngs(0))


def _rows(rng, n, lo, hi):
    return [rng.integers(1, 16, rng.integers(lo, hi + 1)).tolist() for _ in range(n)]


def _expected(model, levels, suffixes, n, **kw):
    """generate over each sequence's whole prompt (its prefix at every level, then its suffix)."""
    batch = len(suffixes)
    prompts = []
    for b in range(batch):
        prompt = []
        for level in levels:
            prompt += level[b // (batch // len(level))]
        prompts.append(prompt + suffixes[b])
    out = generate(model, prompts, n, temperature=0.0, **kw)
    starts = [len(p) - len(s) for p, s in zip(prompts, suffixes, strict=True)]
    return [np.asarray(out.tokens[b, starts[b] : int(out.lengths[b])]).tolist() for b in range(batch)]


@pytest.mark.parametrize(
    "groups, model_kw",
    [
        ((1,), {}),
        ((2,), dict(attention=AttentionConfig(num_heads=4, num_kv_heads=1))),  # MQA
        ((1, 2), {}),
        ((1, 2, 4), dict(attention=AttentionConfig(num_heads=2, rope=False), learned_pos_emb=True)),
    ],
    ids=["1-level", "1-level-mqa", "2-levels", "3-levels-learned-positions"],
)
def test_shared_prefixes_give_the_tokens_of_the_whole_prompts(groups, model_kw):
    model = _model(**model_kw)
    rng = np.random.default_rng(len(groups))
    batch = 8
    levels = [_rows(rng, g, 0 if i else 2, 6) for i, g in enumerate(groups)]  # ragged, some empty
    suffixes = _rows(rng, batch, 1, 5)
    out = hydragen_generate(model, levels, suffixes, 6, temperature=0.0)
    expected = _expected(model, levels, suffixes, 6)
    for b in range(batch):
        assert np.asarray(out.tokens[b, : int(out.lengths[b])]).tolist() == expected[b]


def test_stop_tokens_and_padded_arrays():
    model = _model()
    rng = np.random.default_rng(7)
    levels, suffixes = [_rows(rng, 2, 3, 3)], _rows(rng, 4, 2, 2)
    free = hydragen_generate(model, levels, suffixes, 6, temperature=0.0)
    stop = int(free.tokens[0, 4])  # the third generated token of row 0
    out = hydragen_generate(
        model, [np.array(levels[0])], np.array(suffixes), 6, temperature=0.0, stop_tokens=[stop], pad_id=15
    )
    gen = free.tokens[0, 2:].tolist()
    end = 2 + gen.index(stop) + 1  # the first time row 0 generates the stop token
    assert out.tokens[0, : int(out.lengths[0])].tolist() == free.tokens[0, :end].tolist()
    assert (np.asarray(out.tokens[0, end:]) == 15).all()
    expected = _expected(model, levels, suffixes, 6, stop_tokens=[stop])
    for b in range(4):
        assert np.asarray(out.tokens[b, : int(out.lengths[b])]).tolist() == expected[b]


def test_num_return_sequences_from_one_prompt():
    model = _model()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    greedy = generate_many(model, prompt, 3, 5, temperature=0.0)
    alone = generate(model, [prompt], 5, temperature=0.0)
    for b in range(3):
        np.testing.assert_array_equal(np.asarray(greedy.tokens[b]), np.asarray(alone.tokens[0, 7:]))
    sampled = generate_many(model, prompt, 4, 8, temperature=1.0, key=jax.random.key(0))
    rows = {tuple(np.asarray(r).tolist()) for r in sampled.tokens}
    assert len(rows) > 1  # the sequences draw different tokens


def test_refusals():
    h3 = LanguageModel(tiny_lm("h3", attn_layer_idx=(1,)), rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="H3"):
        hydragen_generate(h3, [[[1, 2]]], [[3]], 2, temperature=0.0)
    model = _model()
    with pytest.raises(ValueError, match="multiple of the level above"):
        hydragen_generate(model, [[[1]] * 2, [[2]] * 3], [[3]] * 6, 2, temperature=0.0)
    with pytest.raises(ValueError, match="max_seq_len=48"):
        hydragen_generate(model, [[[1] * 40]], [[3] * 5], 4, temperature=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        hydragen_generate(model, [[[1]]], [[3], []], 2, temperature=0.0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate_many(model, [1, 2], 0, 2, temperature=0.0)
