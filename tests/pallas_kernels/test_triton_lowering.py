"""The compiled GPU path of every Pallas kernel, up to Triton IR, on a machine without a GPU.

Exporting a jitted call for platform ``"cuda"`` runs each ``pallas_call``'s Triton lowering (Pallas to
the Triton MLIR dialect) in Python. Only the Triton compile to PTX needs the GPU. So this catches a
kernel that uses an operation or a block shape the Triton backend cannot lower, before a GPU session
spends its minutes on it. It cannot catch compile time, register spills or wrong numbers; `make
gpu-check` does that on the GPU.

Two hooks of the pinned jax 0.11.2 (constraints.txt) are patched for the duration of each test:

- the Triton lowering asks the local device for its compute capability, here an H100/H200's (9.0);
- the dispatcher and the compiler-parameter choice ask :func:`jaxflash.utils.current_platform`, here
  ``"gpu"``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import export
from jax._src.pallas.triton import gpu_info, pallas_call_registration

import jaxflash
from jaxflash import utils
from jaxflash.ops.fftconv import FFTConvConfig
from jaxflash.ops.monarch import MonarchConfig

TRITON_CALL = "__gpu$xla.gpu.triton"
# jax 0.11.2 warns on every Triton lowering that Pallas's Triton backend is deprecated in favour of Mosaic
# GPU; the README's known issues say what that means for these kernels.
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")


@pytest.fixture
def as_gpu(monkeypatch):
    hopper = gpu_info.GpuInfo(gpu_version=None, arch_name="9.0", compute_capability=90)
    monkeypatch.setattr(pallas_call_registration.gpu_info_lib, "get_gpu_info", lambda: hopper)
    monkeypatch.setattr(utils, "current_platform", lambda: "gpu")


def cuda_module(fn, *avals) -> str:
    """The StableHLO module of ``fn`` exported for CUDA, its Triton calls included."""
    exported = export.export(
        jax.jit(fn),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)],
    )(*avals)
    return exported.mlir_module()


def triton_calls(fn, *avals) -> int:
    """Exports ``fn`` for CUDA and returns how many Triton kernels its module calls."""
    return cuda_module(fn, *avals).count(f"@{TRITON_CALL}(")


def with_grads(fn, argnums):
    """``fn``'s output and its gradients with respect to ``argnums`` (a sum of the output as the loss)."""

    def both(*args):
        loss = lambda *a: fn(*a).astype(jnp.float32).sum()  # noqa: E731
        return fn(*args), jax.grad(loss, argnums=argnums)(*args)

    return both


def spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize(
    "seq,dtype,keep,kernels",
    [
        (1000, jnp.float32, None, 3),  # order 2: forward, dx, dk (+ the residual forward for the gate)
        (2048, jnp.bfloat16, None, 3),  # order 3, 4 rows
        (3000, jnp.float32, 300, 3),  # order 3, frequency-sparse
        (40000, jnp.float32, None, 3),  # order 4, 128 rows as 16 x 8
    ],
)
def test_fftconv_kernels_lower_to_triton(as_gpu, seq, dtype, keep, kernels):
    def conv(u, k, post):
        return jaxflash.fftconv(
            u, k, post_gate=post, keep_frequencies=keep, causal=keep is None, implementation="pallas"
        )

    u, post = spec((2, seq, 16), dtype), spec((2, seq, 16), dtype)
    k = spec((seq if keep is None else 8192, 16), dtype)
    assert triton_calls(with_grads(conv, (0, 1, 2)), u, k, post) >= kernels


@pytest.mark.parametrize("dtype,causal", [(jnp.bfloat16, True), (jnp.float32, False)])
def test_attention_kernels_lower_to_triton(as_gpu, dtype, causal):
    def attend(q, k, v):
        return jaxflash.attention(q, k, v, causal=causal, implementation="pallas")

    q, kv = spec((2, 512, 4, 64), dtype), spec((2, 512, 2, 64), dtype)
    assert triton_calls(with_grads(attend, (0, 1, 2)), q, kv, kv) >= 2  # forward, backward


def test_monarch_kernel_lowers_to_triton(as_gpu):
    def monarch(x, w1, w2):
        return jaxflash.monarch_matmul(x, w1, w2, implementation="pallas")

    x, w = spec((256, 1024)), spec((32, 32, 32))
    assert triton_calls(with_grads(monarch, (0, 1, 2)), x, w, w) >= 2


