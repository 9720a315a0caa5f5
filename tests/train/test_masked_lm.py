"""M2-BERT's masked-LM pretraining through the training system: BERT's corruption, the loss over the
chosen positions only, and a short run of the preset (both the M2 and the attention BERT)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jaxflash.models import M2Bert, m2_bert_tiny
from jaxflash.train import apply_overrides, load_model, presets, train
from jaxflash.train.tasks import mask_tokens, masked_lm_loss

TINY = [
    "steps=16",
    "model.d_model=32",
    "model.d_inner=64",
    "model.n_layers=2",
    "model.max_seq_len=32",
    "model.hyena.filter_order=16",
    "data.seq_len=32",
    "batch_size=8",
    "optim.lr=3e-3",
    "optim.warmup_steps=2",
    "checkpoint_every=8",
    "eval_every=8",
    "eval_batches=2",
    "log_every=4",
    "progress=false",
    "tensorboard=false",
]


def test_mask_tokens_follows_berts_80_10_10():
    tokens = jax.random.randint(jax.random.key(0), (64, 512), 0, 200)
    inputs, chosen = mask_tokens(tokens, jax.random.key(1), rate=0.3, mask_id=255, vocab_size=255)
    tokens, inputs, chosen = map(np.asarray, (tokens, inputs, chosen))
    assert abs(chosen.mean() - 0.3) < 0.01
    assert np.array_equal(inputs[~chosen], tokens[~chosen])  # what is not chosen is left alone
    masked = inputs[chosen] == 255
    kept = inputs[chosen] == tokens[chosen]
    assert abs(masked.mean() - 0.8) < 0.01 and abs(kept.mean() - 0.1 - 0.1 / 255) < 0.01
    assert inputs.max() <= 255 and not (inputs[~chosen] == 255).any()


def test_the_loss_is_the_cross_entropy_at_the_chosen_positions():
    cfg = m2_bert_tiny(vocab_size=17)
    model = M2Bert(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (3, 20), 0, 16)
    weights = jnp.ones((3, 20)).at[2].set(0.0)  # a padding row counts for nothing
    key = jax.random.key(3)
    inputs, chosen = mask_tokens(tokens, key, rate=0.4, mask_id=16, vocab_size=16)

    @nnx.jit
    def both(model):
        batch = dict(inputs=tokens, weights=weights)
        sums = masked_lm_loss(model, batch, key, rate=0.4, mask_id=16, vocab_size=16)
        return sums, optax.softmax_cross_entropy_with_integer_labels(model(inputs), tokens)

    sums, nll = both(model)
    w = chosen * weights
    np.testing.assert_allclose(float(sums.loss), float((nll * w).sum()), rtol=1e-5)
    assert float(sums.weight) == float(w.sum()) > 0


def test_pretraining_runs_learns_and_loads(tmp_path):
    # bert_pydoc is the same run with another mixer (tests/models/test_model_m2.py covers that mixer).
    config = apply_overrides(presets.get("m2_bert_pydoc"), [*TINY, f"workdir={tmp_path}"])
    result = train(config, echo=None)
    # Bytes under a uniform guess cost ln(259) = 5.56 nats; the run must learn the byte statistics.
    assert result.eval["eval_loss"] < 5.0 and result.sample is None
    model = load_model(tmp_path)
    assert isinstance(model, M2Bert)
    ids = jnp.ones((1, 10), jnp.int32)
    assert model.embed(ids).shape == (1, 32)


def test_the_mask_id_must_be_outside_the_data():
    config = apply_overrides(presets.get("m2_bert_pydoc"), [*TINY, "model.vocab_size=256", "workdir=/tmp/x"])
    with pytest.raises(ValueError, match="set model.vocab_size=257"):
        train(config, echo=None)
