"""The papers' sequence mixers in PyTorch, the peers of ``python -m jaxflash.bench models``.

Written here from the published equations and the forward passes of the original code, not imported
(safari and m2 are not packages and need CUDA extensions for their fast paths): each module computes
what the original's plain-PyTorch path computes on a CPU, with the same state-dict keys, so the
weights of our layer load into it (``jaxflash.checkpoints``' export rules) and the two compute the
same function. Inputs are ``[B, L, D]`` as the originals' ``transposed=False`` form; like the
originals, each module moves channels first internally and convolves with ``torch.fft`` at size 2L.

- :class:`HyenaOperator`: safari ``src/models/sequence/hyena.py`` (``HyenaOperator`` + ``HyenaFilter``,
  ``fftconv`` with the D-skip bias), order N, one head, one block.
- :class:`H3`: safari ``src/models/sequence/h3.py`` with its shift and diagonal kernels
  (``ss_kernel_shift.py``, ``ss_kernel_diag.py``: bilinear discretisation, the naive log-Vandermonde
  product that runs without pykeops), ``head_dim`` 1.
- :class:`LongConv`: safari ``src/models/sequence/long_conv.py`` + ``long_conv_kernel.py`` (squash,
  optional smoothing, D-skip, GELU, Linear + GLU output).
- :class:`MonarchMixerSequenceMixing`: m2 ``bert/src/mm/monarch_mixer_sequence_mixer.py`` (the
  bidirectional M2-BERT mixer, forward and reverse implicit filters in one circular kernel).

Only imported where torch is installed (the ``bench`` extra).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fft_conv(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """safari's ``fftconv``: ``u [B, C, L]`` with ``k [C, L_k]`` at FFT size 2L, plus ``skip[c] u``.

    A kernel longer than L (the bidirectional circular one, 2L) wraps around, as in m2.
    """
    seq = u.shape[-1]
    n = 2 * seq
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :seq]
    return y if skip is None else y + u * skip[:, None]


class Sin(nn.Module):
    def __init__(self, width: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Implicit filter ``h = FFN(z_t) exp(-t |delta_c|)``; every Sin in the FFN is one shared module."""

    def __init__(
        self,
        channels: int,
        seq_len: int,
        *,
        emb_dim: int,
        order: int,
        num_inner_mlps: int,
        w: float,
        fast_decay_pct: float = 0.3,
        slow_decay_pct: float = 1.5,
        target: float = 1e-2,
        bidirectional: bool = False,
    ):
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        w_t = 2 * math.pi * torch.arange(seq_len, dtype=torch.float32)[None, :, None] / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.cat([t, torch.cos(f * w_t), -torch.sin(f * w_t)], dim=-1)
        self.pos_emb = nn.Module()
        self.pos_emb.z = nn.Parameter(z)
        self.pos_emb.register_buffer("t", t)
        sin = Sin(order, w)

        def ffn() -> nn.Sequential:
            layers: list[nn.Module] = [nn.Linear(emb_dim, order), sin]
            for _ in range(num_inner_mlps):
                layers += [nn.Linear(order, order), sin]
            return nn.Sequential(*layers, nn.Linear(order, channels, bias=False))

        self.implicit_filter = ffn()
        if bidirectional:
            self.implicit_filter_rev = ffn()
        self.modulation = nn.Module()
        deltas = torch.linspace(
            math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, channels
        )[None, None]
        self.modulation.register_buffer("deltas", deltas)
        self.bias = nn.Parameter(torch.randn(channels))

    def _modulated(self, ffn: nn.Sequential, length: int) -> torch.Tensor:
        t, z = self.pos_emb.t[:, :length], self.pos_emb.z[:, :length]
        return ffn(z) * torch.exp(-t * self.modulation.deltas.abs())  # [1, L, C]

    def filter(self, length: int) -> torch.Tensor:
        return self._modulated(self.implicit_filter, length)

    def filter_rev(self, length: int) -> torch.Tensor:
        return self._modulated(self.implicit_filter_rev, length)


