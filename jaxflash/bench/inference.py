"""Inference: the decode step of each cache kind, and Hydragen's shared-prefix attention.

**Decode step** (``measure = decode``): one jitted ``model.step`` (one token per sequence) from the
state a ``prefill`` of a prompt of ``prompt`` tokens leaves, for 2-layer, width-64 byte LMs (the
``lm_*`` presets' shape) with ``max_seq_len = prompt + 64``: the Transformer (KV cache), Hyena (the
convolution cache: each step convolves the whole history, O(t d)), and Hyena distilled to a modal SSM of
order :data:`DISTILL_ORDER` (``jaxflash.inference.distill_hyena``; O(d) per token and channel, a state of
constant size). ``tokens/s`` = batch / median; the speed-up column is over the convolutional Hyena. Peak
memory (model, state and the step) is each candidate's own subprocess. The distilled model is fitted
with the Prony initialisation only (``steps=0``): its speed does not depend on the fit.

**Shared-prefix attention** (``measure = hydragen``): one decode query per sequence (``batch`` sequences,
8 heads of 64, a unique suffix of :data:`SUFFIX` keys each) over a prefix of ``prefix`` keys they all
share: ``jaxflash.shared_prefix_attention`` (the prefix read once, all queries against it as one matrix
product, combined with the suffix by log-sum-exp) against ``jaxflash.decode_attention`` over each
sequence's own copy of prefix + suffix (what decoding without sharing does).

**End to end** (``measure = hydragen generate``): ``hydragen_generate`` against ``generate`` on the
concatenated prompts (same greedy tokens), a 2-layer width-64 attention LM, :data:`E2E_NEW` new tokens;
tokens/s = batch x new tokens / median.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, Suite

DEFAULT_SIZES = (256, 1024, 4096, 8192, 16384)
QUICK_SIZES = (256,)
GPU_SIZES = None
GPU_CHECKS = ()  # no kernels of its own

DECODE_BATCHES = (1, 16, 64)
QUICK_DECODE_BATCHES = (1,)
DISTILL_ORDER = 16
HYDRAGEN_BATCHES = (8, 64, 128)
QUICK_HYDRAGEN_BATCHES = (8,)
HYDRAGEN_PREFIXES = (1024, 4096)
SUFFIX = 16
HEADS, HEAD_DIM = 8, 64
E2E_BATCH, E2E_PREFIX, E2E_NEW = 16, 1024, 32


def _byte_lm(mixer: str, prompt: int):
    import dataclasses

    from flax import nnx

    from jaxflash.models import LanguageModel
    from jaxflash.train import presets

    config = dataclasses.replace(presets.get(f"lm_{mixer}").model, max_seq_len=prompt + 64)
    return LanguageModel(config, rngs=nnx.Rngs(0))


def decode_thunk(kind: str, prompt: int, batch: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxflash.inference import distill_hyena

    model = _byte_lm("attention" if kind == "attention" else "hyena", prompt)
    if kind == "distilled":
        model, _ = distill_hyena(model, DISTILL_ORDER, length=prompt + 64, steps=0)
    tokens = jax.random.randint(jax.random.key(0), (batch, prompt), 0, 256)
    _, state = nnx.jit(lambda m, t: m.prefill(t, prompt + 64))(model, tokens)
    step = nnx.jit(lambda m, t, s: m.step(t, s)[0])
    token = jnp.zeros((batch,), jnp.int32)
    return lambda: step(model, token, state)


def hydragen_thunk(shared: bool, prefix: int, batch: int):
    import jax
    import jax.numpy as jnp

    import jaxflash

    keys = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(keys[0], (batch, 1, HEADS, HEAD_DIM), jnp.float32)
    pk = jax.random.normal(keys[1], (1, prefix, HEADS, HEAD_DIM), jnp.float32)
    pv = jax.random.normal(keys[2], (1, prefix, HEADS, HEAD_DIM), jnp.float32)
    sk = jax.random.normal(keys[3], (batch, SUFFIX, HEADS, HEAD_DIM), jnp.float32)
    sv = jax.random.normal(keys[4], (batch, SUFFIX, HEADS, HEAD_DIM), jnp.float32)
    if shared:
        fn = jax.jit(lambda q, pk, pv, sk, sv: jaxflash.shared_prefix_attention(q, [(pk, pv)], sk, sv))
        return lambda: fn(q, pk, pv, sk, sv)
    # Without sharing every sequence holds (and reads) its own copy of the prefix.
    k = jnp.concatenate([jnp.broadcast_to(pk, (batch, *pk.shape[1:])), sk], axis=1)
    v = jnp.concatenate([jnp.broadcast_to(pv, (batch, *pv.shape[1:])), sv], axis=1)
    lengths = jnp.full((batch,), prefix + SUFFIX, jnp.int32)
    fn = jax.jit(lambda q, k, v, n: jaxflash.decode_attention(q[:, 0], k, v, n))
    return lambda: fn(q, k, v, lengths)


def e2e_thunk(shared: bool):
    import jax

    from jaxflash.inference import generate, hydragen_generate

    model = _byte_lm("attention", E2E_PREFIX + SUFFIX)
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, 256, (1, E2E_PREFIX))
    suffixes = rng.integers(0, 256, (E2E_BATCH, SUFFIX))
    if shared:
        return lambda: jax.block_until_ready(
            hydragen_generate(model, [prefix], suffixes, E2E_NEW, temperature=0.0).tokens
        )
    prompts = np.concatenate([np.repeat(prefix, E2E_BATCH, 0), suffixes], axis=1)
    return lambda: jax.block_until_ready(generate(model, prompts, E2E_NEW, temperature=0.0).tokens)


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = []
    for prompt in sizes or (QUICK_SIZES if quick else DEFAULT_SIZES):
        for batch in QUICK_DECODE_BATCHES if quick else DECODE_BATCHES:
            candidates = tuple(
                Candidate(
                    name, lambda kind=kind, prompt=prompt, batch=batch: decode_thunk(kind, prompt, batch)
                )
                for name, kind in (
                    ("transformer (KV cache)", "attention"),
                    ("hyena (conv cache)", "hyena"),
                    (f"distilled hyena (modal, d={DISTILL_ORDER})", "distilled"),
                )
            )
            config = {"measure": "decode", "prompt": prompt, "batch": batch, "tokens": batch}
            cases.append(Case(config=config, candidates=candidates, baseline="hyena (conv cache)"))
    prefixes = QUICK_SIZES if quick else HYDRAGEN_PREFIXES
    for prefix in prefixes:
        for batch in QUICK_HYDRAGEN_BATCHES if quick else HYDRAGEN_BATCHES:
            candidates = (
                Candidate("hydragen (shared prefix)", lambda p=prefix, b=batch: hydragen_thunk(True, p, b)),
                Candidate(
                    "decode_attention (per sequence)", lambda p=prefix, b=batch: hydragen_thunk(False, p, b)
                ),
            )
            config = {"measure": "hydragen", "prefix": prefix, "batch": batch, "tokens": batch}
            cases.append(
                Case(config=config, candidates=candidates, baseline="decode_attention (per sequence)")
            )
    if not quick:
        candidates = (
            Candidate("hydragen_generate", lambda: e2e_thunk(True)),
            Candidate("generate", lambda: e2e_thunk(False)),
        )
        config = {
            "measure": "hydragen generate",
            "prefix": E2E_PREFIX,
            "batch": E2E_BATCH,
            "tokens": E2E_BATCH * E2E_NEW,
        }
        cases.append(Case(config=config, candidates=candidates, baseline="generate"))
    return cases


SUITE = Suite(
    name="inference",
    description=(
        "decode step per cache kind (KV cache, convolution cache, distilled modal state) against prompt "
        "length and batch; Hydragen shared-prefix attention against per-sequence decode attention"
    ),
    cases=_cases,
)
