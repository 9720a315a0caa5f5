"""Monarch and block-diagonal linear layers (Dao et al. 2022; Fu et al. 2023, Monarch Mixer).

``MonarchLinear`` computes ``y = x @ M.T + b`` with ``M = P_out . BlockDiag(w2) . P_mid . BlockDiag(w1)``
(the m2/fly ``MonarchLinear``; see :mod:`jaxflash.monarch`), and ``BlockDiagLinear`` computes
``y = x @ BlockDiag(w).T + b`` (M2-BERT's MLP weights, m2 ``BlockdiagLinear`` with ``shuffle=False``).

Initialization follows the papers' code:

- ``MonarchLinear``: each factor ``U(-1/sqrt(f), 1/sqrt(f))`` with ``f`` its block fan-in (fly's
  ``MonarchLinear.reset_parameters``, a per-factor ``kaiming_uniform(a=sqrt(5))``).
- ``BlockDiagLinear``: m2's ``set_weights_from_dense_init``: a dense ``kaiming_uniform(a=sqrt(5))``
  draw, scaled by ``sqrt(dense size / block size) = sqrt(nblocks)``, of which the first block row
  is kept; i.e. ``U(-1/sqrt(f), 1/sqrt(f))`` per block.
- Bias: ``U(-1/sqrt(out_features), 1/sqrt(out_features))``. m2's ``StructuredLinear`` takes the
  bias's own length as its fan-in; we keep that for parity.

``dense_init=`` instead draws a dense ``(in, out)`` kernel with any initializer and converts it:
``MonarchLinear`` projects it onto the Monarch class (:func:`jaxflash.monarch.project`) and rescales
the factors so that ``M`` keeps the dense draw's Frobenius norm (the projection alone keeps only a
fraction of a random matrix's energy, which would shrink the output variance); ``BlockDiagLinear``
applies m2's recipe above to that draw. ``MonarchLinear.from_dense`` converts a trained dense
kernel without rescaling (the nearest Monarch matrix).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

import jaxflash
from jaxflash import monarch as monarch_ops

Initializer = Any  # nnx.initializers style: init(key, shape, dtype) -> Array


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float, dtype: Any) -> jax.Array:
    # Drawn flat and reshaped: XLA CPU compiles threefry for 3-D shapes several times slower.
    return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)


def _bias(rngs: nnx.Rngs, out_features: int, param_dtype: Any) -> nnx.Param:
    # m2 StructuredLinear.reset_parameters_bias: fan_in = bias.shape[-1], i.e. out_features.
    return nnx.Param(_uniform(rngs.params(), (out_features,), out_features**-0.5, param_dtype))


def _default_nblocks(in_features: int, out_features: int) -> int:
    nb = math.isqrt(in_features)
    if nb * nb != in_features or out_features % nb:
        raise ValueError(
            f"nblocks=None means sqrt(in_features) blocks, which needs a square in_features={in_features} "
            f"whose root divides out_features={out_features}; pass nblocks= explicitly"
        )
    return nb


class StructuredLinear(nnx.Module):
    """``y = x @ W.T + b`` with a structured ``W`` (m2/fly ``StructuredLinear``): the sizes, the compute
    dtype and the bias. A subclass stores its factors and defines ``factors`` and ``multiply``."""

    def __init__(
        self, in_features: int, out_features: int, nblocks: int, *, dtype: Any, implementation: str | None
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.nblocks = nblocks
        self.dtype = dtype
        self.implementation = implementation

    def factors(self) -> tuple[jax.Array, ...]:
        raise NotImplementedError

    def multiply(self, x: jax.Array, *factors: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, x: Float[Array, "*batch in_features"]) -> Float[Array, "*batch out_features"]:
        factors = self.factors()
        dtype = self.dtype or jnp.result_type(x, *factors)
        y = self.multiply(x.astype(dtype), *(w.astype(dtype) for w in factors))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class MonarchLinear(StructuredLinear):
    """``y = x @ M.T + b`` with a Monarch matrix ``M`` (out_features x in_features).

    Args:
      in_features, out_features: sizes; both divisible by ``nblocks``.
      nblocks: blocks per factor; None for sqrt(in_features) (the paper's square Monarch).
        Factor shapes: :func:`jaxflash.monarch.monarch_shapes`.
      use_bias: add a bias.
      dtype: compute dtype (None: the promoted dtype of input and parameters).
      param_dtype: parameter dtype (f32).
      dense_init: optional dense initializer; see the module docstring.
      implementation: passed to :func:`jaxflash.monarch_matmul`.
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        nblocks: int | None = None,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        dense_init: Initializer | None = None,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        nblocks = _default_nblocks(in_features, out_features) if nblocks is None else nblocks
        super().__init__(in_features, out_features, nblocks, dtype=dtype, implementation=implementation)
        w1_shape, w2_shape = monarch_ops.monarch_shapes(in_features, out_features, self.nblocks)
        if dense_init is None:
            k1, k2 = jax.random.split(rngs.params())
            w1 = _uniform(k1, w1_shape, w1_shape[2] ** -0.5, param_dtype)
            w2 = _uniform(k2, w2_shape, w2_shape[2] ** -0.5, param_dtype)
        else:
            kernel = dense_init(rngs.params(), (in_features, out_features), jnp.float32)
            w1, w2 = monarch_ops.project(kernel.T, self.nblocks)
            # Keep the dense draw's Frobenius norm, split evenly over the two factors.
            projected = jnp.linalg.norm(monarch_ops.to_dense(w1, w2))
            ratio = jnp.linalg.norm(kernel) / jnp.maximum(projected, 1e-30)
            w1, w2 = (w * jnp.sqrt(ratio) for w in (w1, w2))
        self.w1 = nnx.Param(w1.astype(param_dtype))
        self.w2 = nnx.Param(w2.astype(param_dtype))
        self.bias = _bias(rngs, out_features, param_dtype) if use_bias else None

    @classmethod
    def from_dense(
        cls,
        kernel: Float[Array, "in_features out_features"],
        bias: Float[Array, " out_features"] | None = None,
        *,
        nblocks: int | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        implementation: str | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> MonarchLinear:
        """The Monarch layer nearest (Frobenius) to a dense ``y = x @ kernel + bias`` layer."""
        in_features, out_features = kernel.shape
        layer = cls(
            in_features,
            out_features,
            nblocks=nblocks,
            use_bias=bias is not None,
            dtype=dtype,
            param_dtype=param_dtype,
            implementation=implementation,
            rngs=rngs or nnx.Rngs(0),
        )
        w1, w2 = monarch_ops.project(jnp.asarray(kernel).T, layer.nblocks)
        layer.w1[...] = w1.astype(param_dtype)
        layer.w2[...] = w2.astype(param_dtype)
        if bias is not None:
            layer.bias[...] = jnp.asarray(bias, param_dtype)
        return layer

    def dense(self) -> jax.Array:
        """The (out_features, in_features) matrix ``M`` of this layer."""
        return monarch_ops.to_dense(self.w1[...], self.w2[...])

    def factors(self) -> tuple[jax.Array, jax.Array]:
        return self.w1[...], self.w2[...]

    def multiply(self, x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
        return jaxflash.monarch_matmul(x, w1, w2, implementation=self.implementation)


class BlockDiagLinear(StructuredLinear):
    """``y = x @ BlockDiag(w).T + b`` with ``w`` of shape (nblocks, out/nblocks, in/nblocks).

    Args:
      in_features, out_features: sizes; both divisible by ``nblocks``.
      nblocks: number of diagonal blocks (M2-BERT: ``monarch_mlp_nblocks = 4``).
      use_bias, dtype, param_dtype, dense_init, implementation, rngs: as for :class:`MonarchLinear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        nblocks: int = 4,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        dense_init: Initializer | None = None,
        implementation: str | None = None,
        rngs: nnx.Rngs,
    ):
        if nblocks <= 0 or in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"nblocks={nblocks} must be positive and divide in_features={in_features} and "
                f"out_features={out_features}"
            )
        super().__init__(in_features, out_features, nblocks, dtype=dtype, implementation=implementation)
        if dense_init is None:
            # kaiming_uniform(a=sqrt(5)) of the dense (out, in) weight: U(+-1/sqrt(in_features)).
            dense_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        kernel = dense_init(rngs.params(), (in_features, out_features), jnp.float32)
        # m2 set_weights_from_dense_init: scale by sqrt(dense size / block size), keep block row 0.
        dense = kernel.T * math.sqrt(nblocks)
        q, p = out_features // nblocks, in_features // nblocks
        w = dense[:q].reshape(q, nblocks, p).transpose(1, 0, 2)  # (nblocks, q, p)
        self.w = nnx.Param(w.astype(param_dtype))
        self.bias = _bias(rngs, out_features, param_dtype) if use_bias else None

    def dense(self) -> jax.Array:
        """The (out_features, in_features) block-diagonal matrix of this layer."""
        return jax.scipy.linalg.block_diag(*self.w[...])

    def factors(self) -> tuple[jax.Array]:
        return (self.w[...],)

    def multiply(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return jaxflash.blockdiag_matmul(x, w, implementation=self.implementation)
