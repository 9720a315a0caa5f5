"""Sequence mixers at matched width and depth: forward + backward training throughput of a small LM
per mixer (Transformer, Hyena, H3, M2-GPT, long convolution) at growing sequence lengths.

Each candidate is one jitted ``value_and_grad`` of the next-token cross-entropy of a 2-layer,
width-128 LM (batch 1, vocab 256); the case's ``tokens`` column over the median time is the
tokens/s, and the speed-up column is each mixer's throughput over the Transformer's (flash attention
through ``jaxflash.attention``). The papers' claims to approach (Hyena, Poli et al. 2023): about 2x
the Transformer at 8K tokens and far more beyond (100x at 64K on an A100); H3 and M2 likewise scale
as N log N against attention's N^2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jaxflash.bench.harness import Candidate, Case, Suite

DEFAULT_SIZES = (1024, 4096, 16384)
QUICK_SIZES = (1024,)
GPU_SIZES = (1024, 4096, 16384)
GPU_CHECKS = ()  # no kernels of their own: the ops' suites check theirs on the GPU

WIDTH, DEPTH, VOCAB, BATCH = 128, 2, 256, 1
MIXERS = ("transformer", "hyena", "h3", "m2-gpt", "long_conv")


def _model(mixer: str, seq: int, implementation: str | None):
    from flax import nnx

    from jaxflash.models import (
        M2GPT,
        AttentionConfig,
        HyenaConfig,
        LanguageModel,
        LMConfig,
        LongConvConfig,
        M2Config,
    )

    common = dict(
        vocab_size=VOCAB, d_model=WIDTH, n_layers=DEPTH, max_seq_len=seq, implementation=implementation
    )
    rngs = nnx.Rngs(0)
    if mixer == "m2-gpt":
        cfg = M2Config(causal=True, residual_long_conv=False, dropout=0.0, norm_eps=1e-5, **common)
        return M2GPT(cfg, rngs=rngs)
    kind = {"transformer": "attention"}.get(mixer, mixer)
    cfg = LMConfig(
        mixer=kind,
        attention=AttentionConfig(num_heads=WIDTH // 64),
        hyena=HyenaConfig(filter_order=64, emb_dim=33, sine_freq=14.0),
        long_conv=LongConvConfig(channels=1, lam=0.003),
        **common,
    )
    return LanguageModel(cfg, rngs=rngs)


def train_step_thunk(mixer: str, seq: int, implementation: str | None = None) -> Callable[[], object]:
    """Builds the model and inputs, compiles nothing yet; returns the timed forward+backward call."""
    import jax
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(_model(mixer, seq, implementation), nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (BATCH, seq + 1), 0, VOCAB)

    @jax.jit
    def loss_and_grads(params, rest, tokens):
        def loss(p):
            logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        return jax.value_and_grad(loss)(params)

    return lambda: loss_and_grads(params, rest, tokens)


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = []
    for seq in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        candidates = tuple(
            Candidate(mixer, lambda mixer=mixer, seq=seq: train_step_thunk(mixer, seq)) for mixer in MIXERS
        )
        cases.append(
            Case(
                config={"seq": seq, "tokens": BATCH * seq, "width": WIDTH, "depth": DEPTH},
                candidates=candidates,
                baseline="transformer",
            )
        )
    return cases


# --- single layers against the papers' PyTorch code -------------------------------------------------

LAYER_SIZES = (1024, 4096, 8192)
LAYER_WIDTHS = (128, 512)
LAYER_BATCH = 4
# layer -> the repository whose PyTorch forward jaxflash.bench.torch_layers follows
LAYERS = {"hyena": "safari", "h3": "safari", "long_conv": "safari", "m2": "m2"}
# The Pile Hyena's filter (safari configs/experiment/pile/hyena*.yaml), as in the LM cases above.
HYENA_FILTER = dict(filter_order=64, emb_dim=33, sine_freq=14.0)


def torch_mixer(kind: str, d_model: int, seq: int, cfg: Any):
    """The papers' PyTorch form (``jaxflash.bench.torch_layers``) of our mixer ``kind`` with config
    ``cfg`` (the ``HyenaConfig``, ``H3Config``, ``LongConvConfig`` or ``M2Config`` it was built from)."""
    from jaxflash.bench import torch_layers as tl

    if kind == "hyena":
        return tl.HyenaOperator(
            d_model,
            seq,
            order=cfg.order,
            filter_order=cfg.filter_order,
            emb_dim=cfg.emb_dim,
            num_inner_mlps=cfg.num_inner_mlps,
            w=cfg.sine_freq,
            fast_decay_pct=cfg.fast_decay_pct,
            slow_decay_pct=cfg.slow_decay_pct,
            target=cfg.decay_target,
        )
    if kind == "h3":
        return tl.H3(d_model, cfg.d_state)
    if kind == "long_conv":
        return tl.LongConv(d_model, seq, channels=cfg.channels, lam=cfg.lam, smooth=cfg.smoothing)
    if kind == "m2":
        h = cfg.hyena
        return tl.MonarchMixerSequenceMixing(
            d_model,
            seq,
            filter_order=h.filter_order,
            residual_long_conv=cfg.residual_long_conv,
            emb_dim=h.emb_dim,
            num_inner_mlps=h.num_inner_mlps,
            w=h.sine_freq,
            fast_decay_pct=h.fast_decay_pct,
            slow_decay_pct=h.slow_decay_pct,
            target=h.decay_target,
        )
    raise NotImplementedError(f"mixer {kind!r} has no PyTorch peer here ({sorted(LAYERS)} do)")


def load_torch(module, state: dict) -> None:
    """Loads a numpy state dict (our export in the original's layout) into a torch module, strictly."""
    import numpy as np
    import torch

    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)


