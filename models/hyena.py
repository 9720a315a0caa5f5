"""Hyena (Poli et al. 2023, "Hyena Hierarchy", arXiv:2302.10866): gated long convolutions whose
kernels come from an implicit filter. Follows safari ``src/models/sequence/hyena.py``.

Operator of order N (the code's convention, safari issue #9: N-1 long convolutions, and each gate is
applied BEFORE its convolution; the paper's figure draws the convolution first)::

    z = ShortConv(W_in u)                       W_in: d -> (N+1) d, ShortConv: causal, 3 taps
    x_0, x_1, ..., x_{N-1}, v = split(z)        v is the last chunk
    for o, x_i in enumerate(x_{N-1}, ..., x_1):
        v = h_o * (x_i . v) + b_o . (x_i . v)   long causal convolution; the filter bias is a D-skip
    y = W_out(x_0 . v)

The filter has (N - 1) d channels laid out as safari's ``(v o)``: convolution o uses channels
``c = v (N - 1) + o`` (v < d), and so the decay rate of channel c below; one weight mapping loads a
safari checkpoint of any order. ``HyenaConfig(filter="conv1d")`` swaps the implicit filter for an
explicit ``explicit_taps``-tap one (the paper's Conv1d baseline). ``filter_heads=H`` ties the filters
within H heads (Laughing Hyena's MultiHyena weight tying: (N - 1) H filters, each serving d / H consecutive
channels; fewer filters to learn and to distil).

Implicit filter ``h = FFN(z_t) . exp(-t |delta_c|)`` over positions t = 0..L-1:

- ``z_t = [t/(l_max-1), cos(f w_t), -sin(f w_t)]`` with ``w_t = 2 pi t / l_max`` and
  ``f = linspace(1e-4, bands - 1, bands)``; z is a trainable parameter (its own learning rate).
- ``FFN = Linear(emb, order) Sin [Linear(order, order) Sin] x num_inner_mlps Linear(order, C, no bias)``
  where every ``Sin(x) = sin(freq . x)`` shares ONE trainable frequency vector (init ``w``).
- ``delta = linspace(ln(target)/slow_pct, ln(target)/fast_pct, C)``: channel c decays to 1% between
  0.3 and 1.5 of l_max. It is a constant (modulation lr 0 in safari).

Generation: safari has no Hyena recurrence. ``step`` recomputes the causal convolution at the new
position from a history of each convolution's (gated) inputs: exact, O(t d) per token. The distilled
O(d_state) recurrence (Laughing Hyena) is separate work.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import HyenaConfig
from jaxflash.models.h3 import SSMParam
from jaxflash.models.validation import check_prefill_length, check_step_position
from jaxtyping import Array, Float

import jaxflash

State = dict[str, Any]


def history_conv_step(
    history: Float[Array, "b t c"], g: Float[Array, "b c"], kernel: Float[Array, "t c"], pos: jax.Array
) -> tuple[Float[Array, "b c"], Float[Array, "b t c"]]:
    """One position of a causal convolution ``y_t = sum_{s <= t} k[t - s] g_s`` from the inputs seen so far.

    ``history`` holds the inputs at positions ``< pos`` (zeros after); ``g`` is the input at ``pos``.
    Returns ``y_pos`` (f32) and the history with ``g`` written at ``pos``.
    """
    check_step_position(pos, history.shape[1], "convolution history")
    history = jax.lax.dynamic_update_slice(history, g[:, None].astype(history.dtype), (0, pos, 0))
    s = jnp.arange(history.shape[1])
    # k[pos - s] for s <= pos, zero for the (not yet written) future positions.
    lagged = jnp.where((s <= pos)[:, None], kernel[jnp.clip(pos - s, 0, kernel.shape[0] - 1)], 0.0)
    y = jnp.einsum("btc,tc->bc", history.astype(jnp.float32), lagged.astype(jnp.float32))
    return y, history


def prefix_history(g: Float[Array, "b l c"], max_len: int, dtype: Any = None) -> Float[Array, "b t c"]:
    """A convolution history (``history_conv_step``) holding ``g`` at positions < l, zeros after."""
    check_prefill_length(g.shape[1], max_len)
    g = g if dtype is None else g.astype(dtype)
    return jnp.pad(g, ((0, 0), (0, max_len - g.shape[1]), (0, 0)))


def last_window(z: Float[Array, "b l c"], taps: int, dtype: Any) -> Float[Array, "b k c"]:
    """The last ``taps`` inputs of a causal short convolution, zeros before t = 0 (``ShortConv.step``)."""
    z = jnp.pad(z, ((0, 0), (max(taps - z.shape[1], 0), 0), (0, 0)))
    return z[:, z.shape[1] - taps :].astype(dtype)


def positional_features(max_len: int, emb_dim: int) -> tuple[jax.Array, jax.Array]:
    """safari's ``PositionalEmbedding``: ``t [l_max, 1]`` in [0, 1] and ``z [l_max, emb_dim]``."""
    t = jnp.linspace(0.0, 1.0, max_len)[:, None]
    bands = (emb_dim - 1) // 2
    w = 2 * math.pi * jnp.arange(max_len, dtype=jnp.float32)[:, None] / max_len
    f = jnp.linspace(1e-4, bands - 1, bands)[None]
    z = jnp.concatenate([t, jnp.cos(f * w), -jnp.sin(f * w)], axis=-1)
    return t, z


