"""Monarch Mixer: the bidirectional mixer's reverse filter at negative lags, no residual around the
mixer, the block-diagonal post-LN GLU, the BERT heads; the causal mixer's causality and step (the
M2-GPT LM around it is tested with the LM skeleton in test_model_lm.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import M2Bert, M2Mixer, m2_bert_tiny, m2_gpt_tiny
from jaxflash.models.m2 import M2BertLayer

from jaxflash.testing import assert_close, random_normal


def _conv_2l(g, k_f, k_r, bias):
    """y_t = sum_{s <= t} k_f[t - s] g_s + sum_{s > t} k_r[s - t - 1] g_s + bias g_t (float64)."""
    y = bias * g
    length = g.shape[1]
    for t in range(length):
        for s in range(length):
            y[:, t] += (k_f[t - s] if s <= t else k_r[s - t - 1]) * g[:, s]
    return y


def test_bidirectional_mixer_equations(key):
    cfg = m2_bert_tiny(d_model=4, residual_long_conv=True)
    mixer = M2Mixer(4, 8, config=cfg, rngs=nnx.Rngs(0))
    u = random_normal(key, (2, 6, 4))
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    parts = nnx.jit(
        lambda m, u: (
            m(u),
            m.in_linear(u),
            m.filter.kernel(6),
            m.filter.kernel_rev(6),
            m.filter2.kernel(6),
            m.filter2.kernel_rev(6),
        )
    )(mixer, u)
    out, z, kf, kr, kf2, kr2 = map(f64, parts)
    w, b = f64(mixer.short_conv.weight[...]), f64(mixer.short_conv.bias[...])
    zp = np.pad(z, ((0, 0), (2, 0), (0, 0)))
    zc = w[0] * zp[:, :-2] + w[1] * zp[:, 1:-1] + w[2] * zp[:, 2:] + b  # the short conv stays causal
    x1, x2, v = np.split(zc, 3, axis=-1)
    y = x2 * _conv_2l(x1 * v, kf, kr, f64(mixer.filter.bias[...]))
    y = y + _conv_2l(f64(u), kf2, kr2, f64(mixer.filter2.bias[...]))  # on the raw input
    expected = y @ f64(mixer.out_proj.kernel[...]) + f64(mixer.out_proj.bias[...])
    assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_block_diagonal_glu_and_layer_without_mixer_residual(key):
    cfg = m2_bert_tiny(d_model=8, d_inner=16, mlp_nblocks=4)
    layer = M2BertLayer(cfg, rngs=nnx.Rngs(1))
    mlp = layer.mlp
    h = random_normal(key, (2, 5, 8))
    dense = lambda w: jax.scipy.linalg.block_diag(*np.asarray(w, np.float64))  # noqa: E731  [nb q p] -> [nb q, nb p]
    h64 = np.asarray(h, np.float64)
    x = h64 @ dense(mlp.gated.w[...]).T
    x = np.asarray(jax.nn.gelu(jnp.asarray(x[..., :16]), approximate=False), np.float64) * x[..., 16:]
    out = x @ dense(mlp.out.w[...]).T + np.asarray(mlp.out.bias[...]) + h64
    mu, var = out.mean(-1, keepdims=True), out.var(-1, keepdims=True)
    expected = (out - mu) / np.sqrt(var + 1e-12) * np.asarray(mlp.norm.scale[...]) + np.asarray(
        mlp.norm.bias[...]
    )
    # h <- MLP(Mixer(h)): the mixer's output is not added back to h.
    got_mlp, got_layer, composed = nnx.jit(lambda m, x: (m.mlp(x), m(x), m.mlp(m.mixer(x))))(layer, h)
    assert_close(got_mlp, expected, atol=1e-5)
    assert_close(got_layer, composed, atol=1e-5)


def test_bert_heads(key):
    model = M2Bert(m2_bert_tiny(), rngs=nnx.Rngs(2))
    ids = jax.random.randint(key, (2, 10), 0, 16)

    def heads(m, i):
        hidden = m.encode(i)
        x = m.mlm_norm(jax.nn.gelu(m.mlm_dense(hidden), approximate=False))
        tied = x @ m.word_emb.embedding[...].T + m.mlm_bias[...]
        return hidden, m(i), tied, m.pool(hidden), jnp.tanh(m.pooler(hidden[:, 0]))

    run = nnx.jit(heads)
    hidden, logits, tied, pooled, cls = run(model, ids)
    assert hidden.shape == (2, 10, 32) and logits.shape == (2, 10, 16) and pooled.shape == (2, 32)
    assert_close(logits, tied, atol=1e-4)  # the MLM decoder is the word embedding (plus a bias)
    assert_close(pooled, cls)
    # Bidirectional: an early position sees a later token.
    later = run(model, ids.at[:, 8].set((ids[:, 8] + 1) % 16))[0]
    assert float(jnp.max(jnp.abs(later[:, 0] - hidden[:, 0]))) > 1e-4


def test_causal_mixer_is_causal_and_steps(key, checks):
    cfg = m2_gpt_tiny(d_model=8, residual_long_conv=True)
    mixer = M2Mixer(8, 16, config=cfg, rngs=nnx.Rngs(3))
    u = random_normal(key, (2, 8, 8))
    checks.causal(mixer, u, cut=4)
    checks.step(mixer, u, max_len=16, atol=5e-5)
    checks.prefill(mixer, u, cut=5, max_len=16, atol=5e-5)


def test_training_additions_normalise_the_mixer_input(key, checks):
    """m2's hyena_training_additions: LayerNorm(u) feeds the mixer (and its residual convolution)."""
    cfg = m2_bert_tiny(d_model=4, residual_long_conv=True, training_additions=True)
    mixer = M2Mixer(4, 8, config=cfg, rngs=nnx.Rngs(5))
    plain = M2Mixer(4, 8, config=m2_bert_tiny(d_model=4, residual_long_conv=True), rngs=nnx.Rngs(5))
    u = 3.0 + 2.0 * random_normal(key, (2, 6, 4))
    normed = (u - u.mean(-1, keepdims=True)) / jnp.sqrt(u.var(-1, keepdims=True) + 1e-5)
    assert_close(mixer(u), plain(normed), atol=1e-5)  # scale 1, bias 0 at init; same other weights
    causal = M2Mixer(8, 16, config=m2_gpt_tiny(d_model=8, training_additions=True), rngs=nnx.Rngs(6))
    checks.step(causal, random_normal(key, (2, 7, 8)), max_len=16, atol=5e-5)
    checks.prefill(causal, random_normal(key, (2, 7, 8)), cut=4, max_len=16, atol=5e-5)