class HyenaOperator(nn.Module):
    """safari's Hyena operator of order N: in_proj, a 3-tap depthwise Conv1d, N - 1 gated long
    convolutions whose filters sit in the ``(v o)`` channel layout, out_proj."""

    def __init__(self, d_model: int, l_max: int, *, order: int = 2, filter_order: int = 64, **filter_args):
        super().__init__()
        self.d_model, self.order = d_model, order
        width = d_model * (order + 1)
        self.in_proj = nn.Linear(d_model, width)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(width, width, 3, padding=2, groups=width)
        self.filter_fn = HyenaFilter(d_model * (order - 1), l_max, order=filter_order, **filter_args)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        length = u.shape[1]
        z = self.in_proj(u).transpose(1, 2)
        z = self.short_filter(z)[..., :length]
        *x, v = z.split(self.d_model, dim=1)
        k = self.filter_fn.filter(length)[0].T  # [(v o), L]
        k = k.reshape(self.d_model, self.order - 1, length).transpose(0, 1)  # [o, v, L]
        bias = self.filter_fn.bias.reshape(self.d_model, self.order - 1).T  # [o, v]
        for o, x_i in enumerate(reversed(x[1:])):
            v = fft_conv(v * x_i, k[o], bias[o])
        return self.out_proj((v * x[0]).transpose(1, 2))


class ShiftKernel(nn.Module):
    """``K[c, i] = sum_n B[c, n] C[c, n + i]`` (i < N): the shift SSM's FIR kernel."""

    def __init__(self, channels: int, d_state: int):
        super().__init__()
        self.B = nn.Parameter(torch.zeros(channels, d_state))
        self.C = nn.Parameter(torch.zeros(1, channels, d_state))

    def forward(self, length: int) -> torch.Tensor:
        """The first ``min(length, N)`` taps (safari computes the kernel at the input's length)."""
        n = self.B.shape[-1]
        c = F.pad(self.C[0], (0, n))
        idx = torch.arange(n)[:, None] + torch.arange(n)[None, :]
        return torch.einsum("cn,cni->ci", self.B, c[:, idx])[:, :length]


class DiagKernel(nn.Module):
    """S4D's kernel ``K[h, l] = 2 Re sum_n C_n B_n dB_n dA_n^l`` (bilinear), by the naive Vandermonde
    product over all L positions (safari's path without pykeops)."""

    def __init__(self, heads: int, d_state: int):
        super().__init__()
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.zeros(heads))
        self.inv_A_real = nn.Parameter(torch.zeros(heads, modes))
        self.A_imag = nn.Parameter(torch.zeros(heads, modes))
        self.B = nn.Parameter(torch.zeros(heads, modes, 2))
        self.C = nn.Parameter(torch.zeros(1, heads, modes, 2))

    def forward(self, length: int) -> torch.Tensor:
        dt = torch.exp(self.log_dt)[:, None]
        A = -torch.exp(self.inv_A_real) + 1j * self.A_imag
        C = torch.view_as_complex(self.C[0].contiguous()) * torch.view_as_complex(self.B.contiguous())
        dtA = dt * A
        C = C * dt / (1 - dtA / 2)
        dA = (1 + dtA / 2) / (1 - dtA / 2)
        powers = torch.exp(dA.log()[..., None] * torch.arange(length, dtype=torch.float32))  # [H, N, L]
        return 2 * torch.einsum("hn,hnl->hl", C, powers).real


