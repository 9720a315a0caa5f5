"""Diffusion sampling: the base DiT, grafted DiTs and Chipmunk, same run, same chain.

Each candidate draws ``batch`` class-conditional images with DDIM over :data:`STEPS` respaced steps (one
whole ``sample``; the rate column is denoising steps per second). The model has the ``dit_digits``
preset's shape (6 blocks, width 64, 16x16 images, patch 2: 64 tokens). Its weights are random (adaLN-Zero
modulations drawn at random so that no block is the identity): speed does not depend on training, and
what each variant costs in quality is measured on the trained model (``python -m
jaxflash.diffusion.experiments``, REPRODUCTIONS.md). Candidates:

- ``dense`` (:func:`jaxflash.diffusion.sample_dit`), the baseline;
- grafted: Hyena-Y, SWA (window 4) and linear attention in place of the attention of half the blocks
  (the odd ones), and the depth-halved parallel model (:func:`jaxflash.models.parallelize`);
- Chipmunk (:func:`jaxflash.diffusion.chipmunk_sample`): the attention and MLP deltas at the defaults
  (25% of key columns per 16-query group, 30% of hidden units per 16-row block, a full step every 10,
  the first block dense), attention only, with the tokens reordered into 4x4 tiles, and with one set of
  MLP hidden units shared by all tokens (``mlp_shared_units``: weights sliced, no activation gathered),
  with and without the attention delta.

``GPU_CHECKS``: the compiled linear-attention and column-sparse-attention kernels against their
references, forward and gradients, on the GPU (``make gpu-check``).
"""

from __future__ import annotations

import functools

from jaxflash.bench.harness import Candidate, Case, GpuCheck, Suite

STEPS = 50
DEFAULT_BATCHES = (16, 128)
QUICK_BATCHES = (4,)
GPU_SIZES = None


def _model():
    import jax
    from flax import nnx

    from jaxflash.models import DiT
    from jaxflash.train import presets

    model = DiT(presets.get("dit_digits").model, rngs=nnx.Rngs(0))
    layers = [model.final_layer.adaLN_modulation, model.final_layer.linear]
    layers += [block.adaLN_modulation for block in model.blocks]
    for i, layer in enumerate(layers):
        kernel = layer.kernel.get_value()
        layer.kernel.set_value(0.05 * jax.random.normal(jax.random.key(i), kernel.shape, kernel.dtype))
    model.eval()
    return model


def _variant(name: str):
    from flax import nnx

    from jaxflash.models import graft, interleaved, parallelize

    model = _model()
    half = interleaved(len(model.blocks), 0.5)
    if name == "dense":
        return model
    if name == "parallel":
        return parallelize(model)
    grafted = graft(model, half, kind="attn", operator=name, rngs=nnx.Rngs(1))
    grafted.eval()
    return grafted


def sample_thunk(variant: str, batch: int, chipmunk: dict | None = None):
    import jax
    import numpy as np

    from jaxflash.diffusion import ChipmunkConfig, chipmunk_sample, create_diffusion, sample_dit

    model = _variant(variant)
    chain = create_diffusion(f"ddim{STEPS}")
    labels = np.arange(batch) % 10
    key = jax.random.key(0)
    if chipmunk is None:
        return lambda: jax.block_until_ready(sample_dit(model, labels, key, diffusion=chain))
    config = ChipmunkConfig(**chipmunk)
    return lambda: jax.block_until_ready(chipmunk_sample(model, labels, key, diffusion=chain, config=config))


CHIPMUNK = {
    "chipmunk (attn + mlp)": {},
    "chipmunk (attn only)": {"sparse_mlp": False},
    "chipmunk (attn + mlp, 4x4 tiles)": {"reorder_patch": 4},
    "chipmunk (attn + shared mlp units)": {"mlp_shared_units": True},
    "chipmunk (shared mlp units only)": {"mlp_shared_units": True, "sparse_attn": False},
}
GRAFTED = {
    "grafted Hyena-Y 50%": "hyena_y",
    "grafted SWA 50%": "swa",
    "grafted linear attention 50%": "linear_attention",
    "parallel (depth / 2)": "parallel",
}


