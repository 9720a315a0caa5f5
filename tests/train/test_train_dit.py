"""A DiT trained by the training system on the digits: resume is exact (EMA included), evaluations
sample, score and save a grid, the EMA checkpoint loads, and a DiT refuses data it cannot read. The EMA
transformation itself is checked in tests/jaxflash/test_diffusion_evaluate.py."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from jaxflash.train import apply_overrides, load_model, presets, train
from jaxflash.train.metrics import read_metrics

TINY = [
    "steps=6",
    "model.d_model=32",
    "model.n_layers=2",
    "model.num_heads=2",
    "model.input_size=8",
    "data.image_size=8",
    "batch_size=8",
    "optim.warmup_steps=2",
    "checkpoint_every=3",
    "eval_every=3",
    "eval_batches=2",
    "log_every=1",
    "diffusion.diffusion_steps=100",
    "diffusion.sample_steps=4",
    "diffusion.eval_samples=20",
    "diffusion.grid_samples=20",
    "diffusion.ema_decay=0.5",
    "model.class_dropout_prob=0.5",  # so that the dropout RNG stream must resume too
    "progress=false",
    "mesh.data=1",
]


def tiny(workdir, *extra):
    return apply_overrides(presets.get("dit_digits"), [*TINY, f"workdir={workdir}", *extra])


def arrays(tree):
    def plain(x):
        return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    return [np.asarray(plain(x)) for x in jax.tree.leaves(jax.device_get(tree))]


def test_a_resumed_dit_run_is_bitwise_the_uninterrupted_one_and_evaluates_its_samples(tmp_path):
    whole = train(tiny(tmp_path / "whole"), echo=None)
    train(tiny(tmp_path / "split"), stop_after=5, echo=None)
    resumed = train(tiny(tmp_path / "split"), echo=None)
    assert resumed.resumed_from == 3 and resumed.step == 6
    for a, b in zip(arrays(whole.state), arrays(resumed.state), strict=True):  # params, EMA, RNG, ...
        np.testing.assert_array_equal(a, b)
    assert whole.eval == resumed.eval
    assert set(whole.eval) >= {"eval_loss", "eval_mse", "digits_fd", "nn_distance", "label_accuracy"}
    assert np.isfinite([whole.eval["digits_fd"], whole.eval["eval_loss"]]).all()
    records = [r for r in read_metrics(tmp_path / "whole") if "mse" in r]
    assert [r["step"] for r in records] == list(range(1, 7)) and "images_per_s" in records[0]
    for step in (3, 6):
        png = (tmp_path / "whole" / "samples" / f"step_{step}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    bounds = json.loads((tmp_path / "whole" / "samples" / "eval_bounds.json").read_text())
    assert bounds["floor"]["digits_fd"] < bounds["ceiling"]["digits_fd"]
    # The checkpoint loads as the weights, or as their average (ema_decay 0.5: not the same numbers).
    weights, ema = load_model(tmp_path / "whole"), load_model(tmp_path / "whole", ema=True)
    restored = arrays(nnx.state(weights, nnx.Param))
    for a, b in zip(arrays(whole.state.params), restored, strict=True):
        np.testing.assert_array_equal(a, b)
    averaged = arrays(nnx.state(ema, nnx.Param))
    assert any(not np.array_equal(a, b) for a, b in zip(restored, averaged, strict=True))


@pytest.mark.parametrize(
    "extra, message",
    [
        (("data.image_size=16",), "set model.input_size=16"),
        (("data.name=pydoc", "data.image_size=8"), "a DiT trains on image datasets"),
        (("model.num_classes=5",), "set model.num_classes=10"),
    ],
)
def test_a_dit_refuses_data_it_cannot_read(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(tmp_path, *extra), echo=None)


def test_a_language_model_refuses_images(tmp_path):
    config = apply_overrides(
        presets.get("lm_long_conv"),
        ["data.seq_len=none", "data.name=digits", "steps=1", f"workdir={tmp_path}", "progress=false"],
    )
    with pytest.raises(ValueError, match="holds images"):
        train(config, echo=None)
