"""Hydragen generation (Juravsky et al. 2024, arXiv:2402.05099): many completions from shared prefixes.

The batch's prompts form a hierarchy of levels, outermost first, then each sequence's own suffix::

    level 0   [g_0, p_0]   e.g. one system prompt shared by all       (g_0 divides g_1)
    level 1   [g_1, p_1]   e.g. a few-shot block per group            (g_1 divides batch)
    suffix    [batch, s]   each sequence's own question

Sequence ``b`` belongs to group ``b // (batch / g_l)`` of level l (consecutive sequences share a prefix),
and its prompt is its level-0 prefix, then its level-1 prefix, ..., then its suffix, each right-padded
to its own valid length. Each level's KV is computed once, by a prefill whose queries attend to the
outer levels' KV. At every decode step the queries of all sequences sharing a prefix attend to it as one
matrix-matrix product (inter-sequence batching, ``jaxflash.shared_prefix_attention``), the suffix and
the generated tokens by ordinary attention over each sequence's own cache, and the parts are combined by
log-sum-exp: the result is exactly attention over the whole prompt, so greedy outputs are the tokens
``generate`` gives for the concatenated prompts.

The engine serves attention-only ``LanguageModel``s (GPT-style and GQA, RoPE or learned positions).
Models with state-space or convolution mixers keep no per-token KV to share: they raise
``NotImplementedError``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

import jaxflash
from jaxflash.inference.generate import Generation, check_sampling, end_rows, padded_prompts, sample_token


def _attention_blocks(model) -> list:
    from jaxflash.models import Attention, LanguageModel

    if not isinstance(model, LanguageModel):
        raise NotImplementedError(
            f"hydragen_generate serves attention LanguageModels; got {type(model).__name__}"
        )
    kinds = {type(b.mixer).__name__ for b in model.blocks if not isinstance(b.mixer, Attention)}
    if kinds:
        raise NotImplementedError(
            f"hydragen_generate shares attention KV caches; this model's blocks also use {sorted(kinds)}, "
            "which keep no per-token KV: use generate"
        )
    return list(model.blocks)


def _attend(block, x, q, shared, own_k, own_v, lengths=None):
    """Block ``block``'s attention output added to ``x``, then its MLP: the queries ``q`` see the shared
    levels (one matrix-matrix product per level), then their own keys (causal; with ``lengths``, the
    query is the last of each row's valid keys)."""
    att = block.mixer
    y = jaxflash.shared_prefix_attention(
        q,
        [(pk, pv) for pk, pv, _ in shared],
        own_k,
        own_v,
        prefix_lengths=[n for _, _, n in shared],
        suffix_lengths=lengths,
        causal=True,
        implementation=att.implementation,
    )
    x = x + att.out_proj(y.reshape(*x.shape[:2], -1))
    return x + block.mlp(block.norm2(x))


@functools.partial(
    jax.jit, static_argnames=("graphdef", "cache_len", "greedy", "top_k", "top_p", "stop_tokens")
)
def _run(
    graphdef,
    variables,
    levels,
    level_lengths,
    suffix,
    suffix_lengths,
    max_new,
    key,
    temperature,
    pad_id,
    *,
    cache_len: int,
    greedy: bool,
    top_k: int | None,
    top_p: float | None,
    stop_tokens: tuple[int, ...],
):
    model = nnx.merge(graphdef, variables)
    blocks = list(model.blocks)
    batch, width = suffix.shape
    shared = [[] for _ in blocks]  # per layer: (k, v, lengths) of each level
    start = jnp.zeros((1,), jnp.int32)  # where each group's next level starts, by position
    for tokens, lengths in zip(levels, level_lengths, strict=True):
        start = jnp.repeat(start, tokens.shape[0] // start.shape[0])
        positions = start[:, None] + jnp.arange(tokens.shape[1])[None]
        x = model.embed_tokens(tokens, positions)
        for i, block in enumerate(blocks):
            q, k, v = block.mixer.qkv(block.norm1(x), positions)
            x = _attend(block, x, q, shared[i], k, v)
            shared[i].append((k, v, lengths))
        start = start + lengths
    start = jnp.repeat(start, batch // start.shape[0])
    positions = start[:, None] + jnp.arange(width)[None]
    x = model.embed_tokens(suffix, positions)
    caches = []
    pad = ((0, 0), (0, cache_len - width), (0, 0), (0, 0))
    for i, block in enumerate(blocks):
        q, k, v = block.mixer.qkv(block.norm1(x), positions)
        x = _attend(block, x, q, shared[i], k, v)
        caches.append((jnp.pad(k, pad), jnp.pad(v, pad)))
    rows = jnp.arange(batch)
    last = model.head(x)[rows, suffix_lengths - 1].astype(jnp.float32)
    tokens = jnp.full((batch, cache_len), pad_id, jnp.int32).at[:, :width].set(suffix)
    tokens = jnp.where(jnp.arange(cache_len)[None] < suffix_lengths[:, None], tokens, pad_id)
    stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

    def cond(carry):
        n, _, _, _, _, done = carry
        return (n < max_new) & ~jnp.all(done)

    def body(carry):
        n, tokens, caches, last, pos, done = carry
        sampled = sample_token(last, key, n, temperature, greedy=greedy, top_k=top_k, top_p=top_p)
        token = jnp.where(done, pad_id, sampled)
        tokens = tokens.at[rows, pos].set(token)
        done = done | jnp.any(sampled[:, None] == stops[None], axis=-1)
        positions = (start + pos)[:, None]
        x = model.embed_tokens(token[:, None], positions)
        new_caches = []
        for i, block in enumerate(blocks):
            k_cache, v_cache = caches[i]
            q, k, v = block.mixer.qkv(block.norm1(x), positions)
            k_cache = k_cache.at[rows, pos].set(k[:, 0].astype(k_cache.dtype))
            v_cache = v_cache.at[rows, pos].set(v[:, 0].astype(v_cache.dtype))
            x = _attend(block, x, q, shared[i], k_cache, v_cache, pos + 1)
            new_caches.append((k_cache, v_cache))
        return n + 1, tokens, new_caches, model.head(x)[:, 0].astype(jnp.float32), pos + 1, done

    done = jnp.zeros((batch,), bool)
    carry = (jnp.zeros((), jnp.int32), tokens, caches, last, suffix_lengths, done)
    _, tokens, _, _, pos, _ = jax.lax.while_loop(cond, body, carry)
    return end_rows(tokens, stops, suffix_lengths, pos, pad_id)


def hydragen_generate(
    model: nnx.Module,
    prefixes: Sequence[Int[Array, "g p"] | Sequence[Sequence[int]]],
    suffixes: Int[Array, "b s"] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    prefix_lengths: Sequence[Sequence[int] | None] | None = None,
    suffix_lengths: Sequence[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    key: jax.Array | None = None,
) -> Generation:
    """Continue each sequence's prompt (its prefixes, then its suffix) by up to ``max_new_tokens``
    tokens, sharing each prefix's attention KV (module docstring).

    ``prefixes``: the levels, outermost first, each ``[g_l, p_l]`` tokens (right-padded, with
    ``prefix_lengths[l]``) or a list of ``g_l`` token lists; ``g_l`` divides ``g_{l+1}`` and the batch.
    ``suffixes``: ``[batch, s]`` (with ``suffix_lengths``) or a list of token lists, each >= 1 token.
    Sampling as :func:`~jaxflash.inference.generate`. Returns a ``Generation`` whose ``tokens`` are each
    row's suffix, then its generated tokens, then ``pad_id`` (``[batch, s + max_new_tokens]``).
    """
    _attention_blocks(model)
    config = model.config
    greedy = check_sampling(config, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, key)
    suffix, s_len = padded_prompts(suffixes, suffix_lengths, pad_id, config.vocab_size, what="suffixes")
    if prefix_lengths is not None and len(prefix_lengths) != len(prefixes):
        raise ValueError(
            f"prefix_lengths needs one entry per level ({len(prefixes)}); got {len(prefix_lengths)}"
        )
    levels, level_lengths, groups, longest = [], [], 1, 0
    for level, tokens in enumerate(prefixes):
        lengths = None if prefix_lengths is None else prefix_lengths[level]
        tokens, lengths = padded_prompts(
            tokens, lengths, pad_id, config.vocab_size, what=f"prefixes[{level}]", allow_empty=True
        )
        g = tokens.shape[0]
        if g % groups or suffix.shape[0] % g:
            raise ValueError(
                f"prefixes[{level}] has {g} prefixes: it must be a multiple of the level above ({groups}) "
                f"and divide the batch ({suffix.shape[0]})"
            )
        groups = g
        longest += int(lengths.max())
        levels.append(jnp.asarray(tokens, jnp.int32))
        level_lengths.append(jnp.asarray(lengths, jnp.int32))
    total = longest + int(s_len.max()) + max_new_tokens
    if total > config.max_seq_len:
        raise ValueError(
            f"the longest prompt ({longest + int(s_len.max())} tokens over all levels) + max_new_tokens "
            f"({max_new_tokens}) = {total} exceeds the model's max_seq_len={config.max_seq_len}"
        )
    width = suffix.shape[1]
    graphdef, variables = nnx.split(model)
    tokens, lengths = _run(
        graphdef,
        variables,
        tuple(levels),
        tuple(level_lengths),
        jnp.asarray(suffix, jnp.int32),
        jnp.asarray(s_len, jnp.int32),
        jnp.int32(max_new_tokens),
        jax.random.key(0) if key is None else key,
        jnp.float32(temperature if temperature > 0 else 1.0),
        jnp.int32(pad_id),
        cache_len=width + max_new_tokens,
        greedy=greedy,
        top_k=top_k,
        top_p=None if top_p is None else float(top_p),
        stop_tokens=tuple(int(s) for s in stop_tokens),
    )
    return Generation(tokens, lengths)


def generate_many(
    model: nnx.Module, prompt: Sequence[int], num_return_sequences: int, max_new_tokens: int, **kw
) -> Generation:
    """``num_return_sequences`` continuations of one prompt whose KV is computed once (the simplest use
    of :func:`hydragen_generate`: the prompt but its last token is the one shared level, and that last
    token the suffix of every sequence). ``tokens`` hold the last prompt token, then the continuation."""
    prompt = np.asarray(prompt)
    if prompt.ndim != 1 or prompt.size < 1:
        raise ValueError(f"prompt must be a non-empty flat sequence of token ids; got shape {prompt.shape}")
    if not (isinstance(num_return_sequences, int) and num_return_sequences >= 1):
        raise ValueError(f"num_return_sequences must be an int >= 1; got {num_return_sequences!r}")
    suffixes = np.repeat(prompt[None, -1:], num_return_sequences, axis=0)
    return hydragen_generate(model, [prompt[None, :-1]], suffixes, max_new_tokens, **kw)