def _cases(sizes, quick: bool) -> list[Case]:
    cases = []
    for batch in sizes or (QUICK_BATCHES if quick else DEFAULT_BATCHES):
        candidates = [Candidate("dense", functools.partial(sample_thunk, "dense", batch))]
        candidates += [Candidate(n, functools.partial(sample_thunk, v, batch)) for n, v in GRAFTED.items()]
        candidates += [
            Candidate(n, functools.partial(sample_thunk, "dense", batch, c)) for n, c in CHIPMUNK.items()
        ]
        if quick:
            candidates = [
                c for c in candidates if c.name in ("dense", "grafted Hyena-Y 50%", "chipmunk (attn + mlp)")
            ]
        config = {"batch": batch, "ddim steps": STEPS}
        cases.append(
            Case(config=config, candidates=tuple(candidates), baseline="dense", rate=("step", STEPS))
        )
    return cases


SUITE = Suite(
    name="diffusion",
    description="DiT sampling (DDIM 50): the base model, grafted models and Chipmunk's sparse deltas",
    cases=_cases,
)


# --- make gpu-check ---------------------------------------------------------------------------------------


def check_linear_attention(
    causal: bool, dtype: str, length: int, implementation: str = "pallas"
) -> dict[str, float]:
    """The compiled linear-attention kernels (forward and backward) against the XLA path (itself tested
    against the reference); ``implementation="pallas_interpret"`` runs the same check on a CPU."""
    import jax
    import jax.numpy as jnp

    import jaxflash
    from jaxflash.testing import tolerance

    keys = jax.random.split(jax.random.key(0), 4)
    shape = (2, length, 4, 64)
    q, k = (jaxflash.elu_feature_map(jax.random.normal(kk, shape)).astype(dtype) for kk in keys[:2])
    v = jax.random.normal(keys[2], shape).astype(dtype)
    w = jax.random.normal(keys[3], shape)

    def loss(impl):
        def f(q, k, v):
            out = jaxflash.linear_attention(q, k, v, causal=causal, implementation=impl)
            return (out.astype(jnp.float32) * w).sum()

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    got, want = loss(implementation)(q, k, v), loss("xla")(q, k, v)
    errs = [
        float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)) / (1 + jnp.abs(b))))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]
    rtol = tolerance(jnp.dtype(dtype), scale=8.0)["atol"]
    assert max(errs) <= rtol, f"linear_attention causal={causal} {dtype}: relative error {max(errs):.3g}"
    return {"max_rel_err": max(errs), "rtol": rtol}


def check_column_sparse_attention(
    dtype: str, length: int, implementation: str = "pallas"
) -> dict[str, float]:
    """The compiled column-sparse attention kernel against the reference (Chipmunk's 192-query groups,
    an eighth of the columns each, in tiles of 64)."""
    import jax
    import jax.numpy as jnp

    import jaxflash
    from jaxflash.testing import tolerance

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, length, 8, 64)).astype(dtype)
    k = jax.random.normal(keys[1], (1, length, 8, 64)).astype(dtype)
    v = jax.random.normal(keys[2], (1, length, 8, 64)).astype(dtype)
    groups = -(-length // 192)
    scores = jax.random.uniform(keys[3], (1, 8, groups, length))
    indices, counts = jaxflash.topk_columns(scores, length // 8, multiple_of=64)

    def run(impl):
        return jaxflash.column_sparse_attention(q, k, v, indices, counts, block_q=192, implementation=impl)

    err = float(
        jnp.max(jnp.abs(run(implementation).astype(jnp.float32) - run("reference").astype(jnp.float32)))
    )
    atol = tolerance(jnp.dtype(dtype), scale=4.0)["atol"]
    assert err <= atol, f"column_sparse_attention {dtype}: max abs error {err:.3g} > {atol:.3g}"
    return {"max_abs_err": err, "atol": atol}


GPU_CHECKS = (
    *(
        GpuCheck(
            f"linear_attention kernels causal={c} {d} n={n}",
            functools.partial(check_linear_attention, c, d, n),
        )
        for c, d, n in ((True, "float32", 1000), (False, "bfloat16", 4096), (True, "bfloat16", 4096))
    ),
    *(
        GpuCheck(
            f"column_sparse_attention kernel {d} n={n}",
            functools.partial(check_column_sparse_attention, d, n),
        )
        for d, n in (("float32", 1000), ("bfloat16", 4608))
    ),
)
