"""Chipmunk (Silveria, Govande, Fu; arXiv 2506.03275): training-free DiT sampling with column-sparse deltas.

Across sampling steps a block's activations change slowly, and a few "columns" carry most of the
change: key columns of each query group's attention, hidden units of each row block of the MLP. So
each layer caches its state at a full step and, at the sparse steps after it, recomputes only those
columns and adds the cached rest::

    attention, full step:  O, lse = attention(q, k, v);  C_g = column sums of softmax over group g
                           S_g = top-k_g(C_g) (+ random columns);  R = O - A_S(q, k, v)
    attention, sparse:     O ~= A_S(q_n, k_n, v_n) + R
    MLP, full step:        P = W1 u + b1,  A = gelu(P),  Y = A W2 + b2,  M_b = mean_{i in b} P_i
    MLP, sparse:           per row block b: J_b = top-k_j |W1 mean_b(u_n) + b1 - M_b,j|
                           a = gelu(u_n W1[:, J_b] + b1[J_b]);  Y_b += (a - A_b,J_b) W2[J_b];  A_b,J_b = a

``A_S`` is :func:`jaxflash.column_sparse_attention` (each group of ``block_q`` consecutive queries
softmax-normalised over its own columns only), ``C`` comes from :func:`jaxflash.column_sums` with the
dense pass's own ``lse`` and ``S_g`` from :func:`jaxflash.topk_columns`. At the step where ``R`` is
formed, ``A_S + R = O``; with every column kept both deltas are exact at every step.

Choices, and where they differ from Chipmunk's code (``sandyresearch/chipmunk``):

- **Schedule**: step ``s`` (0 = the first sampling step, the noisiest) is full when
  ``s < first_full_steps or s % full_step_every == 0``, for attention and MLP alike (Chipmunk's
  attention rule; its MLP uses the modulo alone). The first ``first_dense_layers`` blocks are always
  dense (Chipmunk: 2).
- **Attention columns** are chosen again at every full step from that step's exact column sums
  (Chipmunk's ``recompute_mask``; its FLUX config picks them once, at step 1, from the previous step's
  ``lse``). They are fixed between full steps.
- **MLP units** are chosen again at every sparse step (Chipmunk: every step before step 10, then every
  2nd), by the change of the row block's mean pre-activation since its cached hidden values were
  computed: ``M_b,j`` is refreshed for the units recomputed, so the criterion always measures the drift
  of what ``A`` holds. At a full step every unit is exact and ``M = mean P``.
- **Random columns**: ``attn_random_keys`` / ``mlp_random_keys`` are :func:`jaxflash.topk_columns`'s
  ``random_fraction``: that fraction of the columns not in the top set, a fixed number (static shapes)
  where Chipmunk draws each column with probability about 1%.
- **Batch**: every sample (and both halves of a classifier-free-guidance batch) has its own column
  sets; Chipmunk's MLP is batch 1 only.
- **Token reordering** (``reorder_patch``): the raster token grid is cut into ``tile x tile`` patches
  (patches in raster order, raster order inside each), so that a query group of ``tile^2`` tokens is a
  spatial patch. The tokens are permuted after the position embedding and restored before the final
  layer; attention is permutation-equivariant and the MLP per token, so the model function is unchanged.
  One level of tiling (Chipmunk's FLUX port tiles twice, 8 x 8 then 4 x 4).

The MLP delta is written with XLA gathers (``W1[:, J_b]``, ``W2[J_b]`` per row block and sample), not a
fused kernel, so this module demonstrates the numerics (error against sparsity), not speed.

    config = ChipmunkConfig(attn_top_keys=0.25, mlp_top_keys=0.3, reorder_patch=4)
    x0, stats = chipmunk_sample(dit, labels, key, diffusion=create_diffusion("ddim50"),
                                config=config, return_stats=True)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

import jaxflash
from jaxflash.diffusion.sampling import ddim_sample
from jaxflash.diffusion.schedule import Diffusion
from jaxflash.models.dit import DiT, DiTBlock, SelfAttention, modulate
from jaxflash.models.transformer import MLP
from jaxflash.utils import cdiv, check_int, check_real, matmul_precision

__all__ = [
    "AttentionCache",
    "ChipmunkConfig",
    "ChipmunkStats",
    "MlpCache",
    "attention_full",
    "attention_sparse",
    "chipmunk_sample",
    "invert_permutation",
    "mlp_full",
    "mlp_sparse",
    "permute_tokens",
    "reorder_tokens",
]


@dataclasses.dataclass(frozen=True)
class ChipmunkConfig:
    """What Chipmunk recomputes, and when (module docstring). Hashable: a jit static argument.

    Attributes:
      attn_top_keys: fraction of the key columns each query group keeps by column sum, in (0, 1]
        (``round(attn_top_keys * T)`` columns, at least 1; FLUX 0.165, Hunyuan 0.05).
      attn_random_keys: fraction of the remaining columns added at random per group, in [0, 1]; drawn
        from the sampler's key.
      block_q: queries per group (consecutive tokens; 192 in Chipmunk's kernels, 16 at a 64-token scale).
      mlp_top_keys: fraction of the hidden units each row block recomputes, in (0, 1] (FLUX 0.3).
      mlp_random_keys: fraction of the remaining hidden units added at random per row block, in [0, 1]
        (FLUX 0.05).
      mlp_block_rows: tokens per MLP row block, which share one set of hidden units (Chipmunk: 128).
      mlp_shared_units: one set ``J`` of hidden units for all row blocks and samples (their scores
        averaged), the delta taken against the last full step:
        ``Y = Y_full + (gelu(u W1[:, J] + b1[J]) - gelu(u_full W1[:, J] + b1[J])) W2[J]``, with the
        full step's input ``u_full`` cached. Only weights are sliced; no activation is gathered or
        scattered (on a CPU those cost more than the matmuls they save). Units refreshed at an earlier
        sparse step but not at this one fall back to their full-step values, where Chipmunk's
        cumulative update keeps the refresh.
      full_step_every: a step ``s`` with ``s % full_step_every == 0`` is full (Chipmunk: 10).
      first_full_steps: steps ``s < first_full_steps`` are full too (Chipmunk: ``step < 2``).
      first_dense_layers: the first blocks, always dense (Chipmunk: 2).
      sparse_attn: use the attention delta (else the attention is always dense).
      sparse_mlp: use the MLP delta (else the MLP is always dense).
      reorder_patch: tile side for token reordering (must divide the token grid), or None for raster
        order.
      attn_implementation: the ``implementation`` of :func:`jaxflash.column_sparse_attention` (None: the
        best available).
    """

    attn_top_keys: float = 0.25
    attn_random_keys: float = 0.0
    block_q: int = 16
    mlp_top_keys: float = 0.3
    mlp_random_keys: float = 0.0
    mlp_block_rows: int = 16
    mlp_shared_units: bool = False
    full_step_every: int = 10
    first_full_steps: int = 2
    first_dense_layers: int = 1
    sparse_attn: bool = True
    sparse_mlp: bool = True
    reorder_patch: int | None = None
    attn_implementation: str | None = None

    def __post_init__(self):
        for name in ("attn_top_keys", "mlp_top_keys"):
            check_real(name, getattr(self, name), above=0.0, at_most=1.0)
        for name in ("attn_random_keys", "mlp_random_keys"):
            check_real(name, getattr(self, name), at_least=0.0, at_most=1.0)
        for name in ("block_q", "mlp_block_rows", "full_step_every"):
            check_int(name, getattr(self, name))
        for name in ("first_full_steps", "first_dense_layers"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("sparse_attn", "sparse_mlp", "mlp_shared_units"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool; got {getattr(self, name)!r}")
        if self.reorder_patch is not None:
            check_int("reorder_patch", self.reorder_patch)
        if not (self.attn_implementation is None or isinstance(self.attn_implementation, str)):
            raise ValueError(f"attn_implementation must be a name or None; got {self.attn_implementation!r}")

    def is_full_step(self, step: int) -> bool:
        """Whether sampling step ``step`` (0 = the first) recomputes every layer densely."""
        return step < self.first_full_steps or step % self.full_step_every == 0

    def attn_columns(self, kv_len: int) -> int:
        """Key columns kept per query group by column sum: ``round(attn_top_keys * kv_len)``, >= 1."""
        return max(1, round(self.attn_top_keys * kv_len))

    def mlp_units(self, hidden: int) -> int:
        """Hidden units kept per row block by score: ``round(mlp_top_keys * hidden)``, >= 1."""
        return max(1, round(self.mlp_top_keys * hidden))


# --- token reordering ---------------------------------------------------------------------------------


def reorder_tokens(grid_size: int, tile: int) -> np.ndarray:
    """The tiled token order of a ``grid_size x grid_size`` raster grid: ``perm [grid_size^2]`` int32 with
    ``perm[i]`` the raster index of the ``i``-th token in the new order. The grid is cut into
    ``tile x tile`` patches, taken in raster order, each read in raster order."""
    grid_size = check_int("grid_size", grid_size)
    tile = check_int("tile", tile)
    if grid_size % tile:
        raise ValueError(f"tile={tile} must divide the token grid side grid_size={grid_size}")
    n = grid_size // tile
    raster = np.arange(grid_size * grid_size, dtype=np.int32).reshape(n, tile, n, tile)
    return raster.transpose(0, 2, 1, 3).reshape(-1)


def invert_permutation(perm: Any) -> np.ndarray:
    """``inv`` with ``inv[perm[i]] = i``: :func:`permute_tokens` by ``inv`` undoes it by ``perm``."""
    perm = np.asarray(perm)
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(perm.size)):
        raise ValueError(f"perm must be a permutation of 0 .. n-1; got {perm!r}")
    return np.argsort(perm).astype(np.int32)


def permute_tokens(x: Float[Array, "b t d"], perm: Any) -> Float[Array, "b t d"]:
    """``x[:, perm]``: the tokens of ``x [b, T, D]`` in the order ``perm [T]``."""
    if x.ndim != 3 or np.shape(perm) != (x.shape[1],):
        raise ValueError(f"permute_tokens takes x [b, T, D] and perm [T]; got {x.shape=}, {np.shape(perm)=}")
    return jnp.take(x, jnp.asarray(perm), axis=1)


# --- the attention delta ------------------------------------------------------------------------------


class AttentionCache(NamedTuple):
    """One attention layer's state from its last full step."""

    residual: Float[Array, "b t h d"]  # R = O - A_S, float32
    indices: Int[Array, "b h g c"]  # the key columns of each query group (jaxflash.topk_columns)
    counts: Int[Array, "b h g"]


def _qkv(attn: SelfAttention, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    b, t, d = u.shape
    qkv = attn.qkv(u).reshape(b, t, 3, attn.num_heads, d // attn.num_heads)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def _sparse_part(q, k, v, indices, counts, config: ChipmunkConfig) -> jax.Array:
    out = jaxflash.column_sparse_attention(
        q, k, v, indices, counts, block_q=config.block_q, implementation=config.attn_implementation
    )
    return out.astype(jnp.float32)


def attention_full(
    attn: SelfAttention, u: Float[Array, "b t d"], config: ChipmunkConfig, *, key: jax.Array | None = None
) -> tuple[Float[Array, "b t d"], AttentionCache]:
    """A full step of DiT's attention ``attn`` on ``u``: the dense output ``attn(u)`` and the cache of
    the sparse steps after it (the top ``config.attn_columns(T)`` columns of each query group by column
    sum under this step's ``lse``, plus random ones drawn with ``key``, and ``R = O - A_S``)."""
    b, t, d = u.shape
    q, k, v = _qkv(attn, u)
    o, lse = jaxflash.attention(q, k, v, causal=False, return_lse=True, implementation=attn.implementation)
    colsum = jaxflash.column_sums(q, k, lse, block_q=config.block_q)
    indices, counts = jaxflash.topk_columns(
        colsum, config.attn_columns(t), random_fraction=config.attn_random_keys, key=key
    )
    residual = o.astype(jnp.float32) - _sparse_part(q, k, v, indices, counts, config)
    return attn.proj(o.reshape(b, t, d)), AttentionCache(residual, indices, counts)


def attention_sparse(
    attn: SelfAttention, u: Float[Array, "b t d"], cache: AttentionCache, config: ChipmunkConfig
) -> Float[Array, "b t d"]:
    """A sparse step: ``proj(A_S(q, k, v) + R)`` over the cached columns and residual."""
    b, t, d = u.shape
    q, k, v = _qkv(attn, u)
    o = _sparse_part(q, k, v, cache.indices, cache.counts, config) + cache.residual
    return attn.proj(o.astype(q.dtype).reshape(b, t, d))


# --- the MLP delta ------------------------------------------------------------------------------------


class MlpCache(NamedTuple):
    """One MLP's state, float32: hidden values, output and row-block mean pre-activations, kept
    consistent (``out = hidden W2 + b2``) by each delta update."""

    hidden: Float[Array, "b t f"]  # A = gelu(W1 u + b1), as last computed per unit and row block
    out: Float[Array, "b t d"]  # Y
    mean_pre: Float[Array, "b n f"]  # M: per row block, the mean pre-activation A was computed from
    inputs: Float[Array, "b t d"]  # u of the last full step (what the shared-units delta is taken from)


def _weights(mlp: MLP) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(W1 [D, F], b1 [F], W2 [F, D])`` float32."""
    w1, w2 = mlp.fc1.kernel[...], mlp.fc2.kernel[...]
    b1 = mlp.fc1.bias[...] if mlp.fc1.bias is not None else jnp.zeros(w1.shape[1], w1.dtype)
    return w1.astype(jnp.float32), b1.astype(jnp.float32), w2.astype(jnp.float32)


def _row_blocks(x: jax.Array, rows: int) -> jax.Array:
    """``[b, T, f] -> [b, n, rows, f]``, ``n = ceil(T / rows)``, the last block zero-padded."""
    b, t, f = x.shape
    n = cdiv(t, rows)
    return jnp.pad(x, ((0, 0), (0, n * rows - t), (0, 0))).reshape(b, n, rows, f)


def _block_mean_preactivation(mlp: MLP, u: jax.Array, rows: int) -> jax.Array:
    """``W1 mean_b(u) + b1 [b, n, F]``, the mean over each row block's real rows (= mean of ``W1 u + b1``)."""
    w1, b1, _ = _weights(mlp)
    t = u.shape[1]
    blocks = _row_blocks(u.astype(jnp.float32), rows)
    sizes = jnp.minimum(rows, t - rows * jnp.arange(blocks.shape[1]))
    mean_u = blocks.sum(2) / sizes[:, None]
    return jnp.einsum("bnd,df->bnf", mean_u, w1, precision=matmul_precision(jnp.float32)) + b1


def _check_gelu(mlp: MLP) -> None:
    if not (isinstance(mlp, MLP) and mlp.kind == "gelu"):
        raise ValueError(f"the MLP delta needs DiT's fc1 -> gelu_tanh -> fc2 MLP; got {type(mlp).__name__}")


def mlp_full(
    mlp: MLP, u: Float[Array, "b t d"], config: ChipmunkConfig
) -> tuple[Float[Array, "b t d"], MlpCache]:
    """A full step of the MLP: the dense output ``mlp(u)`` and its cache (hidden values, output and the
    mean pre-activation of each block of ``config.mlp_block_rows`` tokens)."""
    _check_gelu(mlp)
    hidden = jax.nn.gelu(mlp.fc1(u), approximate=True)
    out = mlp.fc2(hidden)
    mean_pre = _block_mean_preactivation(mlp, u, config.mlp_block_rows)
    return out, MlpCache(hidden.astype(jnp.float32), out.astype(jnp.float32), mean_pre, u)


def mlp_sparse(
    mlp: MLP,
    u: Float[Array, "b t d"],
    cache: MlpCache,
    config: ChipmunkConfig,
    *,
    key: jax.Array | None = None,
) -> tuple[Float[Array, "b t d"], MlpCache, Int[Array, "b n k"]]:
    """A sparse step of the MLP: per row block ``b`` (and sample), recompute the hidden units ``J_b``
    whose mean pre-activation moved most since they were cached (the top ``config.mlp_units(F)``, plus
    random ones drawn with ``key``) and apply the delta update ``Y_b += (a - A_b,J) W2[J]``, ``A_b,J = a``.

    Returns ``(out, new cache, J [b, n_blocks, k])``, the units recomputed, ascending per block.
    """
    _check_gelu(mlp)
    b, t, _ = u.shape
    rows = config.mlp_block_rows
    w1, b1, w2 = _weights(mlp)
    hidden_width = w1.shape[1]
    mean_now = _block_mean_preactivation(mlp, u, rows)  # [b, n, F]
    if config.mlp_shared_units:
        return _mlp_sparse_shared(u, cache, config, mean_now, (w1, b1, w2), key)
    units, _ = jaxflash.topk_columns(
        jnp.abs(mean_now - cache.mean_pre),
        config.mlp_units(hidden_width),
        random_fraction=config.mlp_random_keys,
        key=key,
    )  # [b, n, k]
    hi = matmul_precision(u.dtype)
    w1_rows = w1.T[units].astype(u.dtype)  # [b, n, k, D]
    pre = jnp.einsum(
        "bnrd,bnkd->bnrk", _row_blocks(u, rows), w1_rows, precision=hi, preferred_element_type=jnp.float32
    )
    a = jax.nn.gelu(pre + b1[units][:, :, None], approximate=True)  # [b, n, rows, k]
    at = jnp.broadcast_to(units[:, :, None], a.shape)
    hidden = _row_blocks(cache.hidden, rows)
    delta = a - jnp.take_along_axis(hidden, at, axis=-1)
    out = _row_blocks(cache.out, rows) + jnp.einsum(
        "bnrk,bnkd->bnrd", delta, w2[units], precision=matmul_precision(jnp.float32)
    )
    hidden = jnp.put_along_axis(hidden, at, a, axis=-1, inplace=False)
    mean_pre = jnp.put_along_axis(
        cache.mean_pre, units, jnp.take_along_axis(mean_now, units, axis=-1), axis=-1, inplace=False
    )

    def unblock(x):
        return x.reshape(b, -1, x.shape[-1])[:, :t]

    new = MlpCache(unblock(hidden), unblock(out), mean_pre, cache.inputs)
    return new.out.astype(u.dtype), new, units


def _mlp_sparse_shared(u, cache: MlpCache, config: ChipmunkConfig, mean_now, weights, key):
    """:func:`mlp_sparse` with one unit set ``J [k]`` for every token, against the last full step
    (``config.mlp_shared_units``)."""
    w1, b1, w2 = weights
    b, n = mean_now.shape[:2]
    score = jnp.abs(mean_now - cache.mean_pre).mean((0, 1))  # [F]
    units, _ = jaxflash.topk_columns(
        score[None], config.mlp_units(w1.shape[1]), random_fraction=config.mlp_random_keys, key=key
    )
    units = units[0]  # [k]
    w1_j, b1_j, w2_j = w1[:, units], b1[units], w2[units]
    hi = matmul_precision(jnp.float32)

    def act(x):
        pre = jnp.einsum("btd,dk->btk", x.astype(jnp.float32), w1_j, precision=hi)
        return jax.nn.gelu(pre + b1_j, approximate=True)

    out = cache.out + jnp.einsum("btk,kd->btd", act(u) - act(cache.inputs), w2_j, precision=hi)
    # The cache stays the full step's: every sparse step's delta is taken from it.
    return out.astype(u.dtype), cache, jnp.broadcast_to(units, (b, n, units.shape[0]))


# --- the model ----------------------------------------------------------------------------------------


class _LayerState(NamedTuple):
    """What one block carries between steps; the references (a full step's outputs, for the stats'
    "reuse the cached output" baseline) only when stats are collected."""

    attn: AttentionCache | None = None
    mlp: MlpCache | None = None
    attn_reference: jax.Array | None = None
    mlp_reference: jax.Array | None = None


class ChipmunkStats(NamedTuple):
    """Per sampling step (rows) and block (columns), float32 NumPy; dense blocks and full steps show
    error 0 and density 1.

    ``*_error``: ``||sparse - dense|| / ||dense||`` of the operator's output, the dense output computed
    on the same input at that step. ``*_reuse_error``: the same for the output of the layer's last full
    step reused as is (the baseline the delta improves on). ``*_density``: the fraction of key columns
    (attention, per query group) or hidden units (MLP, per row block) computed.
    """

    full_step: np.ndarray  # [steps] bool
    attn_error: np.ndarray
    attn_reuse_error: np.ndarray
    attn_density: np.ndarray
    mlp_error: np.ndarray
    mlp_reuse_error: np.ndarray
    mlp_density: np.ndarray


def _relative_error(a: jax.Array, ref: jax.Array) -> jax.Array:
    a, ref = a.astype(jnp.float32), ref.astype(jnp.float32)
    return jnp.linalg.norm(a - ref) / jnp.maximum(jnp.linalg.norm(ref), jnp.finfo(jnp.float32).tiny)


def _modes(block: Any, layer: int, config: ChipmunkConfig, full: bool) -> tuple[str, str]:
    """``("dense" | "full" | "sparse")`` for the block's attention and MLP at this step."""
    dense = layer < config.first_dense_layers or not isinstance(block, DiTBlock)
    phase = "full" if full else "sparse"
    # A grafted operator (another mixer, another MLP) has no delta: it runs dense.
    attn = dense or not config.sparse_attn or type(block.attn) is not SelfAttention
    mlp = dense or not config.sparse_mlp or not (isinstance(block.mlp, MLP) and block.mlp.kind == "gelu")
    return ("dense" if attn else phase), ("dense" if mlp else phase)


def _operator(mode, dense_fn, full_fn, sparse_fn, u, cache, reference, stats):
    """One operator at one step: ``(out, cache, reference, (error, reuse_error, density))``."""
    exact = (jnp.float32(0), jnp.float32(0), jnp.float32(1))
    if mode == "dense":
        return dense_fn(u), None, None, exact
    if mode == "full":
        out, cache = full_fn(u)
        return out, cache, (out if stats else None), exact
    out, cache, density = sparse_fn(u, cache)
    if not stats:
        return out, cache, None, (jnp.float32(0), jnp.float32(0), density)
    dense = dense_fn(u)
    return out, cache, reference, (_relative_error(out, dense), _relative_error(reference, dense), density)


def _block(block, x, c, state: _LayerState, *, modes, config, key, stats):
    if modes == ("dense", "dense"):
        exact = (jnp.float32(0), jnp.float32(0), jnp.float32(1))
        return block(x, c), _LayerState(), exact + exact
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c)
    attn_key, mlp_key = jax.random.split(key)
    t = x.shape[1]

    def attn_sparse(u, cache):
        return attention_sparse(block.attn, u, cache, config), cache, cache.counts.mean() / t

    u = modulate(block.norm1(x), shift_msa, scale_msa)
    a, attn_cache, attn_ref, attn_stats = _operator(
        modes[0],
        block.attn,
        lambda u: attention_full(block.attn, u, config, key=attn_key),
        attn_sparse,
        u,
        state.attn,
        state.attn_reference,
        stats,
    )
    x = x + gate_msa[:, None] * a

    def mlp_sparse_step(u, cache):
        out, cache, units = mlp_sparse(block.mlp, u, cache, config, key=mlp_key)
        return out, cache, jnp.float32(units.shape[-1] / cache.hidden.shape[-1])

    u = modulate(block.norm2(x), shift_mlp, scale_mlp)
    m, mlp_cache, mlp_ref, mlp_stats = _operator(
        modes[1],
        block.mlp,
        lambda u: mlp_full(block.mlp, u, config),
        mlp_sparse_step,
        u,
        state.mlp,
        state.mlp_reference,
        stats,
    )
    x = x + gate_mlp[:, None] * m
    return x, _LayerState(attn_cache, mlp_cache, attn_ref, mlp_ref), attn_stats + mlp_stats


def _forward(model: DiT, x, t, y, drop, states, *, config, full, key, stats):
    """The DiT forward of one step with the layers' caches: ``(out, new states, stats [6, layers])``."""
    h, c = model.embed(x, t, y, force_drop_ids=drop, deterministic=True)
    if config.reorder_patch is not None:
        perm = reorder_tokens(model.config.grid_size, config.reorder_patch)
        h = permute_tokens(h, perm)
    new_states, layer_stats = [], []
    for layer, block in enumerate(model.blocks):
        state = _LayerState() if states is None else states[layer]
        modes = _modes(block, layer, config, full)
        h, state, st = _block(
            block, h, c, state, modes=modes, config=config, key=jax.random.fold_in(key, layer), stats=stats
        )
        new_states.append(state)
        layer_stats.append(jnp.stack(st))
    if config.reorder_patch is not None:
        h = permute_tokens(h, invert_permutation(perm))
    return model.head(h, c), new_states, jnp.stack(layer_stats, axis=1)


def _guided_forward(model, x, t, y, states, cfg_scale, *, guided, guidance_channels, **kw):
    """``_forward``, or classifier-free guidance over the doubled batch as ``DiT.forward_with_cfg``."""
    if not guided:
        return _forward(model, x, t, y, None, states, **kw)
    b = x.shape[0]
    drop = jnp.concatenate([jnp.zeros((b,), jnp.int32), jnp.ones((b,), jnp.int32)])
    doubled = lambda a: jnp.concatenate([a, a])  # noqa: E731
    out, states, stats = _forward(model, doubled(x), doubled(t), doubled(y), drop, states, **kw)
    g = model.config.in_channels if guidance_channels is None else guidance_channels
    cond, uncond = out[:b], out[b:]
    eps = uncond[..., :g] + cfg_scale * (cond[..., :g] - uncond[..., :g])
    return jnp.concatenate([eps, cond[..., g:]], axis=-1), states, stats


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "config", "full", "guided", "guidance_channels", "clip_denoised", "stats"),
    donate_argnames=("x", "states"),
)
def _chipmunk_step(
    graphdef,
    state,
    x,
    step,
    labels,
    cfg_scale,
    key,
    diffusion,
    states,
    *,
    config,
    full,
    guided,
    guidance_channels,
    clip_denoised,
    stats,
):
    model = nnx.merge(graphdef, state)
    t = jnp.full((x.shape[0],), diffusion.num_timesteps - 1 - step, jnp.int32)
    out, states, step_stats = _guided_forward(
        model,
        x,
        diffusion.timestep_map[t],
        labels,
        states,
        cfg_scale,
        guided=guided,
        guidance_channels=guidance_channels,
        config=config,
        full=full,
        key=jax.random.fold_in(key, step),
        stats=stats,
    )
    x, _ = ddim_sample(diffusion, lambda *_: out, x, t, clip_denoised=clip_denoised)
    return x, states, step_stats


