"""Test session set-up: CPU backend with 8 host devices, x64 off, a fresh random key per test."""

import os

# Before jax is imported anywhere: the CPU backend, and 8 host devices for the sharding tests.
os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# XLA CPU's multi-threaded Eigen pool can wedge for good on some graphs (seen here with jax 0.11.2 on
# the gradient of a 2-layer Hyena LM at seq 1024; also reported upstream). Single-threaded Eigen
# avoids it, and costs the tests little: pytest-xdist already runs one worker per core.
if "xla_cpu_multi_thread_eigen" not in _flags:
    _flags += " --xla_cpu_multi_thread_eigen=false"
os.environ["XLA_FLAGS"] = _flags.strip()

import zlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)

# JAXFLASH_TEST_SEED changes every test's inputs at once; the default keeps CI reproducible.
SEED = int(os.environ.get("JAXFLASH_TEST_SEED", "0"))


def pytest_report_header(config):
    return f"jaxflash: jax {jax.__version__}, devices {jax.devices()}, JAXFLASH_TEST_SEED={SEED}"


@pytest.fixture
def key(request) -> jax.Array:
    """A PRNG key of this test's own, derived from its node id and JAXFLASH_TEST_SEED."""
    return jax.random.key(zlib.crc32(f"{SEED}:{request.node.nodeid}".encode()))
