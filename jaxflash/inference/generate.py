"""Autoregressive generation for every causal model: a parallel prefill, then one jitted decode loop.

``generate(model, prompts, max_new_tokens)`` works for any model with ``prefill`` / ``step``
(``LanguageModel`` with every mixer and hybrids, ``M2GPT``, ``Parcae``):

1. **Prefill.** The prompts' common prefix runs through ``model.prefill``: the parallel forward (the
   fast ops) that also returns the decode state after it, with caches of a fixed size (the KV cache of
   attention, H3's and S4D's SSM states computed from the prompt, the convolution histories of Hyena,
   long convolutions and M2).
2. **Decode.** One ``lax.while_loop`` of ``model.step``: at each position a row still inside its own
   prompt (prompts of different lengths, right-padded, with ``prompt_lengths``) takes its next prompt
   token, the others the sampled one; a row ends at one of its ``stop_tokens`` and the loop ends when
   every row has. Sampling: greedy at ``temperature=0``, else ``softmax(logits / temperature)``
   restricted to the ``top_k`` most likely tokens and to the smallest set whose probability reaches
   ``top_p`` (nucleus sampling, Holtzman et al. 2020), drawn with ``fold_in(key, position)``, so a key
   gives the same tokens every time.

Everything is compiled once per shape bucket: the prompt width, the prefill length (the common prefix
rounded down) and the cache length (prompt + new tokens rounded up, at most ``max_seq_len``) are
rounded to powers of two, so calls with nearby lengths share one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class Generation:
    """What :func:`generate` returns.

    ``tokens [b, P + n]``: each row's prompt, then its generated tokens (up to ``max_new_tokens`` = n of
    its own, the stop token included), then ``pad_id``; P is the prompt width. ``lengths [b]``: the
    valid tokens of each row (its prompt length plus what it generated). ``logprobs [b, P + n]`` (with
    ``return_logprobs=True``, else None): ``log p(token)`` of each generated token under the model's
    own distribution (before temperature, top-k and top-p), 0 at prompt and padding positions.
    """

    tokens: Int[Array, "b t"]
    lengths: Int[Array, " b"]
    logprobs: Float[Array, "b t"] | None = None


def _bucket_up(n: int, cap: int) -> int:
    return min(1 << max(n - 1, 0).bit_length(), cap)


def _bucket_down(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def filter_logits(
    logits: Float[Array, "b v"], *, top_k: int | None = None, top_p: float | None = None
) -> Float[Array, "b v"]:
    """``logits`` with every token outside the ``top_k`` most likely and outside the nucleus (the
    smallest most-likely set whose probability reaches ``top_p``) set to ``-inf``. The most likely token
    is always kept; ties at the threshold are kept."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # Keep a token while the mass strictly before it is below top_p (the first is always kept).
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def sample_token(
    logits: Float[Array, "b v"],
    key: jax.Array,
    position: jax.Array,
    temperature: jax.Array,
    *,
    greedy: bool,
    top_k: int | None,
    top_p: float | None,
) -> Int[Array, " b"]:
    """The next token of each row: the argmax when ``greedy``, else a draw from ``softmax(logits /
    temperature)`` within the top-k and the nucleus, keyed by ``fold_in(key, position)``."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(key, position), scaled, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "prefill_len",
        "cache_len",
        "greedy",
        "top_k",
        "top_p",
        "stop_tokens",
        "return_logprobs",
        "callback",
    ),
)
def _decode(
    graphdef,
    variables,
    prompts,
    lengths,
    max_new,
    key,
    temperature,
    pad_id,
    *,
    prefill_len: int,
    cache_len: int,
    greedy: bool,
    top_k: int | None,
    top_p: float | None,
    stop_tokens: tuple[int, ...],
    return_logprobs: bool,
    callback: Callable | None,
):
    model = nnx.merge(graphdef, variables)
    batch, width = prompts.shape
    logits, state = model.prefill(prompts[:, :prefill_len], cache_len)
    last = logits[:, -1].astype(jnp.float32)
    positions = jnp.arange(cache_len)
    # Prompt tokens in place, pad after each row's own prompt.
    tokens = jnp.full((batch, cache_len), pad_id, jnp.int32).at[:, :width].set(prompts)
    tokens = jnp.where(positions[None] < lengths[:, None], tokens, pad_id)
    logprobs = jnp.zeros((batch, cache_len), jnp.float32)
    stops = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
    limit = lengths + max_new  # each row ends after max_new tokens of its own
    total = jnp.max(limit)

    def cond(carry):
        t, _, _, _, _, done = carry
        return (t < total) & ~jnp.all(done)

    def body(carry):
        t, tokens, logprobs, state, last, done = carry
        sampled = sample_token(last, key, t, temperature, greedy=greedy, top_k=top_k, top_p=top_p)
        in_prompt = t < lengths
        generated = ~in_prompt & ~done & (t < limit)
        token = jnp.where(in_prompt, tokens[:, t], jnp.where(generated, sampled, pad_id))
        tokens = tokens.at[:, t].set(token)
        if return_logprobs:
            lp = jnp.take_along_axis(jax.nn.log_softmax(last, axis=-1), sampled[:, None], axis=-1)[:, 0]
            logprobs = logprobs.at[:, t].set(jnp.where(generated, lp, 0.0))
        done = done | (generated & jnp.any(sampled[:, None] == stops[None], axis=-1))
        if callback is not None:
            jax.debug.callback(callback, t, token, generated, ordered=True)
        # The last position's step is not needed; the cache has room for it (t < total <= cache_len).
        last, state = model.step(token, state)
        return t + 1, tokens, logprobs, state, last.astype(jnp.float32), done

    done = jnp.zeros((batch,), bool)
    carry = (jnp.asarray(prefill_len, jnp.int32), tokens, logprobs, state, last, done)
    t, tokens, logprobs, _, _, done = jax.lax.while_loop(cond, body, carry)
    tokens, ends = end_rows(tokens, stops, lengths, jnp.minimum(limit, t), pad_id)
    return tokens, ends, logprobs


def end_rows(tokens, stops, start, end, pad_id):
    """Each row cut after its first stop token among its generated positions ``[start, end)`` (else at
    ``end``), padded after: ``(tokens, lengths)``."""
    positions = jnp.arange(tokens.shape[1])[None]
    generated = (positions >= start[:, None]) & (positions < end[:, None])
    is_stop = jnp.isin(tokens, stops) & generated
    ends = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, end)
    return jnp.where(positions < ends[:, None], tokens, pad_id), ends


def generate(
    model: nnx.Module,
    prompts: Int[Array, "b p"] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    prompt_lengths: Int[Array, " b"] | Sequence[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    key: jax.Array | None = None,
    return_logprobs: bool = False,
    callback: Callable[[jax.Array, jax.Array, jax.Array], None] | None = None,
) -> Generation:
    """Continue each prompt by up to ``max_new_tokens`` tokens (module docstring).

    ``prompts``: int tokens ``[b, p]`` (right-padded when ``prompt_lengths`` gives each row's length;
    every length >= 1), or a list of token lists of any lengths. ``temperature=0`` is greedy decoding (no
    key needed); otherwise ``key`` is required. ``callback(position, tokens [b], generated [b])`` is
    called from the device loop at every position, in order (``jax.debug.callback``): streaming for
    interactive use. The prompt plus ``max_new_tokens`` must fit the model's ``max_seq_len``.
    """
    if not (hasattr(model, "prefill") and hasattr(model, "step")):
        raise TypeError(
            f"{type(model).__name__} has no prefill/step: generate takes a causal jaxflash model "
            "(LanguageModel, M2GPT, Parcae)"
        )
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "max_seq_len") or not hasattr(config, "vocab_size"):
        raise TypeError(f"{type(model).__name__} has no config with max_seq_len and vocab_size")
    greedy = check_sampling(config, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, key)
    prompts, lengths = padded_prompts(prompts, prompt_lengths, pad_id, config.vocab_size)
    stop_tokens = tuple(int(s) for s in stop_tokens)
    batch, width = prompts.shape
    total = int(lengths.max()) + max_new_tokens
    max_len = config.max_seq_len
    if total > max_len:
        raise ValueError(
            f"the longest prompt ({int(lengths.max())}) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds the model's max_seq_len={max_len}"
        )
    out_width = width + max_new_tokens
    if max_new_tokens == 0:
        tokens = np.where(np.arange(width)[None] < lengths[:, None], prompts, pad_id)
        zeros = jnp.zeros(tokens.shape, jnp.float32) if return_logprobs else None
        return Generation(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32), zeros)
    cache_len = max(_bucket_up(out_width, max_len), total)
    padded_width = min(_bucket_up(width, cache_len), cache_len)
    prompts = np.pad(prompts, ((0, 0), (0, padded_width - width)), constant_values=pad_id)
    graphdef, variables = nnx.split(model)
    tokens, out_lengths, logprobs = _decode(
        graphdef,
        variables,
        jnp.asarray(prompts, jnp.int32),
        jnp.asarray(lengths, jnp.int32),
        jnp.int32(max_new_tokens),
        jax.random.key(0) if key is None else key,
        jnp.float32(temperature if temperature > 0 else 1.0),
        jnp.int32(pad_id),
        prefill_len=_bucket_down(int(lengths.min())),
        cache_len=cache_len,
        greedy=greedy,
        top_k=top_k,
        top_p=None if top_p is None else float(top_p),
        stop_tokens=stop_tokens,
        return_logprobs=return_logprobs,
        callback=callback,
    )
    return Generation(
        tokens[:, :out_width], out_lengths, logprobs[:, :out_width] if return_logprobs else None
    )


def check_sampling(config, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_id, key) -> bool:
    """The sampling arguments of a model with ``config``, checked; True for greedy decoding."""
    if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0; got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an int >= 1 or None; got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None; got {top_p!r}")
    vocab = config.vocab_size
    for name, ids in (("stop_tokens", tuple(stop_tokens)), ("pad_id", (pad_id,))):
        if any(not (isinstance(i, int | np.integer) and 0 <= i < vocab) for i in ids):
            raise ValueError(f"{name} must be token ids in [0, vocab_size={vocab}); got {ids}")
    greedy = temperature == 0
    if not greedy and key is None:
        raise ValueError("sampling at temperature > 0 needs key= (or temperature=0 for greedy decoding)")
    return greedy


def padded_prompts(
    prompts, lengths, pad_id: int, vocab_size: int, *, what: str = "prompts", allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int32 token rows ``[b, p]`` and their valid lengths, from an array (with
    ``lengths``, default all of it) or a list of token lists; checked (ids in the vocabulary, every row
    at least one token unless ``allow_empty``)."""
    if isinstance(prompts, list | tuple) and prompts and isinstance(prompts[0], list | tuple | np.ndarray):
        if lengths is not None:
            raise ValueError(
                f"lengths are for a padded [batch, length] array of {what}; a list gives its own"
            )
        rows = [np.asarray(p) for p in prompts]
        if any(r.ndim != 1 for r in rows):
            raise ValueError(f"each row of {what} must be a flat sequence of token ids")
        lengths = np.array([len(r) for r in rows])
        array = np.full((len(rows), max(int(lengths.max()), 1)), pad_id, np.int64)
        for i, r in enumerate(rows):
            array[i, : len(r)] = r
        prompts = array
    else:
        prompts = np.asarray(prompts)
        if prompts.ndim != 2:
            raise ValueError(f"{what} must be int tokens of shape [batch, length]; got shape {prompts.shape}")
        lengths = np.full((prompts.shape[0],), prompts.shape[1]) if lengths is None else np.asarray(lengths)
    if prompts.size and not np.issubdtype(prompts.dtype, np.integer):
        raise TypeError(f"{what} must hold integer token ids; got dtype {prompts.dtype}")
    if prompts.shape[0] < 1:
        raise ValueError(f"{what} is an empty batch")
    if lengths.shape != (prompts.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"the lengths of {what} must be {prompts.shape[0]} ints; got {lengths!r}")
    if not allow_empty and lengths.min() < 1:
        raise ValueError(
            f"every row of {what} needs at least one token (row {int(lengths.argmin())} has length "
            f"{int(lengths.min())}); start it with a BOS or other token"
        )
    if lengths.min() < 0 or lengths.max() > prompts.shape[1]:
        raise ValueError(
            f"the lengths of {what} {lengths.tolist()} must lie in [0, width {prompts.shape[1]}]"
        )
    valid = np.arange(prompts.shape[1])[None] < lengths[:, None]
    bad = prompts[valid & ((prompts < 0) | (prompts >= vocab_size))]
    if bad.size:
        raise ValueError(
            f"{what}: token ids must lie in [0, vocab_size={vocab_size}); got {bad[:5].tolist()}"
        )
    return prompts.astype(np.int32), lengths.astype(np.int64)
