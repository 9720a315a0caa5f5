"""The training loop end to end on CPU: bitwise exact resume, a kill during a save, the non-finite-loss
stop, 8 devices (data and FSDP) against 1, loading a checkpoint as a model, and the loss falling on the
default corpus."""

import os
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from jaxflash.train import NonFiniteLossError, apply_overrides, load_model, presets, train
from jaxflash.train.metrics import read_metrics

PRESET = "lm_long_conv"  # the quickest to compile; the loop does not depend on the mixer
TINY = [
    "steps=8",
    "model.d_model=16",
    "model.d_inner=32",
    "model.n_layers=2",
    "model.max_seq_len=32",
    "model.hyena.filter_order=8",
    "model.attention.num_heads=1",
    "model.embed_dropout=0.1",  # so that the RNG streams must resume too
    "data.seq_len=32",
    "batch_size=8",
    "optim.warmup_steps=2",
    "checkpoint_every=4",
    "eval_every=4",
    "eval_batches=2",
    "log_every=1",
    "sample_tokens=0",
    "progress=false",
    "mesh.data=1",
]


def tiny(workdir, *extra, preset=PRESET):
    return apply_overrides(presets.get(preset), [*TINY, f"workdir={workdir}", *extra])


def tensorboard_scalars(workdir, tag):
    """(step, value) of every ``tag`` scalar in a run's TensorBoard event files (TFRecord framing:
    u64 length, u32 crc, the Event proto, u32 crc)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted((pathlib.Path(workdir) / "tensorboard").iterdir()):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir) if "loss" in r]


def test_an_interrupted_and_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    extra = ("optim.grad_accum=2", "sample_tokens=8")
    whole = train(tiny(tmp_path / "whole", *extra), echo=None)
    first = train(tiny(tmp_path / "split", *extra), stop_after=6, echo=None)  # "killed" after step 6
    assert first.step == 6 and first.sample is None
    resumed = train(tiny(tmp_path / "split", *extra), echo=None)
    assert resumed.resumed_from == 4 and resumed.step == 8  # steps 5 and 6 were recomputed
    for a, b in zip(leaves(whole.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert losses(tmp_path / "whole") == losses(tmp_path / "split") and len(losses(tmp_path / "split")) == 8
    assert whole.eval == resumed.eval and whole.sample == resumed.sample
    # Each step is logged once, and the run's files are there.
    steps = [r["step"] for r in read_metrics(tmp_path / "split") if "loss" in r]
    assert steps == list(range(1, 9))
    for name in ("config.json", "run.json", "metrics.jsonl", "sample.txt"):
        assert (tmp_path / "split" / name).exists(), name
    # TensorBoard has the same losses; the resumed run's second writer purged the recomputed steps.
    whole_tb = tensorboard_scalars(tmp_path / "whole", "loss")
    assert [s for s, _ in whole_tb] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in whole_tb], losses(tmp_path / "whole"), rtol=1e-6)
    split_tb = dict(tensorboard_scalars(tmp_path / "split", "loss"))  # the latest record of each step
    assert sorted(split_tb) == list(range(1, 9))


def test_the_checkpoint_loads_as_a_model_that_generates(tmp_path):
    from jaxflash.inference import generate

    result = train(tiny(tmp_path, "sample_tokens=4"), echo=None)
    assert result.sample is not None and (tmp_path / "sample.txt").exists()
    model = load_model(tmp_path)
    from flax import nnx

    restored = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    for a, b in zip(leaves(result.state), restored, strict=True):
        np.testing.assert_array_equal(a, b)
    out = generate(model, np.array([[1, 2, 3]]), 5, temperature=0.0).tokens
    assert out.shape == (1, 8) and (np.asarray(out[:, :3]) == [1, 2, 3]).all()
    with pytest.raises(ValueError, match="saved steps"):
        load_model(tmp_path, step=3)
    with pytest.raises(FileNotFoundError, match="not a jaxflash.train workdir"):
        load_model(tmp_path / "nothing")


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(tmp_path, "optim.lr=1e30", "optim.clip_norm=none", "checkpoint_every=1", "steps=20")
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step \d+") as info:
        train(config, echo=None)
    message = str(info.value)
    bad = int(message.split("non-finite at step ")[1].split()[0])
    assert f"the last good checkpoint is step {bad - 1}" in message
    model = load_model(tmp_path)
    from flax import nnx

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_eight_devices_train_like_one(tmp_path):
    assert jax.device_count() == 8  # tests/conftest.py
    run = ("batch_size=16", "optim.grad_accum=2")
    ref = train(tiny(tmp_path / "one", *run), echo=None)
    data8 = train(tiny(tmp_path / "data8", "mesh.data=8", *run), echo=None)
    fsdp = train(tiny(tmp_path / "fsdp", "mesh.data=4", "mesh.fsdp=2", *run), echo=None)
    # Float tolerance: the devices sum their rows' losses and gradients in a different order.
    for run in (data8, fsdp):
        np.testing.assert_allclose(losses(run.workdir), losses(ref.workdir), rtol=2e-5)
        for x, y in zip(leaves(run.state), leaves(ref.state), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-6)
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(fsdp.state.params))


def test_a_changed_config_is_refused_in_the_same_workdir(tmp_path):
    train(tiny(tmp_path, "steps=2", "checkpoint_every=2"), echo=None)
    with pytest.raises(ValueError, match="model.d_model"):
        train(tiny(tmp_path, "model.d_model=32"), echo=None)
    # More steps is a resumption, not a new run.
    assert train(tiny(tmp_path, "steps=3"), echo=None).resumed_from == 2


def test_the_loss_falls_on_the_default_corpus(tmp_path):
    config = apply_overrides(
        presets.get("lm_hyena"),
        [
            f"workdir={tmp_path}",
            "steps=60",
            "batch_size=16",
            "data.seq_len=64",
            "model.max_seq_len=64",
            "model.d_model=32",
            "model.d_inner=64",
            "log_every=10",
            "eval_every=0",
            "sample_tokens=0",
            "progress=false",
            "mesh.data=1",
            "checkpoint_every=60",
        ],
    )
    result = train(config, echo=None)
    curve = losses(tmp_path)
    assert curve[0] > 4.0 and curve[-1] < curve[0] - 1.5, curve  # from ln(256) = 5.5 towards bytes' entropy
    assert result.eval["eval_loss"] < curve[0] - 1.0


def test_a_kill_during_a_save_loses_only_the_unsaved_steps(tmp_path):
    args = [f"{x}" for x in TINY if not x.startswith("steps")] + ["steps=12", f"workdir={tmp_path / 'run'}"]
    env = {**os.environ, "JAXFLASH_KILL_DURING_SAVE": "8"}
    command = [sys.executable, "-m", "jaxflash.train", PRESET, *args]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "4" in saved and "8" not in saved, saved  # step 8's save was cut off: only its tmp dir is left
    env.pop("JAXFLASH_KILL_DURING_SAVE")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout and "from the checkpoint at step 4" in done.stdout
    whole = train(tiny(tmp_path / "whole", "steps=12"), echo=None)
    resumed = load_model(tmp_path / "run")
    from flax import nnx

    for a, b in zip(leaves(whole.state), jax.tree.leaves(nnx.state(resumed, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert losses(tmp_path / "run") == losses(tmp_path / "whole")
    assert pathlib.Path(tmp_path / "run" / "checkpoints" / "12").exists()


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    result = train(tiny(tmp_path, "model.dtype=bfloat16", "steps=2", "checkpoint_every=2"), echo=None)
    assert all(x.dtype == np.float32 for x in leaves(result.state))
    assert np.isfinite(losses(tmp_path)).all() and result.eval["eval_loss"] < 6.0
