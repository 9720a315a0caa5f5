"""Helpers for the checkpoint tests, written from the originals' module code (no torch needed):

- builders of state dicts with the original key names and shapes (safari ``long_conv_lm.py`` with its
  ``h3.py`` / ``hyena.py`` / ``long_conv.py`` / flash_attn MHA layers; m2 ``bert_layers.py`` with
  ``monarch_mixer_sequence_mixer.py`` / ``hyena_utils.py`` / ``blockdiag_linear.py``), random values of
  trained-model magnitudes;
- numpy forwards of those originals, read off the state dict line by line in the originals' own order
  (channels-first ``[b, d, l]`` tensors, ``rearrange`` patterns spelled out), in float64.

Exposed to the tests through the ``originals`` fixture.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from scipy.special import erf

# --- builders ------------------------------------------------------------------------------------------


class _Draw:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, *shape, scale=1.0):
        return (scale * self.rng.standard_normal(shape)).astype(np.float32)

    def linear(self, sd, key, d_in, d_out, bias=True):
        sd[f"{key}.weight"] = self.normal(d_out, d_in, scale=1.0 / math.sqrt(d_in))
        if bias:
            sd[f"{key}.bias"] = self.normal(d_out, scale=0.1)

    def norm(self, sd, key, d):
        sd[f"{key}.weight"] = 1.0 + self.normal(d, scale=0.1)
        sd[f"{key}.bias"] = self.normal(d, scale=0.1)


def positional_z(length, emb_dim):
    """safari PositionalEmbedding.z: [t, Re, Im] of exp(-i f w)."""
    t = np.linspace(0, 1, length)[:, None]
    bands = (emb_dim - 1) // 2
    w = 2 * math.pi * np.linspace(0, length - 1, length)[:, None] / length
    f = np.linspace(1e-4, bands - 1, bands)[None]
    z = np.exp(-1j * f * w)
    return np.concatenate([t, z.real, z.imag], axis=-1)


def _hyena_filter(draw, sd, key, channels, *, order, emb_dim, length, n_inner, w, bidirectional=False):
    sd[f"{key}bias"] = draw.normal(channels)
    sd[f"{key}pos_emb.z"] = (positional_z(length, emb_dim) + draw.normal(length, emb_dim, scale=0.01))[
        None
    ].astype(np.float32)
    sd[f"{key}pos_emb.t"] = np.linspace(0, 1, length, dtype=np.float32)[None, :, None]
    freq = (w + draw.normal(1, order, scale=0.1)).astype(np.float32)
    for seq in ["implicit_filter"] + (["implicit_filter_rev"] if bidirectional else []):
        draw.linear(sd, f"{key}{seq}.0", emb_dim, order)
        for j in range(n_inner):
            draw.linear(sd, f"{key}{seq}.{2 + 2 * j}", order, order)
        draw.linear(sd, f"{key}{seq}.{2 + 2 * n_inner}", order, channels, bias=False)
        for j in range(n_inner + 1):
            sd[f"{key}{seq}.{1 + 2 * j}.freq"] = freq  # one Sin module, shared
    fast, slow = math.log(1e-2) / 0.3, math.log(1e-2) / 1.5
    sd[f"{key}modulation.deltas"] = np.linspace(slow, fast, channels, dtype=np.float32)[None, None]


SAFARI_SPEC = dict(
    vocab=16,
    d_model=8,
    n_layer=2,
    d_inner=16,
    layers=("hyena", "hyena"),
    max_position_embeddings=0,
    h3=dict(d_state=8, head_dim=1),
    hyena=dict(order=2, filter_order=8, emb_dim=5, n_inner=2, short=3, w=1.0),
    long_conv=dict(channels=2),
    attn=dict(num_heads=2, num_heads_kv=None, rotary_dim=0),
    l_max=12,
    seed=0,
)


def safari_spec(**overrides):
    spec = {k: dict(v) if isinstance(v, dict) else v for k, v in SAFARI_SPEC.items()}
    for k, v in overrides.items():
        if isinstance(v, dict):
            spec[k].update(v)
        else:
            spec[k] = v
    spec["n_layer"] = len(spec["layers"])
    return spec


def safari_lm_state_dict(spec):
    """A ConvLMHeadModel state dict (current layout) for ``spec``."""
    draw = _Draw(spec["seed"])
    d, sd = spec["d_model"], {}
    sd["backbone.embeddings.word_embeddings.weight"] = draw.normal(spec["vocab"], d)
    if spec["max_position_embeddings"]:
        sd["backbone.embeddings.position_embeddings.weight"] = draw.normal(
            spec["max_position_embeddings"], d, scale=0.3
        )
    for i, kind in enumerate(spec["layers"]):
        k = f"backbone.layers.{i}."
        draw.norm(sd, f"{k}norm1", d)
        draw.norm(sd, f"{k}norm2", d)
        draw.linear(sd, f"{k}mlp.fc1", d, spec["d_inner"])
        draw.linear(sd, f"{k}mlp.fc2", spec["d_inner"], d)
        m = f"{k}mixer."
        if kind == "attention":
            a = spec["attn"]
            dh = d // a["num_heads"]
            kv = a["num_heads_kv"] or a["num_heads"]
            draw.linear(sd, f"{m}Wqkv", d, dh * (a["num_heads"] + 2 * kv))
            draw.linear(sd, f"{m}out_proj", d, d)
            if a["rotary_dim"]:
                rd = a["rotary_dim"]
                sd[f"{m}rotary_emb.inv_freq"] = (1.0 / 10000 ** (np.arange(0, rd, 2) / rd)).astype(np.float32)
        elif kind == "h3":
            n, hd = spec["h3"]["d_state"], spec["h3"]["head_dim"]
            h = d // hd
            for name in ("q_proj", "k_proj", "v_proj", "output_linear"):
                draw.linear(sd, f"{m}{name}", d, d)
            sd[f"{m}ssm_k_kernel.kernel.B"] = draw.normal(d, n, scale=0.3)
            sd[f"{m}ssm_k_kernel.kernel.C"] = draw.normal(1, d, n, scale=1 / math.sqrt(n))
            sd[f"{m}ssm_k_D"] = draw.normal(d)
            sd[f"{m}kernel.kernel.log_dt"] = draw.rng.uniform(math.log(1e-3), math.log(1e-1), h).astype(
                np.float32
            )
            sd[f"{m}kernel.kernel.inv_A_real"] = (math.log(0.5) + draw.normal(h, n // 2, scale=0.1)).astype(
                np.float32
            )
            sd[f"{m}kernel.kernel.A_imag"] = (
                math.pi * np.arange(n // 2) + draw.normal(h, n // 2, scale=0.1)
            ).astype(np.float32)
            b = draw.normal(h, n // 2, 2, scale=0.2)
            b[..., 0] += 1.0
            sd[f"{m}kernel.kernel.B"] = b
            sd[f"{m}kernel.kernel.C"] = draw.normal(1, h, n // 2, 2, scale=math.sqrt(0.5))
            sd[f"{m}D"] = draw.normal(h)
        elif kind == "hyena":
            hy = spec["hyena"]
            width = (hy["order"] + 1) * d
            draw.linear(sd, f"{m}in_proj", d, width)
            draw.linear(sd, f"{m}out_proj", d, d)
            sd[f"{m}short_filter.weight"] = draw.normal(width, 1, hy["short"], scale=0.5)
            sd[f"{m}short_filter.bias"] = draw.normal(width, scale=0.1)
            _hyena_filter(
                draw,
                sd,
                f"{m}filter_fn.",
                (hy["order"] - 1) * d,
                order=hy["filter_order"],
                emb_dim=hy["emb_dim"],
                length=spec["l_max"],
                n_inner=hy["n_inner"],
                w=hy["w"],
            )
        elif kind == "long_conv":
            c = spec["long_conv"]["channels"]
            sd[f"{m}kernel.kernel"] = draw.normal(c, d, spec["l_max"], scale=0.05)
            sd[f"{m}D"] = draw.normal(c, d)
            draw.linear(sd, f"{m}output_linear.0", c * d, 2 * d)
    draw.norm(sd, "backbone.ln_f", d)
    sd["lm_head.weight"] = sd["backbone.embeddings.word_embeddings.weight"]
    return sd


def to_legacy(sd, spec):
    """The older key layout that safari's ConvLMHeadModel.load_state_dict remaps (its inverse)."""
    n = spec["n_layer"]
    out = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    for part in ("weight", "bias"):
        new = dict(out)
        out[f"backbone.ln_0.{part}"] = new[f"backbone.layers.0.norm1.{part}"]
        for i in range(n):
            out[f"backbone.layers.{i}.norm1.{part}"] = new[f"backbone.layers.{i}.norm2.{part}"]
            nxt = new[f"backbone.layers.{i + 1}.norm1.{part}"] if i + 1 < n else new[f"backbone.ln_f.{part}"]
            out[f"backbone.layers.{i}.norm2.{part}"] = nxt
        del out[f"backbone.ln_f.{part}"]
    d = spec["d_model"]
    for i, kind in enumerate(spec["layers"]):
        if kind != "attention":
            continue
        m = f"backbone.layers.{i}.mixer."
        for part in ("weight", "bias"):
            q, k, v = np.split(out.pop(f"{m}Wqkv.{part}"), [d, 2 * d], axis=0)
            out.update({f"{m}q_proj.{part}": q, f"{m}k_proj.{part}": k, f"{m}v_proj.{part}": v})
            out[f"{m}output_linear.{part}"] = out.pop(f"{m}out_proj.{part}")
    renamed = {}
    for k, v in out.items():
        if k == "backbone.embeddings.word_embeddings.weight":
            k = "embedding.weight"
        elif k.startswith("backbone.ln_0."):
            k = "s4seq.encoder.norm." + k[len("backbone.ln_0.") :]
        elif k.startswith("backbone."):
            k = "s4seq.encoder." + k[len("backbone.") :]
        renamed[k] = v
    return renamed


