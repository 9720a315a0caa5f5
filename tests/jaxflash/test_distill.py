"""Laughing Hyena distillation: a filter that is exactly modal of order d is recovered to 1e-5; poles stay
inside the unit circle; the Hankel spectrum; the distilled Hyena's recurrent step and prefill equal its
parallel forward; a distilled LM generates through generate and tracks the original's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import HyenaConfig, LanguageModel, tiny_lm

from jaxflash.inference import generate
from jaxflash.inference.distill import (
    ModalHyena,
    distill_hyena,
    fit_modal,
    hankel_singular_values,
    modal_kernel,
)


def _exact_modal(rng, channels, order, length):
    radius = rng.uniform(0.5, 0.95, (channels, order))
    poles = radius * np.exp(1j * rng.uniform(0.1, 3.0, (channels, order)))
    residues = rng.standard_normal((channels, order)) + 1j * rng.standard_normal((channels, order))
    h0 = rng.standard_normal(channels)
    return np.asarray(modal_kernel(jnp.asarray(poles), jnp.asarray(residues), jnp.asarray(h0), length))


@pytest.mark.parametrize("order", [2, 4])
def test_an_exactly_modal_filter_is_recovered(order):
    h = _exact_modal(np.random.default_rng(order), 6, order, 64)
    fit = fit_modal(h, order, steps=0)
    assert fit.rel_error.max() < 1e-5
    refit = np.asarray(modal_kernel(jnp.asarray(fit.poles), jnp.asarray(fit.residues), fit.h0, 64))
    np.testing.assert_allclose(refit, h, atol=1e-5 * np.abs(h).max())
    # Its Hankel rank is 2 * order (conjugate pairs): the spectrum drops there.
    sv = hankel_singular_values(h.astype(np.float64))
    assert np.all(sv[:, 2 * order] < 1e-4 * sv[:, 0])


def test_fit_on_a_hyena_filter_keeps_poles_inside_and_improves_with_order():
    op = LanguageModel(tiny_lm("hyena", max_seq_len=64), rngs=nnx.Rngs(0)).blocks[0].mixer
    h = np.asarray(op.filter.kernel(64))
    errors = []
    for order in (2, 8):
        fit = fit_modal(h, order, steps=200)
        assert np.all(np.abs(fit.poles) < 1)
        errors.append(np.median(fit.rel_error))
    assert errors[1] < errors[0]


@pytest.mark.parametrize("hyena_order", [2, 3])
def test_distilled_model_step_and_prefill_equal_its_forward(key, hyena_order):
    cfg = tiny_lm("hyena", max_seq_len=32, hyena=HyenaConfig(order=hyena_order, filter_order=16, emb_dim=5))
    model = LanguageModel(cfg, rngs=nnx.Rngs(1))
    distilled, report = distill_hyena(model, 4, steps=50)
    assert all(isinstance(b.mixer, ModalHyena) for b in distilled.blocks)
    assert "relative l2 error" in report.summary()
    assert isinstance(model.blocks[0].mixer.filter.__class__.__name__, str)  # the original is untouched
    assert model.blocks[0].mixer.filter.__class__.__name__ == "HyenaFilter"
    tokens = jax.random.randint(key, (2, 11), 0, 16)
    logits = nnx.jit(lambda m, t: m(t))(distilled, tokens)
    state = distilled.init_state(2, 16)
    step = nnx.jit(lambda m, t, s: m.step(t, s))
    outs = []
    for t in range(11):
        out, state = step(distilled, tokens[:, t], state)
        outs.append(out)
    np.testing.assert_allclose(np.asarray(jnp.stack(outs, 1)), np.asarray(logits), atol=1e-4, rtol=1e-4)
    head, state = nnx.jit(lambda m, t: m.prefill(t, 16))(distilled, tokens[:, :6])
    np.testing.assert_allclose(np.asarray(head), np.asarray(logits[:, :6]), atol=1e-4, rtol=1e-4)
    out, _ = step(distilled, tokens[:, 6], state)
    np.testing.assert_allclose(np.asarray(out), np.asarray(logits[:, 6]), atol=1e-4, rtol=1e-4)
    # The decode state does not grow with the sequence.
    sizes = {x.size for x in jax.tree.leaves(distilled.init_state(2, 8))}
    assert sizes == {x.size for x in jax.tree.leaves(distilled.init_state(2, 32))}


def test_distilled_lm_generates_and_tracks_the_original():
    model = LanguageModel(tiny_lm("hyena", max_seq_len=64), rngs=nnx.Rngs(2))
    distilled, report = distill_hyena(model, 8, steps=300)
    tokens = np.array([[1, 5, 7, 2, 4, 9, 3, 3]])
    gap = np.abs(np.asarray(distilled(tokens)) - np.asarray(model(tokens))).max()
    assert gap < 1e-3 * np.abs(np.asarray(model(tokens))).max()  # order 8 fits these filters to ~1e-5
    assert np.median(report.layers[0].rel_error) < 1e-3
    out = generate(distilled, tokens, 6, temperature=0.0)
    assert out.tokens.shape == (1, 14)


def test_bad_distillation_calls():
    with pytest.raises(ValueError, match="order"):
        fit_modal(np.zeros((64, 2)), 0)
    with pytest.raises(ValueError, match="length >= 4 \\* order"):
        fit_modal(np.zeros((10, 2)), 4)
    with pytest.raises(ValueError, match="no Hyena mixer"):
        distill_hyena(LanguageModel(tiny_lm("attention"), rngs=nnx.Rngs(0)), 4)


def test_tied_filters_distil_fewer_filters(key):
    cfg = tiny_lm("hyena", max_seq_len=32, hyena=HyenaConfig(filter_order=16, emb_dim=5, filter_heads=4))
    model = LanguageModel(cfg, rngs=nnx.Rngs(3))
    distilled, report = distill_hyena(model, 4, steps=20)
    assert report.layers[0].poles.shape == (4, 4)  # 4 heads' filters, not d_model = 32
    tokens = jax.random.randint(key, (2, 9), 0, 16)
    logits = nnx.jit(lambda m, t: m(t))(distilled, tokens)
    head, state = nnx.jit(lambda m, t: m.prefill(t, 16))(distilled, tokens[:, :5])
    out, _ = nnx.jit(lambda m, t, s: m.step(t, s))(distilled, tokens[:, 5], state)
    np.testing.assert_allclose(np.asarray(out), np.asarray(logits[:, 5]), atol=1e-4, rtol=1e-4)
