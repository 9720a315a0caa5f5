"""Block floating point quantization: the error of max-based scales against ScaleSearch, and its cost.

Each case is one sample and one format/window. Its columns give the mean squared error of
``dequantize(quantize(x))`` with the max-based scale (``mse max``) and with ScaleSearch (``mse search``),
how much lower the searched error is, and the fraction of blocks whose scale the search moved; the timed
candidates are the two quantize calls (jitted, warm). Samples (2^18 values unless ``--sizes``, seeded):

* ``normal``, ``student-t3``, ``laplace``: the reference notes' setting (NVFP4 with the tensor scale
  ``amax / (6 * 448)``; their table: 17.6% lower at a window of 1 E4M3 step, 27.2% at 8, on N(0, 1));
* ``outlier``: N(0, 1) blocks of 16 with one element in each multiplied by 20;
* ``weights``, ``activations``: a trained model's Linear kernels (blocks along the inputs; those with a
  multiple of 32 inputs, under one NVFP4 tensor scale) and the
  normalized inputs of its blocks' mixers on validation text, from the run in ``$JAXFLASH_QUANT_RUN``
  (default ``runs/demo``, written by ``make demo``); skipped, with a note, when there is none.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from jaxflash.bench.harness import Candidate, Case, GpuCheck, Suite

GPU_SIZES = None
SAMPLES = ("normal", "student-t3", "laplace", "outlier", "weights", "activations")
QUICK_SAMPLES = ("normal", "outlier")
# (format, ScaleSearch window): one E4M3 step, one binade each way; one exponent each way.
SETTINGS = (("nvfp4", 1), ("nvfp4", 8), ("mxfp4", 1))
SIZE = 1 << 18


def _run_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXFLASH_QUANT_RUN", "runs/demo"))


def sample(name: str, size: int = SIZE) -> np.ndarray | None:
    """The sample as a 2-D f32 array, quantized along its last axis; None when it is not available."""
    if name in ("weights", "activations"):
        return _trained_sample(name, _run_dir())
    return _synthetic_sample(name, size)


@functools.cache
def _synthetic_sample(name: str, size: int) -> np.ndarray:
    import jax

    key = jax.random.key(SAMPLES.index(name))
    if name == "normal":
        return np.asarray(jax.random.normal(key, (size // 256, 256)))
    if name == "student-t3":
        return np.asarray(jax.random.t(key, 3.0, (size // 256, 256)))
    if name == "laplace":
        return np.asarray(jax.random.laplace(key, (size // 256, 256)))
    if name == "outlier":
        x = np.asarray(jax.random.normal(key, (size // 16, 16))).copy()
        x[np.arange(len(x)), np.asarray(jax.random.randint(key, (len(x),), 0, 16))] *= 20
        return x.reshape(size // 256, 256)
    raise ValueError(f"unknown sample {name!r}")


@functools.cache
def _trained_sample(name: str, path: pathlib.Path) -> np.ndarray | None:
    import jax
    import jax.numpy as jnp

    from jaxflash.train.checkpoint import load_model

    if not (path / "config.json").exists():
        print(f"bench quant: no run at {path} (run make demo, or set JAXFLASH_QUANT_RUN)", file=sys.stderr)
        return None
    model = load_model(path)
    if name == "weights":
        from flax import nnx

        from jaxflash.quant.ptq import kernel_name

        kernels = []
        for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
            if kernel_name(p, v) is not None and v.shape[0] % 32 == 0:
                # Rows of 32 inputs of one output each: blocks along the inputs, as quantize_kernels has.
                kernels.append(np.asarray(v, np.float32).T.reshape(-1, 32))
        return np.concatenate(kernels)
    from jaxflash.data import make_dataset
    from jaxflash.train import config as config_lib

    config = config_lib.loads((path / "config.json").read_text())
    batch = next(make_dataset(config.data, "validation").eval_batches(8, max_batches=1))
    tokens = jnp.asarray(batch["inputs"])
    x = model.embed_tokens(tokens, jnp.arange(tokens.shape[1])[None])
    inputs = []
    for block in model.blocks:
        inputs.append(np.asarray(block.norm1(x)).reshape(-1, x.shape[-1]))
        x = block(x)
    return np.concatenate(inputs)


def _errors(name: str, fmt: str, window: int, size: int) -> dict[str, str]:
    import jax.numpy as jnp

    from jaxflash import quant

    x = jnp.asarray(sample(name, size))
    base = quant.quantize(x, fmt)
    searched = quant.quantize(x, fmt, scale_search=window)
    mse_base = float(jnp.mean((quant.dequantize(base) - x) ** 2))
    mse_search = float(jnp.mean((quant.dequantize(searched) - x) ** 2))
    moved = float(jnp.mean(base.scales != searched.scales))
    return {
        "values": str(x.size),
        "mse max": f"{mse_base:.4g}",
        "mse search": f"{mse_search:.4g}",
        "lower by": f"{100 * (1 - mse_search / mse_base):.1f}%",
        "blocks moved": f"{100 * moved:.0f}%",
    }


def quantize_thunk(name: str, fmt: str, window: int, size: int = SIZE):
    import jax
    import jax.numpy as jnp

    from jaxflash import quant

    def setup():
        x = jnp.asarray(sample(name, size))
        jax.block_until_ready(quant.quantize(x, fmt, scale_search=window).codes)
        return lambda: quant.quantize(x, fmt, scale_search=window).codes

    return setup


def _cases(sizes: Sequence[int] | None, quick: bool) -> list[Case]:
    cases = []
    size = sizes[0] if sizes else SIZE  # the synthetic samples' size; a multiple of 256
    for name in QUICK_SAMPLES if quick else SAMPLES:
        if sample(name, size) is None:
            continue
        for fmt, window in SETTINGS:
            config = {"sample": name, "format": fmt, "window": window, **_errors(name, fmt, window, size)}
            cases.append(
                Case(
                    config=config,
                    candidates=(
                        Candidate("max-scale quantize", quantize_thunk(name, fmt, 0, size)),
                        Candidate("ScaleSearch quantize", quantize_thunk(name, fmt, window, size)),
                    ),
                    baseline="max-scale quantize",
                )
            )
    return cases


SUITE = Suite(
    name="quant",
    description="MXFP4 / NVFP4 quantization error, max-based scales vs ScaleSearch, and the time of each",
    cases=_cases,
)


def check_quantized_matmul(
    fmt: str, m: int, k: int, n: int, dtype: str, implementation: str = "pallas"
) -> dict[str, float]:
    """The compiled W4 kernel (``quantized_matmul(implementation="pallas")``) against the dequantize-then-
    dot reference on unit-scale inputs; returns the error, raises AssertionError past the tolerance."""
    import jax
    import jax.numpy as jnp

    from jaxflash import quant
    from jaxflash.testing import tolerance

    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (m, k)).astype(dtype)
    w = quant.quantize(jax.random.normal(keys[1], (k, n)) * k**-0.5, fmt, axis=0)
    got = quant.quantized_matmul(x, w, implementation=implementation).astype(jnp.float32)
    want = quant.quantized_matmul(x, w, implementation="reference").astype(jnp.float32)
    err = float(jnp.max(jnp.abs(got - want)))
    atol = tolerance(jnp.dtype(dtype), scale=4.0)["atol"]
    assert err <= atol, f"quantized_matmul {fmt} {dtype}: max abs error {err:.3g} > {atol:.3g}"
    return {"max_abs_err": err, "atol": atol}


GPU_CHECKS = tuple(
    GpuCheck(
        f"quantized_matmul W4 kernel {fmt} {dtype} {m}x{k}x{n}",
        functools.partial(check_quantized_matmul, fmt, m, k, n, dtype),
    )
    for fmt in ("int4", "mxfp4", "nvfp4")
    for m, k, n, dtype in ((16, 1024, 1024, "float32"), (256, 4096, 4096, "bfloat16"))
)