M2_SPEC = dict(
    vocab=16,
    d_model=8,
    n_layer=2,
    d_inner=16,
    max_len=10,
    type_vocab=2,
    nblocks=4,
    filter_order=8,
    emb_dim=5,
    n_inner=2,
    residual_long_conv=True,
    training_additions=False,
    head="mlm",
    num_labels=3,
    seed=1,
)


def m2_spec(**overrides):
    return {**M2_SPEC, **overrides}


def m2_state_dict(spec):
    """An m2 BertForMaskedLM / BertForSequenceClassification / retrieval-encoder state dict."""
    draw = _Draw(spec["seed"])
    d, f, nb, L = spec["d_model"], spec["d_inner"], spec["nblocks"], spec["max_len"]
    e, sd = "bert.embeddings.", {}
    sd[f"{e}word_embeddings.weight"] = draw.normal(spec["vocab"], d)
    sd[f"{e}position_embeddings.weight"] = draw.normal(L, d, scale=0.3)
    sd[f"{e}token_type_embeddings.weight"] = draw.normal(spec["type_vocab"], d, scale=0.3)
    draw.norm(sd, f"{e}LayerNorm", d)
    sd[f"{e}position_ids"] = np.arange(L, dtype=np.int64)[None]
    for i in range(spec["n_layer"]):
        a = f"bert.encoder.layer.{i}.attention."
        draw.linear(sd, f"{a}in_linear", d, 3 * d)
        draw.linear(sd, f"{a}out_linear", d, d)
        sd[f"{a}short_filter.weight"] = draw.normal(3 * d, 1, 3, scale=0.5)
        sd[f"{a}short_filter.bias"] = draw.normal(3 * d, scale=0.1)
        filters = ["filter_fn."] + (["filter_fn2."] if spec["residual_long_conv"] else [])
        for name in filters:
            _hyena_filter(
                draw,
                sd,
                f"{a}{name}",
                d,
                order=spec["filter_order"],
                emb_dim=spec["emb_dim"],
                length=L,
                n_inner=spec["n_inner"],
                w=10.0,
                bidirectional=True,
            )
        if spec["training_additions"]:
            draw.norm(sd, f"{a}layernorm", d)
        m = f"bert.encoder.layer.{i}.mlp."
        if nb == 1:  # use_monarch_mlp=False: nn.Linear
            sd[f"{m}gated_layers.weight"] = draw.normal(2 * f, d, scale=1 / math.sqrt(d))
            draw.linear(sd, f"{m}wo", f, d)
        else:
            sd[f"{m}gated_layers.weight"] = draw.normal(nb, 2 * f // nb, d // nb, scale=1 / math.sqrt(d / nb))
            sd[f"{m}wo.weight"] = draw.normal(nb, d // nb, f // nb, scale=1 / math.sqrt(f / nb))
            sd[f"{m}wo.bias"] = draw.normal(d, scale=0.1)
        draw.norm(sd, f"{m}layernorm", d)
    if spec["head"] == "mlm":
        draw.linear(sd, "cls.predictions.transform.dense", d, d)
        draw.norm(sd, "cls.predictions.transform.LayerNorm", d)
        sd["cls.predictions.decoder.weight"] = sd[f"{e}word_embeddings.weight"]
        sd["cls.predictions.decoder.bias"] = draw.normal(spec["vocab"], scale=0.1)
    else:
        draw.linear(sd, "bert.pooler.dense", d, d)
    if spec["head"] == "classification":
        draw.linear(sd, "classifier", d, spec["num_labels"])
    return sd


# --- numpy forwards of the originals -------------------------------------------------------------------


def _f64(sd):
    return {k: np.asarray(v, np.float64) for k, v in sd.items()}


def _linear(x, sd, key):
    y = x @ sd[f"{key}.weight"].T
    return y + sd[f"{key}.bias"] if f"{key}.bias" in sd else y


def _layer_norm(x, sd, key, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[f"{key}.weight"] + sd[f"{key}.bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu(x):
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _short_conv(u, sd, key, length):
    """nn.Conv1d(groups=C, padding=K-1) on u [b, C, l], then [..., :length]."""
    w, bias = sd[f"{key}.weight"][:, 0], sd[f"{key}.bias"]
    taps = w.shape[-1]
    up = np.pad(u, ((0, 0), (0, 0), (taps - 1, taps - 1)))
    out = sum(w[None, :, j, None] * up[:, :, j : j + up.shape[-1] - taps + 1] for j in range(taps))
    return out[..., :length] + bias[None, :, None]


def _fftconv_ref(u, k, D):
    """hyena.py / hyena_utils.py fftconv_ref: u [b, d, l], k [d, l or 2l], D [d]."""
    seqlen = u.shape[-1]
    n = 2 * seqlen
    k_f = np.fft.rfft(k, n=n) / n
    y = np.fft.irfft(np.fft.rfft(u, n=n) * k_f, n=n, norm="forward")[..., :seqlen]
    return y + u * D[:, None]


def _implicit_filter(sd, key, seq, length, modulate):
    z, t = sd[f"{key}pos_emb.z"][:, :length], sd[f"{key}pos_emb.t"][:, :length]
    idx = sorted({int(k[len(f"{key}{seq}.") :].split(".")[0]) for k in sd if k.startswith(f"{key}{seq}.")})
    h = z
    for i in idx:
        if f"{key}{seq}.{i}.weight" in sd:
            h = _linear(h, sd, f"{key}{seq}.{i}")
        else:
            h = np.sin(sd[f"{key}{seq}.{i}.freq"] * h)
    if modulate:
        h = h * np.exp(-t * np.abs(sd[f"{key}modulation.deltas"]))
    return h  # [1, l, C]


def ref_hyena(sd, m, u, *, order, modulate=True):
    """safari HyenaOperator.forward (num_heads 1, num_blocks 1): u [b, l, d] -> [b, l, d]."""
    b, length, d = u.shape
    z = np.swapaxes(_linear(u, sd, f"{m}in_proj"), 1, 2)
    uc = _short_conv(z, sd, f"{m}short_filter", length)
    *x, v = np.split(uc, order + 1, axis=1)
    h = _implicit_filter(sd, f"{m}filter_fn.", "implicit_filter", length, modulate)
    k = h[0].reshape(length, d, order - 1).transpose(2, 1, 0)  # 'c l (v o) -> c o v l'
    bias = sd[f"{m}filter_fn.bias"].reshape(d, order - 1).T  # '(v o) -> o v'
    for o, x_i in enumerate(reversed(x[1:])):
        v = _fftconv_ref(v * x_i, k[o], bias[o])
    return _linear(np.swapaxes(v * x[0], 1, 2), sd, f"{m}out_proj")


def _diag_kernel(sd, kk, length, disc):
    dt = np.exp(sd[f"{kk}log_dt"])
    C = sd[f"{kk}C"][..., 0] + 1j * sd[f"{kk}C"][..., 1]  # (1, H, N/2)
    A = -np.exp(sd[f"{kk}inv_A_real"]) + 1j * sd[f"{kk}A_imag"]
    B = sd[f"{kk}B"][..., 0] + 1j * sd[f"{kk}B"][..., 1]
    dtA = A * dt[:, None]
    C = (B[None] * C)[0]
    if disc == "zoh":
        C = C * (np.exp(dtA) - 1.0) / A
        log_da = dtA
    else:
        C = C / (1.0 - dtA / 2) * dt[:, None]
        log_da = np.log((1.0 + dtA / 2) / (1.0 - dtA / 2))
    vand = np.exp(log_da[..., None] * np.arange(length))
    return 2 * np.einsum("hn,hnl->hl", C, vand).real  # (H, L)


def ref_h3(sd, m, u, *, disc="bilinear"):
    """safari H3.forward (the non-fast path): u [b, l, d] -> [b, l, d]."""
    b, length, d = u.shape
    H = sd[f"{m}D"].shape[0]
    hd = d // H
    kernel = _diag_kernel(sd, f"{m}kernel.kernel.", length, disc)
    Bs, Cs = sd[f"{m}ssm_k_kernel.kernel.B"], sd[f"{m}ssm_k_kernel.kernel.C"][0]
    N = Bs.shape[-1]
    ks = np.fft.irfft(np.conj(np.fft.rfft(Bs, n=2 * N)) * np.fft.rfft(Cs, n=2 * N), n=2 * N)[
        ..., : min(N, length)
    ]
    ks = np.pad(ks, ((0, 0), (0, max(0, length - N))))
    q, k, v = (np.swapaxes(_linear(u, sd, f"{m}{n}"), 1, 2) for n in ("q_proj", "k_proj", "v_proj"))
    n = 2 * length
    k = (
        np.fft.irfft(np.fft.rfft(ks, n=n) * np.fft.rfft(k, n=n), n=n)[..., :length]
        + sd[f"{m}ssm_k_D"][:, None] * k
    )
    kv = k.reshape(b, H, hd, 1, length).transpose(0, 2, 3, 1, 4) * v.reshape(b, H, 1, hd, length).transpose(
        0, 2, 3, 1, 4
    )  # b d1 d2 h l
    y = np.fft.irfft(np.fft.rfft(kv, n=n) / n * np.fft.rfft(kernel, n=n), n=n, norm="forward")[..., :length]
    y = y + kv * sd[f"{m}D"][:, None]
    q = q.reshape(b, H, hd, 1, length).transpose(0, 2, 3, 1, 4)
    if hd > 1:
        y = (q * y).sum(axis=1).reshape(b, hd * H, length)  # 'b d h l -> b (d h) l'
    else:
        y = (y * q)[:, 0, 0]
    return _linear(np.swapaxes(y, 1, 2), sd, f"{m}output_linear")


def ref_long_conv(sd, m, u, *, lam=0.003):
    """safari LongConv.forward (transposed=False, postact glu): u [b, l, d] -> [b, l, d]."""
    u = np.swapaxes(u, 1, 2)
    length = u.shape[-1]
    k = sd[f"{m}kernel.kernel"]
    k = np.maximum(np.abs(k) - lam, 0) * np.sign(k)
    n = 2 * length
    y = np.fft.irfft(np.fft.rfft(u, n=n)[:, None] * np.fft.rfft(k, n=n)[None], n=n)[..., :length]
    y = y + np.einsum("bhl,ch->bchl", u, sd[f"{m}D"])
    y = np.swapaxes(y.reshape(y.shape[0], -1, length), 1, 2)
    a, g = np.split(_linear(_gelu(y), sd, f"{m}output_linear.0"), 2, axis=-1)
    return a * _sigmoid(g)


def _rotate(x, inv_freq):
    """flash_attn RotaryEmbedding, non-interleaved, on the first 2 len(inv_freq) features: x [b, l, h, d]."""
    rd = 2 * inv_freq.shape[0]
    ang = np.arange(x.shape[1])[:, None] * inv_freq[None]
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2, rest = x[..., : rd // 2], x[..., rd // 2 : rd], x[..., rd:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def ref_mha(sd, m, u, *, num_heads, num_heads_kv=None):
    """flash_attn MHA (causal; SelfAttention / CrossAttention math): u [b, l, d] -> [b, l, d]."""
    b, length, d = u.shape
    dh = d // num_heads
    kv_heads = num_heads_kv or num_heads
    qkv = _linear(u, sd, f"{m}Wqkv")
    q = qkv[..., : num_heads * dh].reshape(b, length, num_heads, dh)
    kv = qkv[..., num_heads * dh :].reshape(b, length, 2, kv_heads, dh)
    k, v = kv[:, :, 0], kv[:, :, 1]
    if f"{m}rotary_emb.inv_freq" in sd:
        q, k = _rotate(q, sd[f"{m}rotary_emb.inv_freq"]), _rotate(k, sd[f"{m}rotary_emb.inv_freq"])
    g = num_heads // kv_heads
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k / math.sqrt(dh))
    scores = scores + np.triu(np.full((length, length), -10000.0), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return _linear(np.einsum("bhts,bshd->bthd", p, v).reshape(b, length, d), sd, f"{m}out_proj")


def ref_safari_lm(sd, tokens, spec, *, eps=1e-5, modulate=True, disc="bilinear", lam=0.003):
    """ConvLMHeadModel.forward: flash_attn's prenorm Block (Dropout -> Add -> LN -> mixer), ln_f, tied
    head."""
    sd = _f64(sd)
    hidden = sd["backbone.embeddings.word_embeddings.weight"][tokens]
    if "backbone.embeddings.position_embeddings.weight" in sd:
        hidden = hidden + sd["backbone.embeddings.position_embeddings.weight"][np.arange(tokens.shape[1])]
    residual = None
    for i, kind in enumerate(spec["layers"]):
        k = f"backbone.layers.{i}."
        residual = hidden if residual is None else hidden + residual
        hidden = _layer_norm(residual, sd, f"{k}norm1", eps)
        m = f"{k}mixer."
        if kind == "attention":
            hidden = ref_mha(
                sd, m, hidden, num_heads=spec["attn"]["num_heads"], num_heads_kv=spec["attn"]["num_heads_kv"]
            )
        elif kind == "h3":
            hidden = ref_h3(sd, m, hidden, disc=disc)
        elif kind == "hyena":
            hidden = ref_hyena(sd, m, hidden, order=spec["hyena"]["order"], modulate=modulate)
        else:
            hidden = ref_long_conv(sd, m, hidden, lam=lam)
        residual = hidden + residual
        hidden = _layer_norm(residual, sd, f"{k}norm2", eps)
        hidden = _linear(_gelu_tanh(_linear(hidden, sd, f"{k}mlp.fc1")), sd, f"{k}mlp.fc2")
    hidden = _layer_norm(hidden + residual, sd, "backbone.ln_f", eps)
    return hidden @ sd["backbone.embeddings.word_embeddings.weight"].T


def _m2_filter_conv(sd, key, x, length):
    """hyena_utils.HyenaFilter.forward, bidirectional: x [b, d, l]."""
    k = _implicit_filter(sd, key, "implicit_filter", length, True)[0].T
    k_rev = _implicit_filter(sd, key, "implicit_filter_rev", length, True)[0].T
    k = np.pad(k, ((0, 0), (0, length))) + np.pad(k_rev[:, ::-1], ((0, 0), (length, 0)))
    return _fftconv_ref(x, k, sd[f"{key}bias"])


def ref_m2_mixer(sd, a, u):
    """MonarchMixerSequenceMixing.forward (bidirectional): u [b, l, d] -> [b, l, d]."""
    if f"{a}layernorm.weight" in sd:
        u = _layer_norm(u, sd, f"{a}layernorm", 1e-5)
    length = u.shape[1]
    u_orig = u
    uc = _short_conv(np.swapaxes(_linear(u, sd, f"{a}in_linear"), 1, 2), sd, f"{a}short_filter", length)
    x1, x2, v = np.split(uc, 3, axis=1)
    y = _m2_filter_conv(sd, f"{a}filter_fn.", v * x1, length) * x2
    if f"{a}filter_fn2.bias" in sd:
        y = y + _m2_filter_conv(sd, f"{a}filter_fn2.", np.swapaxes(u_orig, 1, 2), length)
    return _linear(np.swapaxes(y, 1, 2), sd, f"{a}out_linear")


def _blockdiag(x, w):
    if w.ndim == 2:
        return x @ w.T
    nb, q, p = w.shape
    xr = x.reshape(*x.shape[:-1], nb, p)
    return np.einsum("...kp,kqp->...kq", xr, w).reshape(*x.shape[:-1], nb * q)


def ref_m2_bert(sd, input_ids, token_type_ids=None, *, eps=1e-12, pool_all=False, mask=None):
    """BertModel + the head the state dict has: returns (hidden, head output). ``pool_all``: BertPooler's
    mean over ``mask`` (default all ones, as BertModel fills it)."""
    sd = _f64(sd)
    e = "bert.embeddings."
    token_type_ids = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    h = sd[f"{e}word_embeddings.weight"][input_ids] + sd[f"{e}token_type_embeddings.weight"][token_type_ids]
    h = h + sd[f"{e}position_embeddings.weight"][np.arange(input_ids.shape[1])]
    h = _layer_norm(h, sd, f"{e}LayerNorm", eps)
    i = 0
    while f"bert.encoder.layer.{i}.mlp.layernorm.weight" in sd:
        k = f"bert.encoder.layer.{i}."
        h = ref_m2_mixer(sd, f"{k}attention.", h)
        residual = h
        z = _blockdiag(h, sd[f"{k}mlp.gated_layers.weight"])
        f = z.shape[-1] // 2
        z = _blockdiag(_gelu(z[..., :f]) * z[..., f:], sd[f"{k}mlp.wo.weight"]) + sd[f"{k}mlp.wo.bias"]
        h = _layer_norm(z + residual, sd, f"{k}mlp.layernorm", eps)
        i += 1
    if "cls.predictions.decoder.bias" in sd:
        t = _layer_norm(
            _gelu(_linear(h, sd, "cls.predictions.transform.dense")),
            sd,
            "cls.predictions.transform.LayerNorm",
            1e-12,
        )
        return h, t @ sd["cls.predictions.decoder.weight"].T + sd["cls.predictions.decoder.bias"]
    if pool_all:
        mask = np.ones(h.shape[:2]) if mask is None else mask
        first = np.sum(h * mask[..., None], axis=1) / np.sum(mask, axis=1, keepdims=True)
    else:
        first = h[:, 0]
    pooled = np.tanh(_linear(first, sd, "bert.pooler.dense"))
    if "classifier.weight" in sd:
        return h, _linear(pooled, sd, "classifier")
    return h, pooled


@pytest.fixture
def originals():
    return types.SimpleNamespace(
        safari_spec=safari_spec,
        safari_lm_state_dict=safari_lm_state_dict,
        to_legacy=to_legacy,
        ref_safari_lm=ref_safari_lm,
        ref_h3=ref_h3,
        ref_hyena=ref_hyena,
        m2_spec=m2_spec,
        m2_state_dict=m2_state_dict,
        ref_m2_bert=ref_m2_bert,
    )
