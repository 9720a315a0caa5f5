"""Two local processes under ``jax.distributed`` (CPU collectives over gloo) train to the same
parameters as one process: each builds only its rows of the global batch, and the gradient is summed
across them."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from flax import nnx
from jaxflash.train import load_model, train

from .test_train import PRESET, TINY, leaves, losses, tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    port = _free_port()
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    env = {**os.environ, "XLA_FLAGS": flags + " --xla_force_host_platform_device_count=1"}
    common = [*TINY, "mesh.data=-1", f"workdir={tmp_path / 'two'}"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jaxflash.train",
                PRESET,
                *common,
                f"distributed.coordinator_address=localhost:{port}",
                "distributed.num_processes=2",
                f"distributed.process_id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "2 device(s)" in outs[0][0] and "2 process(es)" in outs[0][0]
    one = train(tiny(tmp_path / "one"), echo=None)
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=2e-5)
    two = load_model(tmp_path / "two")
    for a, b in zip(leaves(one.state), jax.tree.leaves(nnx.state(two, nnx.Param)), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=2e-6)