def _check_model(model: Any, config: ChipmunkConfig) -> None:
    if not isinstance(model, DiT):
        raise ValueError(f"chipmunk_sample takes a jaxflash.models.DiT; got {type(model).__name__}")
    if not isinstance(config, ChipmunkConfig):
        raise ValueError(f"config must be a ChipmunkConfig; got {type(config).__name__}")
    grid = model.config.grid_size
    if config.reorder_patch is not None and grid % config.reorder_patch:
        raise ValueError(
            f"reorder_patch={config.reorder_patch} must divide the model's token grid side {grid}"
        )
    if config.first_dense_layers > len(model.blocks):
        raise ValueError(
            f"first_dense_layers={config.first_dense_layers} exceeds the model's {len(model.blocks)} blocks"
        )


def chipmunk_sample(
    model: DiT,
    labels: Int[Array, " b"],
    key: jax.Array,
    *,
    diffusion: Diffusion,
    config: ChipmunkConfig | None = None,
    cfg_scale: float = 1.0,
    guidance_channels: int | None = None,
    clip_denoised: bool = False,
    return_stats: bool = False,
) -> Float[Array, "b h w c"] | tuple[Float[Array, "b h w c"], ChipmunkStats]:
    """Class-conditional images from a DiT by DDIM (eta 0) over ``diffusion``'s chain with Chipmunk's
    sparse deltas (module docstring), each layer's cache carried across steps.

    The noise ``x_T`` is :func:`jaxflash.diffusion.sample_dit`'s for the same ``key``, and ``cfg_scale``,
    ``guidance_channels`` and ``clip_denoised`` mean what they mean there, so the two samples compare
    directly; with every column kept (``attn_top_keys = mlp_top_keys = 1``) or every step full they
    agree to float tolerance. Labels are never dropped at random. Each step is one jitted call (compiled
    once for full steps and once for sparse steps); random columns are drawn from ``key``.

    Args:
      model: a :class:`jaxflash.models.DiT`. Blocks that are not DiT blocks (``parallelize``), and
        grafted operators other than softmax attention and the GELU MLP, run dense.
      labels: int ``[b]`` class ids.
      key: PRNG key.
      diffusion: the chain, e.g. ``create_diffusion("ddim50")``.
      config: a :class:`ChipmunkConfig` (default ``ChipmunkConfig()``).
      return_stats: also return :class:`ChipmunkStats`; this computes each sparse layer densely too.

    Returns:
      ``x_0 [b, H, W, C]``, and the stats when ``return_stats``.
    """
    config = ChipmunkConfig() if config is None else config
    _check_model(model, config)
    cfg_scale = check_real("cfg_scale", cfg_scale, at_least=0.0)
    guided = cfg_scale != 1
    if guided and not model.config.has_null_class:
        raise ValueError("classifier-free guidance needs the null class: set class_dropout_prob > 0")
    if guidance_channels is not None:
        check_int("guidance_channels", guidance_channels)
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class ids; got shape {labels.shape}")
    cfg = model.config
    shape = (labels.shape[0], cfg.input_size, cfg.input_size, cfg.in_channels)
    noise_key, chain_key = jax.random.split(key)
    x = jax.random.normal(noise_key, shape, jnp.float32)
    graphdef, state = nnx.split(model)
    # The schedule is decided here, per step; only the traced part of the config is a compile key.
    traced = dataclasses.replace(config, full_step_every=1, first_full_steps=0)
    states, history = None, []
    for step in range(diffusion.num_timesteps):
        full = config.is_full_step(step)
        x, states, step_stats = _chipmunk_step(
            graphdef,
            state,
            x,
            jnp.int32(step),
            labels,
            jnp.float32(cfg_scale),
            chain_key,
            diffusion,
            None if full else states,
            config=traced,
            full=full,
            guided=guided,
            guidance_channels=guidance_channels,
            clip_denoised=clip_denoised,
            stats=return_stats,
        )
        history.append(step_stats)
    if not return_stats:
        return x
    table = np.asarray(jax.device_get(jnp.stack(history)), np.float32)  # [steps, 6, layers]
    full_steps = np.array([config.is_full_step(s) for s in range(diffusion.num_timesteps)])
    return x, ChipmunkStats(full_steps, *(table[:, i] for i in range(6)))
