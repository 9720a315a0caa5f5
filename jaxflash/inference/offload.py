"""FlexGen-style offloaded generation (Sheng et al., ICML 2023): a decoder LM's blocks, their decode
state (the KV cache) and the hidden states between blocks, placed by fractions across three tiers.

* ``device``: JAX arrays on the accelerator (on a CPU-only machine, the CPU device: a simulation);
* ``host``: NumPy arrays in host memory;
* ``disk``: ``numpy.memmap`` files in a directory the caller names.

A :class:`jaxflash.inference.cost_model.Policy` sets the placement (``wg/wc/wn`` weights, ``cg/cc/cn``
cache, ``hg/hc`` hidden states), the GPU batch size and the number of GPU batches per block. Weights are
assigned tensor by tensor within each layer by their cumulative size (FlexGen's ``get_choice``); the
cache and hidden states of GPU batch ``k`` by the position of ``k`` among the ``num_gpu_batches``.

The **zig-zag block schedule**: for every token position (prefill, then each decode step), the layers
in order and, within a layer, every GPU batch of the block; a layer's offloaded weights are loaded once
per block, not once per batch, and with ``overlap`` the next layer's weights are loaded on a background
thread while the current layer computes. Optional 4-bit group compression (:mod:`jaxflash.quant`'s
``int4``, FlexGen's ``CompressionConfig(4, 64)``) stores offloaded weights and caches compressed;
they are decompressed on the device.

Device memory is *accounted*: every array the engine holds on the device tier (resident weights, the
embedding and head, resident caches and hidden states, and whatever is loaded for the current layer and
prefetched for the next) is added to a meter when it arrives and removed when it is dropped, and so is
the XLA workspace of the layer being computed (the temporaries its compiled program allocates, from
XLA's memory analysis, while it runs); ``stats.device_peak_bytes`` is the meter's peak, and the engine
refuses a policy whose worst case exceeds ``device_budget`` before it starts. Greedy decoding only
(FlexGen's benchmark setting).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import math
import os
import pathlib
import tempfile
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxflash.inference.cost_model import Policy
from jaxflash.models.lm import DecoderLM
from jaxflash.quant import dequantize, quantize

TIERS = ("device", "host", "disk")
_FILE_NUMBERS = itertools.count()  # one sequence for every store of the process: no two share a file


@dataclasses.dataclass
class OffloadStats:
    """What one :meth:`OffloadedLM.generate` call moved and held: bytes loaded from host and from disk,
    weight loads (one per offloaded layer per block and position), the device meter's peak."""

    host_to_device_bytes: int = 0
    disk_to_device_bytes: int = 0
    weight_loads: int = 0
    device_peak_bytes: int = 0


