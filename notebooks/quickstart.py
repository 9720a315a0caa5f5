# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # jaxflash quickstart
#
# Every public op in jaxflash takes `implementation=`: `"pallas"` (the compiled kernel, GPU/TPU),
# `"pallas_interpret"` (the same kernel interpreted, for tests), `"xla"` (the fast pure-XLA path, the
# default on CPU), `"reference"` (the naive form), a sequence of these tried in order, or `None` for the
# best one this device supports. This notebook runs on CPU in CI at small sizes.

# %%
import jax

import jaxflash

print(jax.devices())
print("registered:", jaxflash.registered())
print("runnable here:", jaxflash.supported())

# %% [markdown]
# ## Registering an implementation
#
# Ops are functions that call `jaxflash.ops.dispatch`. An implementation that cannot serve a call
# raises `NotImplementedError`, and the dispatcher tries the next one.

# %%
import jax.numpy as jnp

from jaxflash.ops import dispatch, register, unregister


@register("demo_square", "xla")
def _square_xla(x):
    if x.ndim != 1:
        raise NotImplementedError("the xla path here handles vectors only")
    return x * x


@register("demo_square", "reference")
def _square_reference(x):
    return x**2


print(dispatch("demo_square", None, jnp.arange(4.0)))  # served by "xla"
print(dispatch("demo_square", None, jnp.ones((2, 2))))  # "xla" refuses, "reference" serves
try:
    dispatch("demo_square", "xla", jnp.ones((2, 2)))  # asked for by name: the refusal is raised
except NotImplementedError as e:
    print("NotImplementedError:", e)
unregister("demo_square")

# %% [markdown]
# ## Measuring against peers
#
# `python -m jaxflash.bench SUITE` times jaxflash and its peers in one run. The same harness is
# callable from Python:

# %%
from jaxflash.bench.harness import markdown_table, run_suite
from jaxflash.bench.suites import get_suite

print(
    markdown_table(run_suite(get_suite("matmul"), sizes=[256], repeats=3, memory=False, log=lambda s: None))
)
