"""The implicit Hyena filter's layout, shared by safari's ``HyenaFilter`` (``src/models/sequence/
hyena.py``) and m2's fork (``bert/src/mm/hyena_utils.py``, which adds the reverse FFN).

Original keys under the filter's prefix, for ``num_inner_mlps`` = n (the released configs: 2)::

    bias                         [C]            the D-skip of the long convolution   -> filter.bias
    pos_emb.z                    [1, l_max, E]  trainable positional features        -> filter.z [l_max, E]
    pos_emb.t                    [1, l_max, 1]  buffer linspace(0, 1, l_max)         (recomputed, checked)
    implicit_filter.0            Linear(E, W)                                        -> filter.ffn.first
    implicit_filter.{2+2j}       Linear(W, W), j < n                                 -> filter.ffn.inner.j
    implicit_filter.{2+2n}       Linear(W, C, bias=False)                            -> filter.ffn.last
    implicit_filter.{1+2j}.freq  [1, W], j <= n: ONE Sin module at every odd index   -> filter.freq [W]
    implicit_filter_rev.*        the same for the reverse FFN (m2, bidirectional)    -> filter.ffn_rev.*
                                 (its Sin is the forward one: the same freq again)
    modulation.deltas            [1, 1, C]      buffer linspace(ln(target)/slow, ln(target)/fast, C)
                                                (recomputed from the decay settings, checked)

Channel c of the last linear and of the bias is safari's ``(v o)`` index: long convolution o of an
order-N operator reads channels ``o::(N-1)`` (models/hyena.py uses the same layout).
"""

from __future__ import annotations

import math

import numpy as np

from jaxflash.checkpoints.layout import Buffer, Entry, Tied, linear, same
from jaxflash.models import HyenaConfig, HyenaFilter


def ffn_keys(n_inner: int) -> tuple[list[int], list[int]]:
    """Indices of the Linear layers and of the (shared) Sin module in ``implicit_filter``."""
    return [0, *(2 + 2 * j for j in range(n_inner)), 2 + 2 * n_inner], [1 + 2 * j for j in range(n_inner + 1)]


def decay_deltas(config: HyenaConfig, channels: int) -> np.ndarray:
    """The original ``modulation.deltas`` buffer ``[1, 1, channels]`` for these decay settings."""
    fast = math.log(config.decay_target) / config.fast_decay_pct
    slow = math.log(config.decay_target) / config.slow_decay_pct
    return np.linspace(slow, fast, channels, dtype=np.float64).astype(np.float32)[None, None]


def filter_rules(
    filt: HyenaFilter, config: HyenaConfig, key: str, path: str, *, bidirectional: bool = False
) -> list[Entry]:
    """Rules for one filter: original prefix ``key`` (ending in '.'), ours ``path`` (ending in '.')."""
    n_inner = len(filt.ffn.inner)
    linears, sins = ffn_keys(n_inner)
    ours = ["first", *(f"inner.{j}" for j in range(n_inner)), "last"]
    rules: list[Entry] = [
        same(f"{key}bias", f"{path}bias"),
        same(f"{key}pos_emb.z", f"{path}z", load=lambda z: z[0], export=lambda z: z[None]),
    ]
    directions = [("implicit_filter", "ffn")] + (
        [("implicit_filter_rev", "ffn_rev")] if bidirectional else []
    )
    freq_keys = []
    for seq, ffn in directions:
        for i, name in zip(linears, ours, strict=True):
            rules += linear(f"{key}{seq}.{i}", f"{path}{ffn}.{name}", bias=name != "last")
        freq_keys += [f"{key}{seq}.{i}.freq" for i in sins]
    rules.append(Tied(tuple(freq_keys), f"{path}freq", load=lambda f: f[0], export=lambda f: f[None]))
    rules.append(
        Buffer(
            f"{key}pos_emb.t",
            np.linspace(0.0, 1.0, filt.max_len, dtype=np.float64).astype(np.float32)[None, :, None],
            "the filter's positions linspace(0, 1, l_max), recomputed by our filter",
            hint="its length must be the filter's l_max (max_seq_len)",
        )
    )
    rules.append(
        Buffer(
            f"{key}modulation.deltas",
            decay_deltas(config, filt.channels),
            "the decay rates, recomputed from fast_decay_pct / slow_decay_pct / decay_target"
            if config.modulate
            else "the decay rates, unused: modulate=False",
            hint=deltas_hint(config),
            check=config.modulate,
        )
    )
    return rules


def deltas_hint(config: HyenaConfig) -> str:
    return (
        f"Ours: fast_decay_pct={config.fast_decay_pct}, slow_decay_pct={config.slow_decay_pct}, "
        f"decay_target={config.decay_target}. Pass the decay settings the checkpoint was trained with "
        f"(the deltas are linspace(ln(target)/slow_pct, ln(target)/fast_pct, channels)); trained "
        f"(modulation_lr > 0) or otherwise non-linspace decays are not supported"
    )