class ShortConv(nnx.Module):
    """Depthwise causal convolution with a few taps (the featurizer of H3/Hyena/M2), via
    ``jaxflash.short_conv``. torch ``Conv1d``'s default init: U(+-1/sqrt(taps)) for weight and bias."""

    def __init__(self, channels: int, taps: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(taps)
        self.weight = nnx.Param(
            jax.random.uniform(rngs.params(), (taps, channels), jnp.float32, -bound, bound)
        )
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (channels,), jnp.float32, -bound, bound))

    @property
    def taps(self) -> int:
        return self.weight.shape[0]

    def __call__(self, z: Float[Array, "b l c"]) -> Float[Array, "b l c"]:
        return jaxflash.short_conv(z, self.weight[...].astype(z.dtype), bias=self.bias[...].astype(z.dtype))

    def step(
        self, window: Float[Array, "b k c"], z: Float[Array, "b c"]
    ) -> tuple[Float[Array, "b c"], jax.Array]:
        """Output at the newest position from a window of the last ``taps`` inputs (zeros before t = 0,
        which is the causal zero padding); returns it and the shifted window."""
        window = jnp.concatenate([window[:, 1:], z[:, None].astype(window.dtype)], axis=1)
        return self(window)[:, -1], window


class ImplicitFFN(nnx.Module):
    """``Linear Sin [Linear Sin]* Linear(no bias)``; the Sin frequency is passed in, shared by all."""

    def __init__(self, emb_dim: int, width: int, channels: int, num_inner: int, *, rngs: nnx.Rngs):
        self.first = nnx.Linear(emb_dim, width, rngs=rngs)
        self.inner = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(num_inner)])
        self.last = nnx.Linear(width, channels, use_bias=False, rngs=rngs)

    def __call__(self, z: Float[Array, "l e"], freq: Float[Array, " w"]) -> Float[Array, "l c"]:
        h = jnp.sin(freq * self.first(z))
        for layer in self.inner:
            h = jnp.sin(freq * layer(h))
        return self.last(h)


