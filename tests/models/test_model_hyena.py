"""Hyena pinned to safari's code: implicit filter (positional encoding, one shared Sin frequency,
decay window, bias as skip), gates before each of the N-1 long convolutions; causality and the step."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import HyenaConfig, HyenaFilter, HyenaOperator, SSMParam
from jaxflash.models.hyena import ExplicitFilter

from jaxflash.testing import assert_close, random_normal

CFG = HyenaConfig(order=2, filter_order=8, emb_dim=5, sine_freq=3.0)


def test_filter_positional_encoding_frequency_and_decay():
    filt = HyenaFilter(6, 20, CFG, rngs=nnx.Rngs(0))
    z = np.asarray(filt.z[...])
    t = np.linspace(0, 1, 20)
    w = 2 * np.pi * np.arange(20) / 20
    f = np.linspace(1e-4, 1, 2)  # bands = (5 - 1) / 2 = 2
    assert_close(
        z, np.concatenate([t[:, None], np.cos(np.outer(w, f)), -np.sin(np.outer(w, f))], 1), atol=1e-6
    )
    # One Sin frequency vector, shared by every Sin layer of the FFN.
    freqs = [p for path, p in nnx.iter_graph(filt) if path and path[-1] == "freq"]
    assert len(freqs) == 1 and freqs[0].shape == (8,) and np.all(np.asarray(freqs[0][...]) == 3.0)
    # Decay: channel c reaches 1% at a fraction between 1.5 (first) and 0.3 (last) of the length.
    decay = np.asarray(filt.decay(20))
    delta = np.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, 6)
    assert_close(decay, np.exp(-t[:, None] * np.abs(delta)), atol=1e-6)

    # The kernel is FFN(z) times the window, and its prefix does not depend on the length asked for.
    def by_hand(f):
        x = jnp.sin(f.freq[...] * f.ffn.first(f.z[...]))
        for layer in f.ffn.inner:
            x = jnp.sin(f.freq[...] * layer(x))
        return f.kernel(20), f.kernel(7), f.ffn.last(x) * f.decay(20)

    h, h7, expected = nnx.jit(by_hand)(filt)
    assert_close(h7, h[:7])
    assert_close(h, expected, atol=1e-6)


def _causal(x, k):
    y = np.zeros_like(x)
    for t in range(x.shape[1]):
        for j in range(t + 1):
            y[:, t] += k[j] * x[:, t - j]
    return y


def test_order2_operator_gates_before_the_long_conv(key):
    d, length = 4, 9
    op = HyenaOperator(d, 16, CFG, implementation="xla", rngs=nnx.Rngs(1))
    u = random_normal(key, (2, length, d))
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    out, z, h = nnx.jit(lambda m, u: (m(u), m.in_proj(u), m.filter.kernel(length)))(op, u)
    z, h = f64(z), f64(h)
    w, b = f64(op.short_conv.weight[...]), f64(op.short_conv.bias[...])
    zp = np.pad(z, ((0, 0), (2, 0), (0, 0)))
    zc = (
        w[0] * zp[:, :-2] + w[1] * zp[:, 1:-1] + w[2] * zp[:, 2:] + b
    )  # causal 3 taps, w[-1] on the current step
    x0, x1, v = zc[..., :d], zc[..., d : 2 * d], zc[..., 2 * d :]
    bias = f64(op.filter.bias[...])
    g = x1 * v  # the gate comes first ...
    y = x0 * (_causal(g, h) + bias * g)  # ... then the long convolution with the bias as D-skip
    expected = y @ f64(op.out_proj.kernel[...]) + f64(op.out_proj.bias[...])
    assert_close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("order", [2, 3])
def test_operator_is_causal_and_step_matches(key, checks, order):
    cfg = HyenaConfig(order=order, filter_order=8, emb_dim=3)
    op = HyenaOperator(8, 16, cfg, implementation="xla", rngs=nnx.Rngs(2))
    assert op.filter.channels == (order - 1) * 8  # N - 1 long convolutions
    u = random_normal(key, (2, 10, 8))
    checks.causal(op, u, cut=6)
    checks.step(op, u, max_len=16, atol=5e-5)
    checks.prefill(op, u, cut=7, max_len=16, atol=5e-5)
    checks.prefill(op, u, cut=1, max_len=16, atol=5e-5)  # shorter than the short conv's window


def test_operator_rejects_sequences_longer_than_the_filter(key):
    op = HyenaOperator(4, 8, CFG, implementation="xla", rngs=nnx.Rngs(3))
    with pytest.raises(ValueError, match="exceeds the filter's max_len=8"):
        op(random_normal(key, (1, 9, 4)))


def _short_conv(op, z):
    w, b = np.asarray(op.short_conv.weight[...], np.float64), np.asarray(op.short_conv.bias[...], np.float64)
    zp = np.pad(z, ((0, 0), (2, 0), (0, 0)))
    return w[0] * zp[:, :-2] + w[1] * zp[:, 1:-1] + w[2] * zp[:, 2:] + b


def test_order3_uses_safaris_v_o_filter_layout(key):
    """safari: ``k = rearrange(k, 'l (v o) -> o v l')``, bias alike: convolution o takes the filter
    channels v (N - 1) + o, so with the decay indexed by channel, each convolution mixes fast and slow
    decays (not one contiguous block of rates)."""
    d, length, order = 4, 9, 3
    op = HyenaOperator(d, 16, dataclasses.replace(CFG, order=order), implementation="xla", rngs=nnx.Rngs(5))
    u = random_normal(key, (2, length, d))
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    out, z, h = nnx.jit(lambda m, u: (m(u), m.in_proj(u), m.filter.kernel(length)))(op, u)
    zc = _short_conv(op, f64(z))
    x = [zc[..., i * d : (i + 1) * d] for i in range(order)]
    v = zc[..., order * d :]
    k = f64(h).reshape(length, d, order - 1).transpose(2, 0, 1)  # 'l (v o) -> o l v'
    bias = f64(op.filter.bias[...]).reshape(d, order - 1).T  # '(v o) -> o v'
    for o, x_i in enumerate(reversed(x[1:])):
        g = v * x_i
        v = _causal(g, k[o]) + bias[o] * g
    expected = (v * x[0]) @ f64(op.out_proj.kernel[...]) + f64(op.out_proj.bias[...])
    assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_conv1d_filter_is_explicit_and_short(key, checks):
    cfg = dataclasses.replace(CFG, filter="conv1d", explicit_taps=3)
    op = HyenaOperator(4, 16, cfg, implementation="xla", rngs=nnx.Rngs(6))
    assert isinstance(op.filter, ExplicitFilter) and op.filter.weight.shape == (3, 4)
    h = np.asarray(op.filter.kernel(10))
    assert_close(h[:3], op.filter.weight[...]) and np.all(h[3:] == 0)
    assert isinstance(op.filter.weight, SSMParam)
    u = random_normal(key, (2, 10, 4))
    checks.causal(op, u, cut=6)
    checks.step(op, u, max_len=16, atol=5e-5)
    checks.prefill(op, u, cut=7, max_len=16, atol=5e-5)


def test_filter_kind_is_checked():
    with pytest.raises(ValueError, match="filter='fno'"):
        HyenaConfig(filter="fno")


def test_filter_heads_tie_the_filters_within_heads(key, checks):
    """MultiHyena weight tying: 2 heads of 4 channels share 2 filters per convolution."""
    cfg = dataclasses.replace(CFG, order=3, filter_heads=2)
    op = HyenaOperator(8, 16, cfg, implementation="xla", rngs=nnx.Rngs(7))
    assert op.filter.channels == 2 * 2  # (N - 1) heads' filters, not (N - 1) d
    h = np.asarray(op.filter.kernel(10))
    for o in range(2):
        per_channel = np.asarray(op.conv_filter(jnp.asarray(h), o))
        assert_close(per_channel, np.repeat(h[:, o::2], 4, axis=1))  # head m serves channels 4m..4m+3
    u = random_normal(key, (2, 10, 8))
    checks.causal(op, u, cut=6)
    checks.step(op, u, max_len=16, atol=5e-5)
    checks.prefill(op, u, cut=4, max_len=16, atol=5e-5)
    with pytest.raises(ValueError, match="filter_heads=3 must divide d_model=8"):
        HyenaOperator(8, 16, dataclasses.replace(CFG, filter_heads=3), rngs=nnx.Rngs(0))