@pytest.mark.parametrize("fmt", ["int4", "mxfp4", "nvfp4"])
def test_quantized_matmul_kernel_lowers_to_triton(as_gpu, fmt):
    from jaxflash import quant

    w = quant.quantize(jax.random.normal(jax.random.key(0), (256, 128)), fmt, axis=0)

    def matmul(x, codes, scales):
        q = dataclasses.replace(w, codes=codes, scales=scales)
        return quant.quantized_matmul(x, q, implementation="pallas")

    assert triton_calls(matmul, spec((32, 256)), w.codes, w.scales) == 1


@pytest.mark.parametrize("block_rows,programs", [(4, 2), (2, 4)])  # 8 batch rows in blocks of block_rows
def test_fftconv_config_reaches_the_compiled_kernel(as_gpu, block_rows, programs):
    config = FFTConvConfig(block_rows=block_rows)

    def conv(u, k):
        return jaxflash.fftconv(u, k, implementation="pallas", config=config)

    module = cuda_module(conv, spec((8, 1000, 16)), spec((1000, 16)))
    assert f"grid_x = 16 : i32, grid_y = {programs} : i32" in module  # (channels, batch blocks)


@pytest.mark.parametrize("block_rows,programs", [(16, 16), (32, 8)])  # 256 rows in blocks of block_rows
def test_monarch_config_reaches_the_compiled_kernel(as_gpu, block_rows, programs):
    config = MonarchConfig(block_rows=block_rows)

    def monarch(x, w1, w2):
        return jaxflash.monarch_matmul(x, w1, w2, implementation="pallas", config=config)

    module = cuda_module(monarch, spec((256, 1024)), spec((32, 32, 32)), spec((32, 32, 32)))
    assert f"grid_x = {programs} : i32, grid_y = 32 : i32" in module  # (row blocks, output blocks)


@pytest.mark.parametrize("dtype,q_len,head_dim", [(jnp.bfloat16, 1000, 128), (jnp.float32, 539, 80)])
def test_column_sparse_attention_kernel_lowers_to_triton(as_gpu, dtype, q_len, head_dim):
    # Chipmunk's 192-query groups (padded to 256-row tiles), 100 columns a group in tiles of 64.
    groups = -(-q_len // 192)

    def csp(q, k, v, indices, counts):
        return jaxflash.column_sparse_attention(
            q, k, v, indices, counts, block_q=192, implementation="pallas"
        )

    def forward_and_grads(q, k, v, indices, counts):
        loss = lambda q, k, v: csp(q, k, v, indices, counts).astype(jnp.float32).sum()  # noqa: E731
        return csp(q, k, v, indices, counts), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    q, kv = spec((2, q_len, 4, head_dim), dtype), spec((2, q_len, 2, head_dim), dtype)
    indices, counts = spec((2, 4, groups, 100), jnp.int32), spec((2, 4, groups), jnp.int32)
    # The forward kernel only: the backward is the XLA path's VJP.
    assert triton_calls(forward_and_grads, q, kv, kv, indices, counts) == 1


@pytest.mark.parametrize(
    "dtype,causal,normalize,q_len,kv_len,key_dim,value_dim",
    [
        (jnp.bfloat16, True, True, 1000, 1000, 64, 64),
        (jnp.float32, False, True, 539, 700, 80, 48),
        (jnp.float32, True, False, 100, 100, 24, 24),  # no denominator: the kernels' other variant
    ],
)
def test_linear_attention_kernels_lower_to_triton(
    as_gpu, dtype, causal, normalize, q_len, kv_len, key_dim, value_dim
):
    # Lengths padded to whole 64-row chunks; head dims 80, 48 and 24 padded to 128, 64 and 32.
    def attend(q, k, v):
        return jaxflash.linear_attention(q, k, v, causal=causal, normalize=normalize, implementation="pallas")

    def forward_and_grads(q, k, v):
        out, vjp = jax.vjp(attend, q, k, v)  # one forward: the one that saves the residuals
        return out, vjp(jnp.ones_like(out))

    q = spec((2, q_len, 4, key_dim), dtype)
    k, v = spec((2, kv_len, 4, key_dim), dtype), spec((2, kv_len, 4, value_dim), dtype)
    assert triton_calls(forward_and_grads, q, k, v) == 2  # forward, backward