class _Meter:
    """Bytes held on the device tier, with its peak (thread-safe: the prefetch thread adds to it).

    The convention: whoever creates or loads an array on the device adds it; whoever drops it removes it;
    :meth:`_Store.put` to the device tier keeps the count, to another tier removes it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.now += nbytes
            self.peak = max(self.peak, self.now)

    def remove(self, nbytes: int) -> None:
        with self._lock:
            self.now -= nbytes


def _nbytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _tier_of(position: float, device: float, host: float) -> str:
    """The tier of an item whose midpoint sits at ``position`` in [0, 1] (FlexGen's ``get_choice``)."""
    if position < device:
        return "device"
    if position < device + host:
        return "host"
    return "disk"


@dataclasses.dataclass
class _Item:
    """One stored array: on the device (``value`` a jax array), on the host (numpy arrays) or on disk
    (memmap paths); ``compressed`` holds the int4 layout when it is stored compressed."""

    tier: str
    value: Any
    compressed: Any = None


class _Store:
    """Arrays kept on a tier, optionally int4-compressed off the device (module docstring)."""

    def __init__(self, directory: pathlib.Path, meter: _Meter, compress: bool, axis: int):
        self.directory = directory
        self.meter = meter
        self.compress = compress
        self.axis = axis

    def _to_disk(self, host: np.ndarray) -> tuple[pathlib.Path, np.dtype, tuple[int, ...]]:
        path = self.directory / f"tensor-{next(_FILE_NUMBERS)}.bin"
        mm = np.memmap(path, dtype=host.dtype, mode="w+", shape=host.shape)
        mm[...] = host
        mm.flush()
        del mm
        return path, host.dtype, host.shape

    def put(self, array: jax.Array, tier: str) -> _Item:
        """Store a device array that the meter counts (module convention)."""
        if tier == "device":
            return _Item(tier, array)
        self.meter.remove(array.nbytes)
        compressible = self.compress and jnp.issubdtype(array.dtype, jnp.floating) and array.ndim >= 1
        layout = None
        if compressible:
            q = quantize(array, "int4", axis=self.axis)
            parts, layout = jax.tree.flatten(q)
        else:
            parts = [array]
        hosts = [np.asarray(x) for x in parts]
        value = hosts if tier == "host" else [self._to_disk(h) for h in hosts]
        return _Item(tier, value, layout)

    def take(self, item: _Item, stats: OffloadStats) -> jax.Array:
        """The item's array on the device, counted by the meter; a disk item's files are deleted."""
        if item.tier == "device":
            return item.value
        if item.tier == "host":
            hosts = item.value
            stats.host_to_device_bytes += sum(h.nbytes for h in hosts)
        else:
            hosts = [
                np.array(np.memmap(path, dtype=dtype, mode="r", shape=shape))
                for path, dtype, shape in item.value
            ]
            stats.disk_to_device_bytes += sum(h.nbytes for h in hosts)
        parts = [jax.device_put(h) for h in hosts]
        loaded = sum(x.nbytes for x in parts)
        self.meter.add(loaded)
        if item.compressed is None:
            return parts[0]
        array = dequantize(jax.tree.unflatten(item.compressed, parts))
        self.meter.add(array.nbytes)
        self.meter.remove(loaded)
        return array

    def free(self, item: _Item) -> None:
        """Forget a stored item: its device bytes leave the meter, its disk files are deleted."""
        if item.tier == "device":
            self.meter.remove(item.value.nbytes)
        elif item.tier == "disk":
            for path, _, _ in item.value:
                pathlib.Path(path).unlink(missing_ok=True)


class _Shell(nnx.Module):
    """The LM without its blocks: embedding (and learned positions), final norm and the tied head. It
    shares those modules with the model and calls the model's own ``embed_tokens`` and ``head``."""

    def __init__(self, model: DecoderLM):
        self.config = model.config
        self.embed = model.embed
        self.pos_emb = model.pos_emb
        self.embed_dropout = model.embed_dropout
        self.final_norm = model.final_norm

    embed_tokens = DecoderLM.embed_tokens
    head = DecoderLM.head


def _check_directory(directory: str | os.PathLike | None) -> pathlib.Path:
    if directory is None:
        return pathlib.Path(tempfile.mkdtemp(prefix="jaxflash-offload-"))
    path = pathlib.Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".jaxflash-write-probe"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"offload_dir={str(path)!r} is not a writable directory ({e.strerror or e}); name a directory "
            "this process can create files in, or give offload_dir=None for a temporary one"
        ) from None
    return path


@functools.cache
def _block_programs(graphdef: Any, treedef: Any, max_len: int) -> tuple[Any, Any]:
    """The jitted decode step and prefill of a block structure, shared by every engine that has it (a
    second engine over the same model compiles nothing)."""

    def block(leaves):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))

    step = jax.jit(lambda leaves, x, state: block(leaves).step(x, state))
    prefill = jax.jit(lambda leaves, x: block(leaves).prefill(x, max_len))
    return step, prefill


_WORKSPACES: dict[Any, int] = {}


def _workspace(program: Any, *specs: Any) -> int:
    """Bytes of XLA temporaries ``program`` allocates for arguments of these shapes (its compiled
    memory analysis, cached per program and shapes; 0 where the backend reports none)."""
    leaves, treedef = jax.tree.flatten(specs)
    key = (program, treedef, tuple(leaves))
    if key not in _WORKSPACES:
        analysis = program.lower(*specs).compile().memory_analysis()
        _WORKSPACES[key] = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
    return _WORKSPACES[key]