class HyenaFilter(nnx.Module):
    """Implicit long-convolution filter of ``channels`` channels and length up to ``max_len``.

    With ``bidirectional=True`` (M2-BERT, m2 ``hyena_utils.py``) a second FFN gives the reverse
    filter; the positional encoding, the frequency vector and the decay window are shared.
    """

    def __init__(
        self, channels: int, max_len: int, config: HyenaConfig, *, bidirectional: bool = False, rngs: nnx.Rngs
    ):
        self.channels = channels
        self.max_len = max_len
        self.config = config
        _, z = positional_features(max_len, config.emb_dim)
        self.z = nnx.Param(z)  # trainable positional encoding [l_max, emb_dim]
        self.freq = nnx.Param(jnp.full((config.filter_order,), config.sine_freq, jnp.float32))
        self.ffn = ImplicitFFN(
            config.emb_dim, config.filter_order, channels, config.num_inner_mlps, rngs=rngs
        )
        if bidirectional:
            self.ffn_rev = ImplicitFFN(
                config.emb_dim, config.filter_order, channels, config.num_inner_mlps, rngs=rngs
            )
        self.bias = nnx.Param(jax.random.normal(rngs.params(), (channels,), jnp.float32))

    def decay(self, length: int) -> Float[Array, "l c"]:
        """The exponential modulation window ``exp(-t |delta_c|)`` for positions < length."""
        cfg = self.config
        if not cfg.modulate:
            return jnp.ones((length, self.channels), jnp.float32)
        t, _ = positional_features(self.max_len, cfg.emb_dim)
        fast = math.log(cfg.decay_target) / cfg.fast_decay_pct
        slow = math.log(cfg.decay_target) / cfg.slow_decay_pct
        delta = jnp.linspace(slow, fast, self.channels)
        return jnp.exp(-t[:length] * jnp.abs(delta))

    def _check(self, length: int) -> None:
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds the filter's max_len={self.max_len}; raise max_seq_len"
            )

    def kernel(self, length: int) -> Float[Array, "l c"]:
        """Forward (causal) filter ``h[0..length)``, f32."""
        self._check(length)
        return self.ffn(self.z[:length], self.freq[...]) * self.decay(length)

    def kernel_rev(self, length: int) -> Float[Array, "l c"]:
        """Reverse filter (bidirectional only): ``k_rev[d - 1]`` weighs the input d steps ahead."""
        self._check(length)
        return self.ffn_rev(self.z[:length], self.freq[...]) * self.decay(length)


class ExplicitFilter(nnx.Module):
    """An explicit short filter of ``taps`` taps per channel, zero beyond (the Hyena paper's "Conv1d"
    row of Table A.2 / Fig. 4.1, in place of the implicit filter). Same interface as
    :class:`HyenaFilter`: ``kernel(length)`` and a D-skip ``bias``. torch ``Conv1d``'s weight init,
    U(+-1/sqrt(taps)); the weight trains as a kernel parameter (:class:`~jaxflash.models.SSMParam`)."""

    def __init__(self, channels: int, max_len: int, taps: int, *, rngs: nnx.Rngs):
        self.channels = channels
        self.max_len = max_len
        bound = 1.0 / math.sqrt(taps)
        self.weight = SSMParam(
            jax.random.uniform(rngs.params(), (taps, channels), jnp.float32, -bound, bound)
        )
        self.bias = nnx.Param(jax.random.normal(rngs.params(), (channels,), jnp.float32))

    def kernel(self, length: int) -> Float[Array, "l c"]:
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds the filter's max_len={self.max_len}; raise max_seq_len"
            )
        w = self.weight[...]
        taps = w.shape[0]
        return w[:length] if length <= taps else jnp.pad(w, ((0, length - taps), (0, 0)))