@pytest.mark.parametrize(
    "monarch, pooling",
    [(True, "cls"), (True, "mean"), (False, "cls")],
    ids=["m2-cls", "m2-mean", "attention"],
)
def test_padded_batch_embeds_as_unpadded(key, monarch, pooling):
    """With attention_mask, right padding changes no token's state: every sequence of a padded batch
    embeds (and encodes) as it does alone at its own length, for the M2 mixer and for self-attention."""
    cfg = m2_bert_tiny(monarch_mixer_sequence_mixing=monarch, num_attention_heads=4)
    model = M2Bert(cfg, rngs=nnx.Rngs(4))
    lengths = (7, 19, 32)
    ids = np.asarray(jax.random.randint(key, (3, 32), 1, 16))
    mask = (np.arange(32)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    padded = nnx.jit(lambda m, i, a: (m.embed(i, a, pooling=pooling), m.encode(i, attention_mask=a)))
    emb, hidden = padded(model, ids * mask, mask)
    for row, n in enumerate(lengths):
        alone = nnx.jit(lambda m, i: (m.embed(i, pooling=pooling), m.encode(i)))
        emb_1, hidden_1 = alone(model, ids[row : row + 1, :n])
        assert_close(emb[row : row + 1], emb_1, atol=2e-5)
        assert_close(hidden[row : row + 1, :n], hidden_1, atol=2e-5)
    # Without the mask the padding leaks in (what m2 avoids by padding every input to one length).
    leaky = nnx.jit(lambda m, i: m.embed(i, pooling=pooling))(model, ids * mask)
    assert float(jnp.max(jnp.abs(leaky[0] - emb[0]))) > 1e-4


def test_embed_and_mixer_choice_errors():
    model = M2Bert(m2_bert_tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pooling='max'"):
        model.embed(jnp.zeros((1, 4), jnp.int32), pooling="max")
    with pytest.raises(ValueError, match="attention_mask must have input_ids' shape"):
        model.encode(jnp.zeros((1, 4), jnp.int32), attention_mask=jnp.ones((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="num_attention_heads"):
        m2_bert_tiny(monarch_mixer_sequence_mixing=False, num_attention_heads=5)
