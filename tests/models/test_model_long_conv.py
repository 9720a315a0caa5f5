"""Long convolutions: squash, smoothing, the bidirectional 2L kernel, causality and the step."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxflash.models import LongConv, LongConvConfig
from jaxflash.models.long_conv import LongConvKernel, smooth, squash

import jaxflash
from jaxflash.testing import assert_close, random_normal


def test_squash_and_smoothing(key):
    k = np.asarray(random_normal(key, (2, 11, 3)))
    assert_close(squash(jnp.asarray(k), 0.5), np.sign(k) * np.maximum(np.abs(k) - 0.5, 0))
    expected = np.stack(
        [
            np.stack([np.convolve(k[i, :, c], np.ones(7) / 7, mode="same") for c in range(3)], -1)
            for i in range(2)
        ]
    )
    assert_close(smooth(jnp.asarray(k)), expected, atol=1e-6)
    ker = LongConvKernel(3, 11, LongConvConfig(channels=2, lam=0.01, smoothing=True), rngs=nnx.Rngs(0))
    assert_close(ker(5), squash(smooth(ker.kernel[...]), 0.01)[:, :, :5])


def _layer_reference(layer, u, k_fwd, k_rev=None):
    """float64: y_c = sum_s k[t - s] u_s (+ reverse taps at negative lags) + D u, then GELU, W, GLU."""
    from scipy.special import erf

    u64 = np.tile(np.asarray(u, np.float64), (1, 1, layer.channels))
    length = u64.shape[1]
    y = np.asarray(layer.D[...], np.float64) * u64
    for t in range(length):
        for s in range(length):
            if s <= t:
                y[:, t] += k_fwd[t - s] * u64[:, s]
            elif k_rev is not None:
                y[:, t] += k_rev[s - t - 1] * u64[:, s]
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))  # exact GELU
    a, g = np.split(
        y @ np.asarray(layer.out_proj.kernel[...], np.float64) + np.asarray(layer.out_proj.bias[...]), 2, -1
    )
    return a / (1 + np.exp(-g))


def _flat(k):  # [C, l, d] -> [l, C d]
    return np.moveaxis(np.asarray(k, np.float64), 1, 0).reshape(k.shape[1], -1)


def test_bidirectional_layer_places_the_reverse_kernel_at_negative_lags(key):
    cfg = LongConvConfig(channels=2, lam=0.0, bidirectional=True)
    layer = LongConv(3, 8, cfg, implementation="xla", rngs=nnx.Rngs(1))
    layer.kernel.kernel.set_value(random_normal(key, (2, 2, 8, 3)))  # O(1) taps so every lag shows
    u = random_normal(jax.random.fold_in(key, 1), (2, 6, 3))
    out, k = nnx.jit(lambda m, x: (m(x), m.kernel(6)))(layer, u)
    expected = _layer_reference(layer, u, _flat(k[0]), _flat(k[1]))
    assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_causal_layer_equations_causality_and_step(key, checks):
    layer = LongConv(4, 12, LongConvConfig(channels=2, lam=0.001), implementation="xla", rngs=nnx.Rngs(2))
    layer.kernel.kernel.set_value(0.3 * random_normal(key, (1, 2, 12, 4)))
    u = random_normal(jax.random.fold_in(key, 1), (2, 7, 4))
    out, k = nnx.jit(lambda m, x: (m(x), m.kernel(7)))(layer, u)
    assert_close(out, _layer_reference(layer, u, _flat(k[0])), atol=1e-4, rtol=1e-4)
    checks.causal(layer, u, cut=3)
    checks.step(layer, u, max_len=12, atol=5e-5)
    checks.prefill(layer, u, cut=4, max_len=12, atol=5e-5)


def test_short_sequences_truncate_the_kernel_unlike_safari(key):
    """For L < l_max we truncate the kernel to L (causal); safari takes the FFT of size 2L of the whole
    l_max kernel (torch crops it to 2L), so the taps in [L, 2L) wrap around onto future inputs."""
    layer = LongConv(2, 12, LongConvConfig(channels=1, lam=0.0), implementation="xla", rngs=nnx.Rngs(3))
    layer.kernel.kernel.set_value(random_normal(key, (1, 1, 12, 2)))
    u = random_normal(jax.random.fold_in(key, 1), (1, 5, 2))
    full = np.asarray(layer.kernel(12))[0, 0]  # [l_max, d]

    def safari_conv(u, k):  # irfft(rfft(u, 2L) rfft(k, 2L))[:L]; rfft crops k to its first 2L taps
        n = 2 * u.shape[1]
        return np.fft.irfft(np.fft.rfft(u, n, axis=1) * np.fft.rfft(k, n, axis=0), n, axis=1)[:, : u.shape[1]]

    ours = np.asarray(jax.jit(lambda x: jaxflash.fftconv(x, jnp.asarray(full[:5])))(u))
    assert_close(ours, safari_conv(np.asarray(u), full[:5]), atol=1e-5)  # truncated: the same
    assert not np.allclose(ours, safari_conv(np.asarray(u), full), atol=1e-3)  # safari's fold differs
    checks_out = layer(u)  # the layer itself uses the truncated kernel: causal
    later = layer(u.at[:, 3:].add(1.0))
    assert_close(later[:, :3], checks_out[:, :3], atol=1e-5)
