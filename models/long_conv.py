"""Simple long convolutions (Fu, Epstein et al. 2023, "Simple Hardware-Efficient Long Convolutions for
Sequence Modeling", arXiv:2302.06646), following safari ``long_conv_kernel.py`` / ``long_conv.py``.

Kernel: an explicit parameter ``K [C, l_max, d]`` (init ``0.002 N(0, 1)``), regularised by::

    K <- AvgPool_7(K)                          optional smoothing (window 7, zero padding, stride 1)
    K <- sign(K) relu(|K| - lambda)            squash: soft threshold, makes the kernel sparse
    K <- Dropout(K)                            kernel dropout (training only)

Layer (C channels of kernels per feature)::

    y_c = K_c * u + D_c . u                    causal depthwise FFT convolution, c = 1..C
    y   = Dropout(GELU(concat_c y_c))          [b, l, C d]
    out = GLU(W y)                             W: C d -> 2 d,  GLU(a, g) = a . sigmoid(g)

Bidirectional form: a forward kernel ``k0`` and a reverse kernel ``k1`` become one circular kernel of
length 2L, ``k = pad(k0, (0, L)) + pad(flip(k1), (L, 0))``, so ``k1[d - 1]`` weighs the input d steps
ahead (the same construction M2-BERT uses; ``jaxflash.bidirectional_kernel``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import LongConvConfig
from jaxflash.models.h3 import SSMParam
from jaxflash.models.hyena import history_conv_step, prefix_history
from jaxtyping import Array, Float

import jaxflash

State = dict[str, Any]
SMOOTHING_WINDOW = 7


def squash(k: jax.Array, lam: float) -> jax.Array:
    """Soft threshold ``sign(k) relu(|k| - lam)``."""
    return jnp.sign(k) * jax.nn.relu(jnp.abs(k) - lam)


def smooth(k: Float[Array, "... l c"]) -> Float[Array, "... l c"]:
    """Moving average over the length axis (-2), window 7, zero 'same' padding, divided by 7
    (torch ``AvgPool1d(7, 1, padding=3)``, which counts the padding)."""
    half = SMOOTHING_WINDOW // 2
    pad = [(0, 0)] * k.ndim
    pad[-2] = (half, half)
    kp = jnp.pad(k, pad)
    length = k.shape[-2]
    windows = [jax.lax.slice_in_dim(kp, i, i + length, axis=-2) for i in range(SMOOTHING_WINDOW)]
    return sum(windows) / SMOOTHING_WINDOW


class LongConvKernel(nnx.Module):
    """Explicit kernels ``[S, C, l_max, d]`` (S = 2 directions when bidirectional)."""

    def __init__(self, d_model: int, max_len: int, config: LongConvConfig, *, rngs: nnx.Rngs):
        self.config = config
        directions = 2 if config.bidirectional else 1
        shape = (directions, config.channels, max_len, d_model)
        self.kernel = SSMParam(0.002 * jax.random.normal(rngs.params(), shape, jnp.float32))
        self.dropout = nnx.Dropout(config.kernel_dropout, rngs=rngs)

    def __call__(self, length: int) -> Float[Array, "s c l d"]:
        """The regularised kernels truncated to ``length`` (smoothing sees the whole l_max kernel).

        On purpose unlike safari: for a sequence shorter than l_max, safari takes the size-2L FFT of the
        whole l_max kernel (torch crops it to 2L taps), so the taps in [L, 2L) wrap around onto future
        inputs: its causal layer sees the future there. Truncating first keeps the convolution causal;
        the two agree for L = l_max (and for any L when the taps beyond L are zero).
        """
        max_len = self.kernel.shape[2]
        if length > max_len:
            raise ValueError(
                f"sequence length {length} exceeds the kernel length {max_len}; raise max_seq_len"
            )
        k = self.kernel[...]
        if self.config.smoothing:
            k = smooth(k)
        k = self.dropout(squash(k, self.config.lam))
        return k[:, :, :length]


class LongConv(nnx.Module):
    """The long-convolution mixer (module docstring), ``[b, l, d] -> [b, l, d]``."""

    def __init__(
        self,
        d_model: int,
        max_len: int,
        config: LongConvConfig,
        *,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        fft_size: int | None = None,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.d_model = d_model
        self.channels = config.channels
        self.bidirectional = config.bidirectional
        self.dtype = dtype
        self.implementation = implementation
        self.fft_size = fft_size
        self.kernel = LongConvKernel(d_model, max_len, config, rngs=rngs)
        self.D = nnx.Param(jax.random.normal(rngs.params(), (config.channels * d_model,), jnp.float32))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out_proj = nnx.Linear(config.channels * d_model, 2 * d_model, dtype=dtype, rngs=rngs)

    def _flat_kernel(self, length: int) -> jax.Array:
        k = self.kernel(length)  # [S, C, l, d] -> [S, l, (c d)]
        return jnp.moveaxis(k, 2, 1).reshape(k.shape[0], length, self.channels * self.d_model)

    def _output(self, y: jax.Array) -> jax.Array:
        a, g = jnp.split(self.out_proj(self.dropout(jax.nn.gelu(y, approximate=False))), 2, axis=-1)
        return a * jax.nn.sigmoid(g)

    def __call__(self, u: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        length = u.shape[1]
        u_rep = jnp.tile(u, (1, 1, self.channels))  # channel c of the output reads feature (c d) mod d
        k = self._flat_kernel(length)
        if self.bidirectional:
            k, causal = jaxflash.bidirectional_kernel(k[0], k[1]), False
        else:
            k, causal = k[0], True
        # A circular kernel fixes the FFT size (2L); fft_size applies to the causal form only.
        y = jaxflash.fftconv(
            u_rep,
            k.astype(u.dtype),
            skip=self.D[...].astype(u.dtype),
            causal=causal,
            fft_size=self.fft_size if causal else None,
            implementation=self.implementation,
        )
        return self._output(y)

    def prefill(self, u: Float[Array, "b l d"], max_len: int) -> tuple[Float[Array, "b l d"], State]:
        """The parallel forward over a prompt and the input history ``step`` continues from."""
        if self.bidirectional:
            raise NotImplementedError(
                "a bidirectional long convolution sees the future; it has no decode state"
            )
        g = jnp.tile(u.astype(jnp.float32), (1, 1, self.channels))
        return self(u), dict(history=prefix_history(g, max_len), pos=jnp.asarray(u.shape[1], jnp.int32))

    def init_state(self, batch: int, max_len: int) -> State:
        if self.bidirectional:
            raise NotImplementedError(
                "a bidirectional long convolution sees the future; it has no recurrent step"
            )
        return dict(
            history=jnp.zeros((batch, max_len, self.channels * self.d_model), jnp.float32),
            pos=jnp.zeros((), jnp.int32),
        )

    def step(self, u: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        g = jnp.tile(u.astype(jnp.float32), (1, self.channels))
        k = self._flat_kernel(state["history"].shape[1])[0]
        y, history = history_conv_step(state["history"], g, k, state["pos"])
        y = y + self.D[...] * g
        return self._output(y.astype(self.dtype)), dict(history=history, pos=state["pos"] + 1)
