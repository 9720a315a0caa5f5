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


SUITE = Suite(
    name="models",
    description=(
        f"forward+backward of a {DEPTH}-layer width-{WIDTH} LM per sequence mixer, batch {BATCH}; "
        "tokens/s = tokens / median, speed-up over the Transformer"
    ),
    cases=_cases,
)
