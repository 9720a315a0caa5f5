"""Grafting (Chandrasegaran, Poli, Fu et al. 2025, "Exploring Diffusion Transformer Designs via Grafting",
arXiv 2506.05340): edit a pretrained DiT by swapping an operator of some blocks for a new one, then
recover quality by activation distillation (stage 1, :mod:`jaxflash.diffusion.graft`) and a short
finetune with the diffusion loss (stage 2).

A DiT block calls ``self.attn(u)`` and ``self.mlp(u)`` on its modulated input ``u [b, T, D]`` (tokens in
raster order); :func:`graft` puts a fresh operator with that call there and keeps the block's adaLN
modulation and gates. The replacement operators, named as the paper names them (``src/operators/**`` of
``keshik6/grafting``), with ``[q, k, v] = split(W_in u)`` into three ``D``-wide chunks::

    Hyena-X    [q, k, v] = h_4 * (W_in u)          y = W_out(q . (k . v))
    Hyena-Y    [q, k, v] = W_in u                  y = W_out(q . (g_4 * (k . v)))
    Hyena-SE   [q, k, v] = h_4 * (W_in u)          y = W_out(q . (g_4 * (k . v)))
    SWA        softmax attention, each token sees the w tokens on each side of it (and itself)
    linear     phi(q) [sum_j phi(k_j) v_j^T] / (phi(q) . sum_j phi(k_j)), phi = elu + 1
    MLP r      fc2(GELU_tanh(fc1 u)), hidden width int(r D)

``h_4 * z`` and ``g_4 * z`` are depthwise causal convolutions along the tokens with 4 taps
(``jaxflash.short_conv`` through :class:`~jaxflash.models.ShortConv`; the ``causal_conv1d_fn`` of the
paper's code). The featurizer ``h_4`` (on all ``3 D`` projected channels) has torch ``Conv1d``'s random
init; the inner ``g_4`` (on ``k . v``) starts as the identity (last tap 1, the others and the bias 0),
so at init Hyena-Y is the gated linear map ``W_out(q . (k . v))``. The Linears are xavier-uniform with
zero bias, as DiT initialises every Linear; the MLP keeps :class:`~jaxflash.models.MLP`'s own init.
The paper's Mamba-2 ("linear attention" in its tables) is not here; :class:`LinearAttention` is
Katharopoulos et al.'s, through ``jaxflash.linear_attention``.

:func:`parallelize` is the paper's depth-to-width case study (pairs of blocks run in parallel); see
:class:`ParallelDiTBlock` for the formula, which the reference notes could not verify.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx
from jaxflash.models.dit import DiT, DiTBlock, SelfAttention, _linear, modulate
from jaxflash.models.hyena import ShortConv
from jaxflash.models.transformer import MLP
from jaxtyping import Array, Float

import jaxflash
from jaxflash.utils import check_int, check_real, is_int

KINDS = ("attn", "mlp")
SOFTMAX_OPERATORS = ("mha", "swa")


# --- replacement operators ----------------------------------------------------------------------------


def identity_short_conv(channels: int, taps: int, *, rngs: nnx.Rngs) -> ShortConv:
    """A :class:`ShortConv` that starts as the identity: ``w[-1] = 1`` (the tap on the current token),
    every other tap and the bias 0."""
    conv = ShortConv(channels, taps, rngs=rngs)
    conv.weight.set_value(jnp.zeros((taps, channels), jnp.float32).at[-1].set(1.0))
    conv.bias.set_value(jnp.zeros((channels,), jnp.float32))
    return conv


class GatedConvolution(nnx.Module):
    """The Hyena family of the grafting paper: ``y = W_out(q . inner(k . v))`` with
    ``[q, k, v] = featurizer(W_in u)``; each convolution is depthwise causal with ``taps`` taps, or
    absent (the identity). :class:`HyenaX`, :class:`HyenaY` and :class:`HyenaSE` choose which."""

    def __init__(
        self,
        d_model: int,
        *,
        featurizer: bool,
        inner: bool,
        taps: int = 4,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_int("d_model", d_model)
        check_int("taps", taps)
        self.in_proj = _linear(d_model, 3 * d_model, dtype, rngs)
        self.featurizer = ShortConv(3 * d_model, taps, rngs=rngs) if featurizer else None
        self.inner = identity_short_conv(d_model, taps, rngs=rngs) if inner else None
        self.out_proj = _linear(d_model, d_model, dtype, rngs)

    def __call__(self, u: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        z = self.in_proj(u)  # [b, t, 3d]
        if self.featurizer is not None:
            z = self.featurizer(z)
        q, k, v = jnp.split(z, 3, axis=-1)
        kv = k * v
        if self.inner is not None:
            kv = self.inner(kv)
        return self.out_proj(q * kv)


class HyenaX(GatedConvolution):
    """Hyena-X: ``[q, k, v] = h * (W_in u)``, ``y = W_out(q . (k . v))``; ``h`` a depthwise causal
    convolution over the tokens (``taps`` taps) on all ``3 D`` projected channels."""

    def __init__(self, d_model: int, *, taps: int = 4, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__(d_model, featurizer=True, inner=False, taps=taps, dtype=dtype, rngs=rngs)


class HyenaY(GatedConvolution):
    """Hyena-Y: ``[q, k, v] = W_in u`` (no featurizer), ``y = W_out(q . (g * (k . v)))``; ``g`` depthwise
    causal over the tokens (``taps`` taps), initialised to the identity."""

    def __init__(self, d_model: int, *, taps: int = 4, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__(d_model, featurizer=False, inner=True, taps=taps, dtype=dtype, rngs=rngs)


class HyenaSE(GatedConvolution):
    """Hyena-SE: ``[q, k, v] = h * (W_in u)``, ``y = W_out(q . (g * (k . v)))``: Hyena-X's featurizer
    convolution and Hyena-Y's identity-initialised inner convolution."""

    def __init__(self, d_model: int, *, taps: int = 4, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__(d_model, featurizer=True, inner=True, taps=taps, dtype=dtype, rngs=rngs)


class HeadMixer(SelfAttention):
    """timm's attention layout (DiT's :class:`~jaxflash.models.SelfAttention`: fused ``qkv`` Linear with
    bias, outputs ordered ``(3, heads, head_dim)``, output Linear ``proj``) around another token mixer
    of ``q, k, v [b, t, heads, head_dim]``; the weights of one load into the other."""

    def mix(self, q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
        raise NotImplementedError(
            f"{type(self).__name__} must define mix(q, k, v) -> [b, t, heads, head_dim]"
        )

    def __call__(self, u: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        b, t, d = u.shape
        qkv = self.qkv(u).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        y = self.mix(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.proj(y.reshape(b, t, d))


class SlidingWindowAttention(HeadMixer):
    """SWA: softmax attention where token ``i`` sees tokens ``i - w .. i + w`` (a 1-D window over the
    raster order, non-causal, no RoPE), flash_attn's ``window_size=(w, w)``; ``jaxflash.attention``'s
    ``window``. The paper uses ``w = 4``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        window: int = 4,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(d_model, num_heads, dtype=dtype, implementation=implementation, rngs=rngs)
        self.window = check_int("window", window, minimum=0)

    def mix(self, q, k, v):
        return jaxflash.attention(
            q, k, v, causal=False, window=self.window, implementation=self.implementation
        )


class LinearAttention(HeadMixer):
    """Linear attention (Katharopoulos et al. 2020), non-causal: per head
    ``y_i = phi(q_i) S / (phi(q_i) . z + eps)`` with ``S = sum_j phi(k_j) v_j^T``, ``z = sum_j phi(k_j)``,
    ``phi = elu + 1`` (``jaxflash.elu_feature_map``), through ``jaxflash.linear_attention``."""

    def mix(self, q, k, v):
        phi = jaxflash.elu_feature_map
        return jaxflash.linear_attention(phi(q), phi(k), v, causal=False, implementation=self.implementation)


def mlp_operator(d_model: int, *, ratio: float = 4.0, dtype: Any = jnp.float32, rngs: nnx.Rngs) -> MLP:
    """The channel mixer of ratio r: timm's ``Mlp(D, int(r D), GELU-tanh)`` as DiT builds it
    (:class:`~jaxflash.models.MLP`, ``kind="gelu"``, its own init); r = 4 is DiT's, the paper also tries
    3 and 6."""
    ratio = check_real("ratio", ratio, above=0.0)
    hidden = int(ratio * d_model)
    if hidden < 1:
        raise ValueError(f"ratio={ratio} gives an MLP of hidden width int({ratio} * {d_model}) = 0")
    return MLP(d_model, hidden, kind="gelu", dtype=dtype, rngs=rngs)


# Name -> factory ``(d_model, *, rngs, ...)``; make_operator passes num_heads to those that take it.
OPERATORS: dict[str, Callable[..., nnx.Module]] = {
    "mha": SelfAttention,
    "hyena_x": HyenaX,
    "hyena_y": HyenaY,
    "hyena_se": HyenaSE,
    "swa": SlidingWindowAttention,
    "linear_attention": LinearAttention,
    "mlp": mlp_operator,
}


def _takes(factory: Callable[..., Any], argument: str) -> bool:
    # An nnx.Module class's own signature is its metaclass's (*args, **kwargs): read its __init__.
    target = factory.__init__ if isinstance(factory, type) else factory
    return argument in inspect.signature(target).parameters


def _factory(operator: str) -> Callable[..., nnx.Module]:
    if operator not in OPERATORS:
        raise ValueError(f"operator={operator!r} is not a known operator; choose one of {sorted(OPERATORS)}")
    return OPERATORS[operator]


def make_operator(
    name: str, d_model: int, *, num_heads: int | None = None, rngs: nnx.Rngs, **options: Any
) -> nnx.Module:
    """A fresh operator ``OPERATORS[name](d_model, rngs=rngs, **options)``, ``[b, T, D] -> [b, T, D]``.

    ``num_heads`` goes to the operators that have heads (``"mha"``, ``"swa"``, ``"linear_attention"``),
    which need it, and is ignored by the others. ``options`` are the operator's own keywords (``window``
    for SWA, ``ratio`` for the MLP, ``taps`` for the Hyenas, ``dtype``, ``implementation``).
    """
    factory = _factory(name)
    if _takes(factory, "num_heads"):
        if num_heads is None:
            raise ValueError(f"operator={name!r} has heads: pass num_heads")
        options["num_heads"] = num_heads
    return factory(d_model, rngs=rngs, **options)


# --- swapping operators -------------------------------------------------------------------------------


def check_block_indices(indices: int | Iterable[int], n_blocks: int) -> tuple[int, ...]:
    """``indices`` (an int or an iterable of ints) as a tuple without repeats, in the order given, or a
    ``ValueError`` naming ``indices`` with the valid range ``[0, n_blocks)``."""
    items = (indices,) if is_int(indices) else tuple(indices)
    bad = [i for i in items if not (is_int(i) and 0 <= i < n_blocks)]
    if bad or not items:
        raise ValueError(
            f"indices={indices!r}: block indices must be integers in [0, {n_blocks}) "
            f"(the model has {n_blocks} blocks); {'out of range: ' + repr(bad) if bad else 'none given'}"
        )
    return tuple(dict.fromkeys(int(i) for i in items))


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose 'attn' (replace block.attn) or 'mlp' (replace block.mlp)")
    return kind


def graft(
    model: DiT,
    indices: int | Iterable[int],
    *,
    kind: str,
    operator: str | Callable[..., nnx.Module],
    rngs: nnx.Rngs | None = None,
    **options: Any,
) -> DiT:
    """A copy of ``model`` whose blocks ``indices`` have a fresh operator as ``.attn`` (``kind="attn"``)
    or ``.mlp`` (``kind="mlp"``); each block keeps its adaLN modulation and gates. ``model`` is not
    changed, so it can serve as the teacher of :func:`jaxflash.diffusion.distill_operator`.

    ``operator`` is a name of :data:`OPERATORS` (built by :func:`make_operator` with the model's
    ``d_model``, ``num_heads`` and compute dtype, and for ``"mha"`` / ``"swa"`` its attention
    implementation, unless ``options`` say otherwise, from ``rngs``), or a callable called once per block
    as ``operator(**options)`` that returns the module (``lambda: nnx.clone(model.blocks[1].attn)``
    self-grafts a copy).
    """
    check_kind(kind)
    blocks = check_block_indices(indices, len(model.blocks))
    for i in blocks:
        if not hasattr(model.blocks[i], kind):
            raise ValueError(
                f"indices: model.blocks[{i}] is a {type(model.blocks[i]).__name__} with no .{kind} "
                "(graft before parallelize)"
            )
    if isinstance(operator, str):
        factory = _factory(operator)
        if rngs is None:
            raise ValueError(f"operator={operator!r} is built fresh: pass rngs=nnx.Rngs(seed)")
        cfg = model.config
        defaults = {"dtype": cfg.compute_dtype} if _takes(factory, "dtype") else {}
        if operator in SOFTMAX_OPERATORS:  # the config's implementation names a jaxflash.attention one
            defaults["implementation"] = cfg.implementation
        options = defaults | options

        def build() -> nnx.Module:
            return make_operator(operator, cfg.d_model, num_heads=cfg.num_heads, rngs=rngs, **options)
    elif callable(operator):

        def build() -> nnx.Module:
            return operator(**options)
    else:
        raise ValueError(f"operator must be a name in {sorted(OPERATORS)} or a callable; got {operator!r}")
    grafted = nnx.clone(model)
    for i in blocks:
        module = build()
        if not isinstance(module, nnx.Module):
            raise ValueError(f"operator returned {type(module).__name__} for block {i}, not an nnx.Module")
        setattr(grafted.blocks[i], kind, module)
    return grafted


def interleaved(n_layers: int, fraction: float) -> list[int]:
    """The blocks to graft for a fraction of the depth, spread evenly: block ``i`` is grafted when
    ``floor((i + 1) f) > floor(i f)``, ``floor(n f)`` blocks in all.

    ``f = 1/2`` gives the paper's 50% pattern, the odd blocks 1, 3, 5, ... (its
    ``configs/sampling/mha_swaps/50p_*.yaml``). ``f = 3/4`` grafts every block but 0, 4, 8, ... (three of
    every four, the first of each four kept): our rule for the 75% pattern, whose block list in the
    paper's configs was not read.
    """
    check_int("n_layers", n_layers)
    f = Fraction(check_real("fraction", fraction, at_least=0.0, at_most=1.0)).limit_denominator(10_000)
    return [i for i in range(n_layers) if math.floor((i + 1) * f) > math.floor(i * f)]


# --- depth to width ------------------------------------------------------------------------------------


class BlockTrace(NamedTuple):
    """One DiT block's forward on ``x``, with what its operators saw and returned (all ``[b, T, D]``)."""

    out: jnp.ndarray  # x + update: the block's output, as DiTBlock.__call__ computes it
    update: jnp.ndarray  # the gated residual branch, gate_msa attn_out + gate_mlp mlp_out
    attn_in: jnp.ndarray  # u = modulate(LN(x), shift_msa, scale_msa)
    attn_out: jnp.ndarray  # attn(u)
    mlp_in: jnp.ndarray  # modulate(LN(x + gate_msa attn_out), shift_mlp, scale_mlp)
    mlp_out: jnp.ndarray  # mlp(mlp_in)


def trace_block(block: DiTBlock, x: Float[Array, "b t d"], c: Float[Array, "b d"]) -> BlockTrace:
    """``block(x, c)`` computed step by step with the block's own modulation, keeping the operators'
    inputs and outputs (stage-1 activations) and the residual branch (:class:`ParallelDiTBlock`)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c)
    attn_in = modulate(block.norm1(x), shift_msa, scale_msa)
    attn_out = block.attn(attn_in)
    h_attn = gate_msa[:, None] * attn_out
    mid = x + h_attn
    mlp_in = modulate(block.norm2(mid), shift_mlp, scale_mlp)
    mlp_out = block.mlp(mlp_in)
    h_mlp = gate_mlp[:, None] * mlp_out
    return BlockTrace(mid + h_mlp, h_attn + h_mlp, attn_in, attn_out, mlp_in, mlp_out)


class ParallelDiTBlock(nnx.Module):
    """Two DiT blocks run side by side on the same input: ``x <- x + B_a(x) + B_b(x)``.

    ``B(x) = block(x, c) - x`` is a block's whole gated residual branch, attention then MLP, each with
    that block's adaLN modulation: ``B(x) = g1 attn(u1) + g2 mlp(u2)``, ``u1 = modulate(LN(x))``,
    ``u2 = modulate(LN(x + g1 attn(u1)))``. So the pair ``(B_a, B_b)`` of sequential blocks 2i, 2i+1
    becomes one block of twice the width, starting from their weights.

    **Unverified**: the paper says only that it converts "every pair of sequential transformer blocks
    into parallel blocks" (DiT-D14/2, FID 2.77); the exact formula was not read (the reference notes
    mark it UNVERIFIED). This is the natural reading above, with each block's own modulation and the
    MLP reading its own block's attention output; the alternative, attention and MLP in parallel within
    each block, is not what is built here.

    Evaluated as ``first(x, c) + B_b(x)``, the same sum, so that when the second block's branch is zero
    (adaLN-Zero: its gates are zero) the output equals ``second(first(x))`` bit for bit.
    """

    def __init__(self, first: DiTBlock, second: DiTBlock):
        self.first = first
        self.second = second

    def __call__(self, x: Float[Array, "b t d"], c: Float[Array, "b d"]) -> Float[Array, "b t d"]:
        return trace_block(self.first, x, c).out + trace_block(self.second, x, c).update


def parallelize(model: DiT) -> DiT:
    """A copy of ``model`` with each pair of blocks ``(2i, 2i + 1)`` made one :class:`ParallelDiTBlock`
    (copies of their weights): ``n_layers / 2`` blocks, the same parameters. ``config.n_layers`` becomes
    the new number of blocks. ``model`` is not changed."""
    n = len(model.blocks)
    if n % 2:
        raise ValueError(f"parallelize pairs blocks (2i, 2i+1): the model has an odd number {n} of blocks")
    if not all(isinstance(b, DiTBlock) for b in model.blocks):
        raise ValueError("parallelize takes a model of sequential DiTBlocks (it is already parallel?)")
    out = nnx.clone(model)
    blocks: Sequence[DiTBlock] = list(out.blocks)
    out.blocks = nnx.List([ParallelDiTBlock(blocks[i], blocks[i + 1]) for i in range(0, n, 2)])
    out.config = dataclasses.replace(out.config, n_layers=n // 2)
    return out