class HyenaOperator(nnx.Module):
    """The Hyena mixer of order N (see the module docstring), ``[b, l, d] -> [b, l, d]``."""

    def __init__(
        self,
        d_model: int,
        max_len: int,
        config: HyenaConfig,
        *,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        fft_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        self.d_model = d_model
        self.max_len = max_len
        self.order = config.order
        self.dtype = dtype
        self.implementation = implementation
        self.fft_size = fft_size
        width = (config.order + 1) * d_model
        self.in_proj = nnx.Linear(d_model, width, dtype=dtype, rngs=rngs)
        self.short_conv = ShortConv(width, config.short_filter_order, rngs=rngs)
        self.filter_heads = config.filter_heads or d_model
        if d_model % self.filter_heads:
            raise ValueError(f"hyena filter_heads={self.filter_heads} must divide d_model={d_model}")
        channels = (config.order - 1) * self.filter_heads
        if config.filter == "implicit":
            self.filter = HyenaFilter(channels, max_len, config, rngs=rngs)
        else:
            self.filter = ExplicitFilter(channels, max_len, config.explicit_taps, rngs=rngs)
        self.out_proj = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, u: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        return self._forward(u)[0]

    def conv_filter(self, values: jax.Array, o: int) -> jax.Array:
        """Convolution o's share of a per-filter-channel array ``[..., (N - 1) H_f]`` (the kernel, its
        bias), as ``[..., d]``: safari's (v o) layout picks channels ``o::(N - 1)``; with weight-tied
        heads (``filter_heads`` H_f < d) each head's filter serves its d / H_f consecutive channels."""
        picked = values[..., o :: self.order - 1]
        return jnp.repeat(picked, self.d_model // self.filter_heads, axis=-1)

    def _forward(self, u: Float[Array, "b l d"], *, keep_inputs: bool = False):
        """The output, the short convolution's input and (``keep_inputs``) each long convolution's gated
        input ``x_i . v``, which the decode state holds."""
        length = u.shape[1]
        zin = self.in_proj(u)
        chunks = jnp.split(self.short_conv(zin), self.order + 1, axis=-1)  # x_0, ..., x_{N-1}, v
        x0, gates, v = chunks[0], chunks[1:-1], chunks[-1]
        h = self.filter.kernel(length).astype(u.dtype)
        bias = self.filter.bias[...].astype(u.dtype)
        n_convs = len(gates)
        inputs = []
        for o, x_i in enumerate(reversed(gates)):
            last = o == n_convs - 1
            if keep_inputs:  # the gate applied here, not fused, so the gated input can be kept
                v = x_i * v
                inputs.append(v)
                x_i = None
            v = jaxflash.fftconv(
                v,
                self.conv_filter(h, o),
                skip=self.conv_filter(bias, o),
                pre_gate=x_i,
                post_gate=x0 if last else None,
                fft_size=self.fft_size,
                implementation=self.implementation,
            )
        return self.out_proj(v), zin, inputs

    def prefill(self, u: Float[Array, "b l d"], max_len: int) -> tuple[Float[Array, "b l d"], State]:
        """The parallel forward over a prompt and the state ``step`` continues from: the short
        convolution's window and each long convolution's history of gated inputs."""
        if max_len > self.max_len:
            raise ValueError(f"max_len={max_len} exceeds the filter length {self.max_len}")
        y, zin, inputs = self._forward(u, keep_inputs=True)
        state = dict(
            window=last_window(zin, self.short_conv.taps, self.dtype),
            history=jnp.stack([prefix_history(g, max_len, self.dtype) for g in inputs]),
            pos=jnp.asarray(u.shape[1], jnp.int32),
        )
        return y, state

    def init_state(self, batch: int, max_len: int) -> State:
        if max_len > self.max_len:
            raise ValueError(f"max_len={max_len} exceeds the filter length {self.max_len}")
        width = (self.order + 1) * self.d_model
        return dict(
            window=jnp.zeros(
                (batch, self.short_conv.taps, width), self.dtype
            ),  # last `taps` inputs of the short conv
            history=jnp.zeros((self.order - 1, batch, max_len, self.d_model), self.dtype),
            pos=jnp.zeros((), jnp.int32),
        )

    def step(self, u: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        pos = state["pos"]
        z, window = self.short_conv.step(state["window"], self.in_proj(u))
        chunks = jnp.split(z, self.order + 1, axis=-1)
        x0, gates, v = chunks[0], chunks[1:-1], chunks[-1]
        max_len = state["history"].shape[2]
        h = self.filter.kernel(max_len)
        bias = self.filter.bias[...]
        histories = []
        for o, x_i in enumerate(reversed(gates)):
            g = (x_i * v).astype(jnp.float32)
            y, hist = history_conv_step(state["history"][o], g, self.conv_filter(h, o), pos)
            histories.append(hist)
            v = (y + self.conv_filter(bias, o) * g).astype(self.dtype)
        out = self.out_proj(x0 * v)
        return out, dict(window=window, history=jnp.stack(histories), pos=pos + 1)