def layer_pair(layer: str, d_model: int, seq: int, seed: int = 0):
    """Our ``layer`` (an nnx module) and the papers' PyTorch form of it holding the same weights
    (``jaxflash.bench.torch_layers``, loaded from our export in the original's key layout)."""
    if layer not in LAYERS:
        raise ValueError(f"layer={layer!r}; choose one of {sorted(LAYERS)}")
    from flax import nnx

    from jaxflash.checkpoints import m2 as m2_layout
    from jaxflash.checkpoints import safari
    from jaxflash.checkpoints.layout import export
    from jaxflash.models import (
        H3,
        H3Config,
        HyenaConfig,
        HyenaOperator,
        LongConv,
        LongConvConfig,
        M2Config,
        M2Mixer,
    )

    rngs = nnx.Rngs(seed)
    if layer == "hyena":
        cfg = HyenaConfig(**HYENA_FILTER)
        ours = HyenaOperator(d_model, seq, cfg, rngs=rngs)
    elif layer == "h3":
        cfg = H3Config()
        ours = H3(d_model, cfg, rngs=rngs)
    elif layer == "long_conv":
        cfg = LongConvConfig(channels=1, lam=0.003)
        ours = LongConv(d_model, seq, cfg, rngs=rngs)
    else:
        cfg = M2Config(d_model=d_model, max_seq_len=seq)
        ours = M2Mixer(d_model, seq, config=cfg, rngs=rngs)
    rules = m2_layout.mixer_rules(ours, cfg) if layer == "m2" else safari.mixer_rules(layer, ours)
    theirs = torch_mixer(layer, d_model, seq, cfg)
    load_torch(theirs, export(ours, rules))
    return ours, theirs


def layer_input(d_model: int, seq: int, batch: int = LAYER_BATCH, seed: int = 1):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((batch, seq, d_model)).astype(np.float32)


def _ours_thunk(layer: str, d_model: int, seq: int, batch: int) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    ours, _ = layer_pair(layer, d_model, seq)
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
    x = jnp.asarray(layer_input(d_model, seq, batch))

    @jax.jit
    def loss_and_grads(params, rest, x):
        def loss(p, x):
            y = nnx.merge(graphdef, p, rest)(x)
            return jnp.mean(y * y)

        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    return lambda: loss_and_grads(params, rest, x)


def _torch_thunk(layer: str, d_model: int, seq: int, batch: int) -> Callable[[], object]:
    import torch

    _, theirs = layer_pair(layer, d_model, seq)
    x = torch.from_numpy(layer_input(d_model, seq, batch)).requires_grad_()

    def step():
        theirs.zero_grad(set_to_none=True)
        x.grad = None
        y = theirs(x)
        loss = (y * y).mean()
        loss.backward()
        return loss.detach()

    return step


def _layer_cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = []
    widths = LAYER_WIDTHS[:1] if quick else LAYER_WIDTHS
    for seq in sizes or (QUICK_SIZES if quick else LAYER_SIZES):
        for d_model in widths:
            for layer, repo in LAYERS.items():
                peer = f"{repo} torch"
                args = (layer, d_model, seq, LAYER_BATCH)
                candidates = (
                    Candidate("jaxflash", lambda args=args: _ours_thunk(*args)),
                    Candidate(peer, lambda args=args: _torch_thunk(*args), requires=("torch",), peer=True),
                )
                config = {"layer": layer, "seq": seq, "d_model": d_model, "batch": LAYER_BATCH}
                cases.append(Case(config=config, candidates=candidates, baseline=peer))
    return cases


def _all_cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    return _cases(sizes, quick) + _layer_cases(sizes, quick)


SUITE = Suite(
    name="models",
    description=(
        f"forward+backward of a {DEPTH}-layer width-{WIDTH} LM per sequence mixer, batch {BATCH} "
        "(speed-up over the Transformer), then of each mixer alone, batch "
        f"{LAYER_BATCH}, against the papers' PyTorch layers (speed-up over torch)"
    ),
    cases=_all_cases,
)