def _specs(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


_EMBED = nnx.jit(lambda shell, tokens, positions: shell.embed_tokens(tokens, positions))
_HEAD = nnx.jit(lambda shell, x: shell.head(x))


class OffloadedLM:
    """A decoder LM (``LanguageModel``, ``M2GPT``) whose blocks, decode states and hidden states live on
    the tiers ``policy`` names (module docstring).

    ``device_budget``: bytes the engine may hold on the device tier (None: no limit); a policy that
    could exceed it raises ``ValueError`` naming the minimum. ``overlap``: prefetch the next layer's
    weights on a background thread. ``offload_dir``: where disk-tier tensors go (None: a temporary
    directory). ``max_len``: the longest prompt plus generation (default the model's ``max_seq_len``)."""

    def __init__(
        self,
        model: DecoderLM,
        policy: Policy,
        *,
        offload_dir: str | os.PathLike | None = None,
        device_budget: int | None = None,
        overlap: bool = True,
        max_len: int | None = None,
    ):
        if not isinstance(model, DecoderLM):
            raise ValueError(
                f"OffloadedLM takes a decoder LM (LanguageModel, M2GPT: embedding, blocks, tied head); got "
                f"{type(model).__name__}"
            )
        if not isinstance(policy, Policy):
            raise ValueError(
                f"policy must be a jaxflash.inference.cost_model.Policy; got {type(policy).__name__}"
            )
        if policy.hn:
            raise ValueError("hidden states cannot live on disk (policy.hn must be 0), as in FlexGen")
        if device_budget is not None and (isinstance(device_budget, bool) or device_budget <= 0):
            raise ValueError(
                f"device_budget must be a positive number of bytes or None; got {device_budget!r}"
            )
        self.model = model
        self.policy = policy
        self.overlap = bool(overlap)
        self.max_len = max_len or model.config.max_seq_len
        self.device_budget = device_budget
        self.meter = _Meter()
        self.directory = _check_directory(offload_dir)
        # FlexGen's groups: weights along dim 0 (a kernel's inputs), the cache along the head dim (last).
        self._weights = _Store(self.directory, self.meter, policy.compress_weight, axis=0)
        self._caches = _Store(self.directory, self.meter, policy.compress_cache, axis=-1)
        self._hidden = _Store(self.directory, self.meter, False, axis=-1)

        self._shell = _Shell(model)
        self.shell_bytes = _nbytes(nnx.state(self._shell))
        self.meter.add(self.shell_bytes)
        graphdef, state = nnx.split(model.blocks[0])
        self._graphdef = graphdef
        self._treedef = jax.tree.structure(state)
        self._layers = []
        for block in model.blocks:
            block_graph, block_state = nnx.split(block)
            if block_graph != graphdef:
                raise ValueError("OffloadedLM needs blocks of one structure (every layer the same mixer)")
            self._layers.append(self._place_layer(jax.tree.leaves(block_state)))
        self.layer_bytes = _nbytes(state)
        self._leaf_specs = tuple(_specs(jax.tree.leaves(state)))
        self.model_bytes = self.shell_bytes + len(self._layers) * self.layer_bytes
        self.resident_weight_bytes = self.meter.now - self.shell_bytes
        self._state_def = jax.tree.structure(
            jax.eval_shape(lambda: model.blocks[0].init_state(1, self.max_len))
        )
        self._step, self._prefill = _block_programs(graphdef, self._treedef, self.max_len)
        self._embed, self._head = _EMBED, _HEAD
        if device_budget is not None:
            worst = self.worst_case_device_bytes()
            if worst > device_budget:
                self.close()
                raise ValueError(
                    f"device_budget={device_budget} bytes is too small for this policy, which may hold "
                    f"{worst} bytes on the device (embedding and head {self.shell_bytes}, resident weights "
                    f"{self.resident_weight_bytes}, loaded layers, caches, hidden states and XLA's "
                    f"workspace); the minimum for any policy on this model is {self.minimum_device_bytes()} "
                    "bytes (everything offloaded, one sequence a GPU batch, no overlap). Raise the budget "
                    "or lower wg, cg, hg or the batch"
                )

        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if self.overlap else None

    # --- placement and memory --------------------------------------------------------------------------

    def _place_layer(self, leaves: list) -> list[_Item]:
        sizes = np.array([x.size * x.dtype.itemsize for x in leaves], np.float64)
        mids = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        items = []
        for leaf, mid in zip(leaves, mids, strict=True):
            array = jnp.asarray(leaf)
            self.meter.add(array.nbytes)
            items.append(self._weights.put(array, _tier_of(mid, self.policy.wg, self.policy.wc)))
        return items

    def _batch_tier(self, k: int, device: float, host: float) -> str:
        return _tier_of((k + 0.5) / self.policy.num_gpu_batches, device, host)

    def _per_sequence(self) -> tuple[int, int, int]:
        """Bytes of one sequence's decode state (one layer), hidden state (max_len positions) and logits."""
        cache = _nbytes(jax.eval_shape(lambda: self.model.blocks[0].init_state(1, self.max_len)))
        hidden = (
            self.max_len * self.model.config.d_model * jnp.dtype(self.model.config.compute_dtype).itemsize
        )
        return (
            cache,
            max(hidden, self.max_len * self.model.config.d_model * 4),
            self.model.config.vocab_size * 4,
        )

    def workspace_bytes(self, gpu_batch_size: int, length: int) -> int:
        """The XLA temporaries of one layer for one GPU batch: the larger of the prefill's over
        ``length`` positions and the decode step's (compiled memory analysis, cached per shape)."""
        d = self.model.config.d_model
        dtype = jnp.dtype(self.model.config.compute_dtype)
        x = jax.ShapeDtypeStruct((gpu_batch_size, length, d), dtype)
        token = jax.ShapeDtypeStruct((gpu_batch_size, d), dtype)  # decode feeds one position
        state = _specs(jax.eval_shape(lambda: self.model.blocks[0].init_state(gpu_batch_size, self.max_len)))
        leaves = list(self._leaf_specs)
        return max(_workspace(self._prefill, leaves, x), _workspace(self._step, leaves, token, state))

    def worst_case_device_bytes(self, batch: int | None = None) -> int:
        """An upper bound on what this policy holds on the device for ``batch`` sequences (default one
        block): the embedding and head, resident weights, the loaded layer (and the prefetched one),
        resident caches and hidden states, one GPU batch's inputs, outputs and logits, and the XLA
        workspace of its layer at the longest prompt ``max_len - 1``."""
        p = self.policy
        batch = batch or p.gpu_batch_size * p.num_gpu_batches
        gbs = min(p.gpu_batch_size, batch)
        cache, hidden, logits = (gbs * b for b in self._per_sequence())
        offloaded = max(
            self.layer_bytes - sum(i.value.nbytes for i in layer if i.tier == "device")
            for layer in self._layers
        )
        loaded = (2 if self.overlap else 1) * offloaded * (1.25 if p.compress_weight else 1)
        batches = range(math.ceil(batch / gbs))
        resident_caches = sum(self._batch_tier(k, p.cg, p.cc) == "device" for k in batches)
        resident_hidden = sum(self._batch_tier(k, p.hg, p.hc) == "device" for k in batches)
        return int(
            self.shell_bytes
            + self.resident_weight_bytes
            + loaded
            + resident_caches * len(self._layers) * cache
            + resident_hidden * hidden
            + 2 * (cache + hidden) * (1.25 if p.compress_cache else 1)
            + logits
            + self.workspace_bytes(gbs, max(self.max_len - 1, 1))
        )

    def minimum_device_bytes(self) -> int:
        """The bound of :meth:`worst_case_device_bytes` for the smallest policy: everything offloaded,
        one sequence a GPU batch, no prefetch."""
        cache, hidden, logits = self._per_sequence()
        workspace = self.workspace_bytes(1, max(self.max_len - 1, 1))
        return int(self.shell_bytes + self.layer_bytes + 2 * (cache + hidden) + logits + workspace)

    # --- the zig-zag schedule --------------------------------------------------------------------------

    def _load_layer(self, j: int, stats: OffloadStats) -> tuple[list, int]:
        """Layer ``j``'s weights on the device and the bytes loaded for it (to drop after the layer)."""
        arrays, loaded = [], 0
        for item in self._layers[j]:
            array = self._weights.take(item, stats)
            arrays.append(array)
            if item.tier != "device":
                loaded += array.nbytes
        stats.weight_loads += loaded > 0
        return arrays, loaded

    def _consume(self, store: _Store, item: _Item, stats: OffloadStats) -> jax.Array:
        """A stored cache or hidden state taken back onto the device, its stored copy gone."""
        array = store.take(item, stats)
        if item.tier != "device":
            store.free(item)
        return array

    def _run_layers(self, compute, carries: list, stats: OffloadStats) -> list:
        """``carries[k] = compute(j, weights, k, carries[k])`` for each layer ``j`` and, within it, each
        GPU batch ``k``: one weight load per layer per block, the next prefetched when overlapping."""
        n = len(self._layers)
        pending = self._pool.submit(self._load_layer, 0, stats) if self._pool else None
        for j in range(n):
            weights, loaded = pending.result() if pending else self._load_layer(j, stats)
            pending = self._pool.submit(self._load_layer, j + 1, stats) if self._pool and j + 1 < n else None
            for k in range(len(carries)):
                carries[k] = compute(j, weights, k, carries[k])
            jax.block_until_ready([c.value for c in carries if c.tier == "device"])
            del weights
            self.meter.remove(loaded)
        return carries

    def generate(self, prompts: np.ndarray, max_new_tokens: int) -> tuple[np.ndarray, OffloadStats]:
        """Greedy continuations ``[b, max_new_tokens]`` of equal-length ``prompts [b, p]`` (``b`` a
        multiple of ``gpu_batch_size``, at most one block of ``num_gpu_batches``), and what the run moved."""
        p = self.policy
        prompts = np.asarray(prompts)
        if prompts.ndim != 2 or not np.issubdtype(prompts.dtype, np.integer):
            raise ValueError(
                f"prompts must be int tokens [batch, length]; got {prompts.dtype} {prompts.shape}"
            )
        batch, length = prompts.shape
        if batch % p.gpu_batch_size or batch > p.gpu_batch_size * p.num_gpu_batches:
            raise ValueError(
                f"{batch} prompts do not fill GPU batches of {p.gpu_batch_size} within one block of "
                f"{p.num_gpu_batches}: give a multiple of {p.gpu_batch_size}, at most "
                f"{p.gpu_batch_size * p.num_gpu_batches}"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        if length + max_new_tokens > self.max_len:
            raise ValueError(
                f"prompt length {length} + max_new_tokens {max_new_tokens} exceeds max_len {self.max_len}"
            )
        stats = OffloadStats()
        self.meter.peak = self.meter.now
        gbs = p.gpu_batch_size
        groups = range(batch // gbs)
        caches: list[list[list[_Item]]] = [[[] for _ in groups] for _ in self._layers]

        def hidden_put(k: int, x: jax.Array) -> _Item:
            self.meter.add(x.nbytes)
            return self._hidden.put(x, self._batch_tier(k, p.hg, p.hc))

        def cache_put(j: int, k: int, state: Any) -> None:
            tier = self._batch_tier(k, p.cg, p.cc)
            leaves = jax.tree.leaves(state)
            self.meter.add(_nbytes(leaves))
            caches[j][k] = [self._caches.put(leaf, tier) for leaf in leaves]

        def next_token(item: _Item, last: bool) -> jax.Array:
            x = self._consume(self._hidden, item, stats)
            logits = self._head(self._shell, x[:, -1] if last else x)
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            self.meter.add(logits.nbytes)
            self.meter.remove(logits.nbytes + x.nbytes)
            return token

        workspace = self.workspace_bytes(gbs, length)  # held while a layer computes

        def prefill(j: int, weights: list, k: int, item: _Item) -> _Item:
            x = self._consume(self._hidden, item, stats)
            self.meter.add(workspace)
            y, state = self._prefill(weights, x)
            self.meter.remove(workspace)
            cache_put(j, k, state)
            out = hidden_put(k, y)
            self.meter.remove(x.nbytes)
            return out

        def decode(j: int, weights: list, k: int, item: _Item) -> _Item:
            x = self._consume(self._hidden, item, stats)
            leaves = [self._consume(self._caches, c, stats) for c in caches[j][k]]
            self.meter.add(workspace)
            y, state = self._step(weights, x, jax.tree.unflatten(self._state_def, leaves))
            self.meter.remove(workspace)
            cache_put(j, k, state)
            out = hidden_put(k, y)
            self.meter.remove(x.nbytes + _nbytes(leaves))
            return out

        hidden = [
            hidden_put(
                k,
                self._embed(
                    self._shell, jnp.asarray(prompts[k * gbs : (k + 1) * gbs]), jnp.arange(length)[None]
                ),
            )
            for k in groups
        ]
        hidden = self._run_layers(prefill, hidden, stats)
        tokens = [next_token(item, last=True) for item in hidden]
        out = np.zeros((batch, max_new_tokens), np.int32)
        for step in range(max_new_tokens):
            for k in groups:
                out[k * gbs : (k + 1) * gbs, step] = np.asarray(tokens[k])
            if step + 1 == max_new_tokens:
                break
            position = jnp.asarray(length + step)[None]
            hidden = [hidden_put(k, self._embed(self._shell, tokens[k], position)) for k in groups]
            hidden = self._run_layers(decode, hidden, stats)
            tokens = [next_token(item, last=False) for item in hidden]
        for layer in caches:
            for items in layer:
                for item in items:
                    self._caches.free(item)
        stats.device_peak_bytes = self.meter.peak
        return out, stats

    def close(self) -> None:
        """Stops the prefetch thread and deletes the disk-tier weight files."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown()
        for layer in self._layers:
            for item in layer:
                self._weights.free(item)
        self._layers = []
