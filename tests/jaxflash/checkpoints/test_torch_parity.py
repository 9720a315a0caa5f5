"""One H3 layer, one Hyena layer and one M2 mixer written in torch from the originals' forward code
(safari ``h3.py`` / ``hyena.py``, m2 ``monarch_mixer_sequence_mixer.py``), run on a state dict and
compared with our mixer loaded from the same state dict. Runs where torch is installed."""

import numpy as np
import pytest

from jaxflash.checkpoints import from_m2_bert, from_safari_lm

torch = pytest.importorskip(
    "torch",
    reason="torch is an optional extra (jaxflash[torch]); the numpy "
    "forwards of the originals in conftest.py cover the same layouts without it",
)


def _t(sd, prefix):
    return {
        k[len(prefix) :]: torch.from_numpy(np.asarray(v, np.float64))
        for k, v in sd.items()
        if k.startswith(prefix)
    }


def _linear(p, name, x):
    return torch.nn.functional.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def torch_h3(p, u):
    """safari H3.forward, non-fast path, bilinear SSKernelDiag and SSKernelShift (u: B L H)."""
    L = u.size(-2)
    dt = torch.exp(p["kernel.kernel.log_dt"])
    C = torch.view_as_complex(p["kernel.kernel.C"].contiguous())
    A = -torch.exp(p["kernel.kernel.inv_A_real"]) + 1j * p["kernel.kernel.A_imag"]
    B = torch.view_as_complex(p["kernel.kernel.B"].contiguous())[None]
    dtA = A * dt.unsqueeze(-1)
    C = (B[:, None, :, :] * C).view(-1, A.shape[0], A.shape[1])
    C = C * (1.0 - dtA / 2).reciprocal() * dt.unsqueeze(-1)
    dA = (1.0 + dtA / 2) / (1.0 - dtA / 2)
    ssm_kernel = (
        2 * torch.einsum("chn,hnl->chl", C, torch.exp(dA.log().unsqueeze(-1) * torch.arange(L))).real[0]
    )
    Bs, Cs = p["ssm_k_kernel.kernel.B"], p["ssm_k_kernel.kernel.C"]
    N = Bs.size(-1)
    ssm_k_kernel = torch.fft.irfft(torch.fft.rfft(Bs, n=2 * N).conj() * torch.fft.rfft(Cs, n=2 * N), n=2 * N)
    ssm_k_kernel = torch.nn.functional.pad(ssm_k_kernel[..., : min(N, L)], (0, max(0, L - N)))[0]
    H = p["D"].shape[0]
    head_dim = u.size(-1) // H
    q, k, v = (_linear(p, n, u).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
    fft_size = 2 * L
    k = torch.fft.irfft(torch.fft.rfft(ssm_k_kernel, n=fft_size) * torch.fft.rfft(k, n=fft_size), n=fft_size)[
        ..., :L
    ]
    k = k + p["ssm_k_D"].unsqueeze(-1) * _linear(p, "k_proj", u).transpose(1, 2)
    b = u.size(0)
    kv = (
        k.reshape(b, H, head_dim, L).permute(0, 2, 1, 3)[:, :, None]
        * v.reshape(b, H, head_dim, L).permute(0, 2, 1, 3)[:, None]
    )
    kv_f = torch.fft.rfft(kv, n=fft_size) / fft_size
    y = torch.fft.irfft(kv_f * torch.fft.rfft(ssm_kernel, n=fft_size), n=fft_size, norm="forward")[..., :L]
    y = y + kv * p["D"].unsqueeze(-1)
    q = q.reshape(b, H, head_dim, L).permute(0, 2, 1, 3)[:, :, None]
    y = (q * y).sum(dim=1).reshape(b, head_dim * H, L) if head_dim > 1 else (y * q)[:, 0, 0]
    return _linear(p, "output_linear", y.transpose(1, 2))


def _implicit(p, seq, L, modulate=True):
    h = p["pos_emb.z"][:, :L]
    i = 0
    while f"{seq}.{i}.weight" in p or f"{seq}.{i}.freq" in p:
        h = _linear(p, f"{seq}.{i}", h) if f"{seq}.{i}.weight" in p else torch.sin(p[f"{seq}.{i}.freq"] * h)
        i += 1
    if modulate:
        h = h * torch.exp(-p["pos_emb.t"][:, :L] * p["modulation.deltas"].abs())
    return h


def _fftconv_ref(u, k, D):
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    y = torch.fft.irfft(torch.fft.rfft(u, n=fft_size) * k_f, n=fft_size, norm="forward")[..., :seqlen]
    return y + u * D.unsqueeze(-1)


def _short_filter(p, name, u, L):
    w = p[f"{name}.weight"]
    return torch.nn.functional.conv1d(u, w, p[f"{name}.bias"], padding=w.shape[-1] - 1, groups=w.shape[0])[
        ..., :L
    ]


def torch_hyena(p, u, order):
    """safari HyenaOperator.forward (num_heads 1, num_blocks 1, no outer mixing / post-order FFN)."""
    L, d = u.size(-2), u.size(-1)
    uc = _short_filter(p, "short_filter", _linear(p, "in_proj", u).transpose(1, 2), L)
    *x, v = uc.split(d, dim=1)
    f = {k[len("filter_fn.") :]: t for k, t in p.items() if k.startswith("filter_fn.")}
    k = _implicit(f, "implicit_filter", L)[0].reshape(L, d, order - 1).permute(2, 1, 0)  # c l (v o) -> o v l
    bias = f["bias"].reshape(d, order - 1).T
    for o, x_i in enumerate(reversed(x[1:])):
        v = _fftconv_ref(v * x_i, k[o], bias[o])
    return _linear(p, "out_proj", (v * x[0]).transpose(1, 2))


def torch_m2_mixer(p, u):
    """m2 MonarchMixerSequenceMixing.forward, bidirectional, residual long conv."""
    L = u.size(-2)
    u_orig = u
    x1, x2, v = _short_filter(p, "short_filter", _linear(p, "in_linear", u).transpose(1, 2), L).split(
        u.size(-1), 1
    )
    ys = []
    for name, x in (("filter_fn", v * x1), ("filter_fn2", u_orig.transpose(-1, -2))):
        f = {k[len(name) + 1 :]: t for k, t in p.items() if k.startswith(f"{name}.")}
        k_fwd = _implicit(f, "implicit_filter", L)[0].T
        k_rev = _implicit(f, "implicit_filter_rev", L)[0].T
        kk = torch.nn.functional.pad(k_fwd, (0, L)) + torch.nn.functional.pad(k_rev.flip(-1), (L, 0))
        ys.append(_fftconv_ref(x, kk, f["bias"]))
    y = ys[0] * x2 + ys[1]
    return _linear(p, "out_linear", y.transpose(-1, -2))


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_layer(originals, head_dim):
    spec = originals.safari_spec(layers=("h3",), h3=dict(d_state=4 * head_dim, head_dim=head_dim))
    sd = originals.safari_lm_state_dict(spec)
    model, _ = from_safari_lm(sd)
    u = _input((2, 11, spec["d_model"]))
    want = torch_h3(_t(sd, "backbone.layers.0.mixer."), torch.from_numpy(u).double()).numpy()
    np.testing.assert_allclose(np.asarray(model.blocks[0].mixer(u)), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("order", [2, 3])
def test_hyena_layer(originals, order):
    spec = originals.safari_spec(layers=("hyena",), hyena=dict(order=order))
    sd = originals.safari_lm_state_dict(spec)
    model, _ = from_safari_lm(sd)
    u = _input((2, 12, spec["d_model"]))
    want = torch_hyena(_t(sd, "backbone.layers.0.mixer."), torch.from_numpy(u).double(), order).numpy()
    np.testing.assert_allclose(np.asarray(model.blocks[0].mixer(u)), want, atol=1e-4, rtol=1e-4)


def test_m2_mixer(originals):
    spec = originals.m2_spec(n_layer=1)
    sd = originals.m2_state_dict(spec)
    model, _ = from_m2_bert(sd)
    u = _input((2, spec["max_len"], spec["d_model"]))
    want = torch_m2_mixer(_t(sd, "bert.encoder.layer.0.attention."), torch.from_numpy(u).double()).numpy()
    np.testing.assert_allclose(np.asarray(model.layers[0].mixer(u)), want, atol=1e-3, rtol=1e-3)