class H3(nn.Module):
    """safari's H3 with ``head_dim`` 1: ``out = W_o (q . (K_diag * (k_bar . v) + D (k_bar . v))``,
    ``k_bar = K_shift * k + D_k k``."""

    def __init__(self, d_model: int, d_state: int = 64):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.output_linear = nn.Linear(d_model, d_model)
        self.ssm_k_kernel = nn.Module()
        self.ssm_k_kernel.kernel = ShiftKernel(d_model, d_state)
        self.ssm_k_D = nn.Parameter(torch.zeros(d_model))
        self.kernel = nn.Module()
        self.kernel.kernel = DiagKernel(d_model, d_state)
        self.D = nn.Parameter(torch.zeros(d_model))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        length = u.shape[1]
        q, k, v = (p(u).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        k = fft_conv(k, self.ssm_k_kernel.kernel(length), self.ssm_k_D)
        y = fft_conv(k * v, self.kernel.kernel(length), self.D)
        return self.output_linear((q * y).transpose(1, 2))


class LongConv(nn.Module):
    """safari's long convolution: ``y = GLU(W GELU(K_c * u + D_c u))`` over C kernels per feature,
    with ``K = sign(K) relu(|K| - lam)`` (and AvgPool_7 smoothing when ``smooth``)."""

    def __init__(
        self, d_model: int, l_max: int, *, channels: int = 1, lam: float = 0.003, smooth: bool = False
    ):
        super().__init__()
        self.channels, self.lam, self.smooth = channels, lam, smooth
        self.kernel = nn.Module()
        self.kernel.kernel = nn.Parameter(0.002 * torch.randn(channels, d_model, l_max))
        self.D = nn.Parameter(torch.randn(channels, d_model))
        self.output_linear = nn.Sequential(nn.Linear(channels * d_model, 2 * d_model), nn.GLU(dim=-1))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = u.transpose(1, 2)  # [B, H, L]
        seq = x.shape[-1]
        k = self.kernel.kernel
        if self.smooth:
            k = F.avg_pool1d(k, 7, stride=1, padding=3)
        k = F.relu(torch.abs(k) - self.lam) * torch.sign(k)
        n = 2 * seq
        y = torch.fft.irfft(torch.fft.rfft(x, n=n)[:, None] * torch.fft.rfft(k, n=n), n=n)[..., :seq]
        y = y + x[:, None] * self.D[..., None]  # [B, C, H, L]
        y = F.gelu(y.reshape(x.shape[0], -1, seq))
        return self.output_linear(y.transpose(1, 2))


class MonarchMixerSequenceMixing(nn.Module):
    """m2's bidirectional M2-BERT mixer: ``x1, x2, v = ShortConv(W_in u)``,
    ``y = x2 . (k (*) (x1 . v) + b . (x1 . v))`` with the circular kernel
    ``k = pad(k_f, (0, L)) + pad(flip(k_r), (L, 0))``, plus (``residual_long_conv``) a second filter's
    ``k' (*) u + b' . u``, then ``W_out y``."""

    def __init__(
        self,
        d_model: int,
        l_max: int,
        *,
        filter_order: int = 64,
        residual_long_conv: bool = True,
        **filter_args,
    ):
        super().__init__()
        self.d_model = d_model
        self.in_linear = nn.Linear(d_model, 3 * d_model)
        self.out_linear = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(3 * d_model, 3 * d_model, 3, padding=2, groups=3 * d_model)
        self.filter_fn = HyenaFilter(d_model, l_max, order=filter_order, bidirectional=True, **filter_args)
        self.residual_long_conv = residual_long_conv
        if residual_long_conv:
            self.filter_fn2 = HyenaFilter(
                d_model, l_max, order=filter_order, bidirectional=True, **filter_args
            )

    @staticmethod
    def _kernel(filt: HyenaFilter, length: int) -> torch.Tensor:
        k_f, k_r = filt.filter(length)[0].T, filt.filter_rev(length)[0].T
        return F.pad(k_f, (0, length)) + F.pad(k_r.flip(-1), (length, 0))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        length = u.shape[1]
        z = self.short_filter(self.in_linear(u).transpose(1, 2))[..., :length]
        x1, x2, v = z.split(self.d_model, dim=1)
        y = fft_conv(v * x1, self._kernel(self.filter_fn, length), self.filter_fn.bias) * x2
        if self.residual_long_conv:
            y = y + fft_conv(u.transpose(1, 2), self._kernel(self.filter_fn2, length), self.filter_fn2.bias)
        return self.out_linear(y.transpose(1, 2))
