"""Devices, the mesh and shardings; several hosts under ``jax.distributed``.

The mesh is ``jax.make_mesh((data, fsdp), ("data", "fsdp"))``. Batches are split along their first axis
over both axes (every device sees different rows); parameters and optimizer state are split over
``fsdp`` along their largest axis that the ``fsdp`` size divides (fully sharded data parallelism, as
MaxText's ``fsdp`` axis) and replicated over ``data``; a leaf that no axis fits, and every scalar, is
replicated. The rule looks only at a leaf's shape, so the Adam moments land where their parameters do.

Several processes: :func:`initialize_distributed` calls ``jax.distributed.initialize`` before any device
is touched. Each process builds only its own rows of the global batch
(``jax.make_array_from_process_local_data``), from the same stateless data pipeline.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jaxflash.train.config import DistributedConfig, MeshConfig

AXES = ("data", "fsdp")
BATCH_SPEC = PartitionSpec(AXES)  # the batch axis over data x fsdp


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value in (None, "") else int(value)


def initialize_distributed(config: DistributedConfig) -> bool:
    """``jax.distributed.initialize`` when the config or the environment asks for several processes.
    Returns whether it ran. On CPU, cross-process collectives use gloo."""
    address = config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = config.num_processes if config.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else _env_int("JAX_PROCESS_ID")
    enabled = config.enabled if config.enabled is not None else (address is not None or (num or 1) > 1)
    if not enabled:
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs: dict[str, Any] = {}
    if address is not None:
        kwargs["coordinator_address"] = address
    if num is not None:
        kwargs["num_processes"] = num
    if pid is not None:
        kwargs["process_id"] = pid
    if config.local_device_ids:
        kwargs["local_device_ids"] = [int(i) for i in config.local_device_ids.split(",")]
    # Only the CPU backend reads this: its collectives across processes go through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(config: MeshConfig) -> jax.sharding.Mesh:
    """The ("data", "fsdp") mesh over every device of every process; in a single process, an explicit
    ``data x fsdp`` smaller than the device count takes the first devices (e.g. ``mesh.data=1``)."""
    count = jax.device_count()
    fsdp = config.fsdp
    if config.data == -1 and count % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the {count} devices (or set mesh.data too)")
    data = count // fsdp if config.data == -1 else config.data
    size = data * fsdp
    if size > count or (size < count and jax.process_count() > 1):
        raise ValueError(
            f"mesh.data x mesh.fsdp = {data} x {fsdp} = {size} must "
            f"{'be at most' if jax.process_count() == 1 else 'equal'} the {count} devices "
            f"(set mesh.data=-1 to take all the devices fsdp leaves)"
        )
    return jax.make_mesh(
        (data, fsdp), AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=jax.devices()[:size]
    )


def leaf_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Shard the largest axis that ``fsdp`` divides over "fsdp"; replicate otherwise."""
    if fsdp == 1 or not shape:
        return PartitionSpec()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in order:
        if shape[axis] % fsdp == 0 and shape[axis] >= fsdp:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
    """A NamedSharding for every leaf of a (train) state, by :func:`leaf_spec`."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), fsdp)), abstract_state)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, grad_accum: int) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % (shards * grad_accum):
        raise ValueError(
            f"batch_size={batch_size} must be divisible by the {shards} batch shards (mesh data x fsdp) "
            f"times optim.grad_accum={grad_accum}; use a multiple of {shards * grad_accum}"
        )


def local_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """The contiguous rows ``[start, stop)`` of the global batch that this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map((batch_size,))
    starts = sorted({(idx[0].start or 0, idx[0].stop or batch_size) for idx in index_map.values()})
    start, stop = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != stop - start:
        raise ValueError(f"this process's devices hold rows {starts}, not one contiguous block")
    return start, stop


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows -> global arrays laid out by ``sharding`` (one transfer call for the whole
    batch when this process holds all of it)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
