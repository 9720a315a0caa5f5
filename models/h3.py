"""H3, "Hungry Hungry Hippos" (Fu, Dao et al. 2023, arXiv:2212.14052), following safari
``src/models/sequence/h3.py`` and its kernels ``ss_kernel_shift.py`` / ``ss_kernel_diag.py``.

Layer (head_dim d_h; H = d / d_h heads)::

    q, k, v = W_q u, W_k u, W_v u
    k_bar = K_shift * k + D_k . k                        shift SSM: a learnable causal FIR of length N
    kv[h, i, j] = k_bar[h, i] v[h, j]                    outer product per head (d_h = 1: elementwise)
    s = K_diag[h] * kv + D[h] . kv                       diagonal SSM, one kernel per head
    y[h, j] = sum_i q[h, i] s[h, i, j]                   mul_sum
    out = W_o y                                          y flattened as (j, h): feature j H + h (safari)

Shift SSM kernel ``K_shift[c, i] = sum_n B[c, n] C[c, n + i]`` (i < N), B initialised to e_1, so
``K_shift = C[:, :N]`` at init. Recurrence: ``x_t = shift(x_{t-1}) + B u_t``, ``y_t = C . x_t``.

Diagonal SSM (S4D-Lin, Gu et al. 2022): N/2 modes ``A_n = -exp(inv_A_real) + i A_imag`` initialised to
``-1/2 + i pi n``; ``C ~ CN(0, 1)``; ``B = 1``, a trainable SSM parameter of its own as in safari
(``H3Config.diag_B``; False folds it into C); ``log dt ~ U[log dt_min, log dt_max]``.
Bilinear discretisation (safari's default)::

    dA = (1 + dt A / 2) / (1 - dt A / 2),   dB = dt / (1 - dt A / 2)
    K_diag[l] = 2 Re sum_n C_n dB_n dA_n^l                (Vandermonde form; conjugate pairs implicit)

Recurrence: ``s_t = dA s_{t-1} + u_t`` (complex, per mode), ``y_t = 2 Re sum_n C_n dB_n s_t[n]``.
ZOH (``dA = exp(dt A)``, ``dB = (exp(dt A) - 1) / A``) is the option. Kernels are computed in f32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxflash.models.config import S4D_INITS, H3Config, S4DConfig
from jaxtyping import Array, Complex, Float

import jaxflash

State = dict[str, Any]


class SSMParam(nnx.Param):
    """A state-space / long-convolution kernel parameter, a kind of its own: the papers train these with
    their own learning rate (min(1e-3, lr)) and no weight decay (``jaxflash.train.optim``)."""


class ShiftSSMKernel(nnx.Module):
    """Per-channel shift SSM: ``K[c, i] = sum_n B[c, n] C[c, n + i]`` for i < N."""

    def __init__(self, channels: int, d_state: int, *, rngs: nnx.Rngs):
        self.d_state = d_state
        self.B = SSMParam(jnp.zeros((channels, d_state), jnp.float32).at[:, 0].set(1.0))
        # safari draws C with torch's kaiming_uniform_(a=sqrt(5)) on shape (channels, 1, N) before moving
        # the channel axis: fan_in = 1 * N, so C ~ U(+-1/sqrt(N)) (Conv1d's init), per channel.
        bound = 1.0 / math.sqrt(d_state)
        self.C = nnx.Param(jax.random.uniform(rngs.params(), (channels, d_state), jnp.float32, -bound, bound))

    def kernel(self, length: int) -> Float[Array, "l c"]:
        """``K_shift[:length]`` as ``[length, channels]``; zero beyond N."""
        n = self.d_state
        idx = jnp.arange(n)[:, None] + jnp.arange(n)[None, :]  # [n (state), i (lag)] -> n + i
        c_pad = jnp.pad(self.C[...], ((0, 0), (0, n)))
        k = jnp.einsum("cn,cni->ic", self.B[...], c_pad[:, idx])  # [N, channels]
        if length <= n:
            return k[:length]
        return jnp.pad(k, ((0, length - n), (0, 0)))

    def init_state(self, batch: int) -> Float[Array, "b c n"]:
        return jnp.zeros((batch, self.B.shape[0], self.d_state), jnp.float32)

    def step(
        self, u: Float[Array, "b c"], x: Float[Array, "b c n"]
    ) -> tuple[Float[Array, "b c"], Float[Array, "b c n"]]:
        x = jnp.pad(x, ((0, 0), (0, 0), (1, 0)))[..., :-1] + self.B[...] * u[..., None].astype(jnp.float32)
        return jnp.sum(self.C[...] * x, axis=-1), x


class DiagSSMKernel(nnx.Module):
    """Diagonal SSM kernel (S4D-Lin or S4D-Inv init), one per channel (head), N/2 complex modes,
    bilinear or ZOH."""

    def __init__(
        self,
        channels: int,
        d_state: int,
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        discretization: str = "bilinear",
        trainable_B: bool = True,
        init: str = "lin",
        rngs: nnx.Rngs,
    ):
        if discretization not in ("bilinear", "zoh"):
            raise ValueError(f"discretization={discretization!r}; choose 'bilinear' or 'zoh'")
        if init not in S4D_INITS:
            raise ValueError(f"init={init!r}; choose one of {S4D_INITS}")
        self.discretization = discretization
        self.trainable_B = trainable_B
        modes = d_state // 2
        self.log_dt = SSMParam(
            jax.random.uniform(rngs.params(), (channels,), jnp.float32, math.log(dt_min), math.log(dt_max))
        )
        self.inv_A_real = SSMParam(jnp.full((channels, modes), math.log(0.5), jnp.float32))
        n = jnp.arange(modes, dtype=jnp.float32)
        # S4D-Lin: Im A_n = pi n. S4D-Inv: Im A_n = (N / pi) (N / (1 + 2 n) - 1), N = d_state.
        imag = math.pi * n if init == "lin" else d_state / math.pi * (d_state / (1 + 2 * n) - 1)
        self.A_imag = SSMParam(jnp.broadcast_to(imag, (channels, modes)))
        # C ~ CN(0, 1): real and imaginary parts each N(0, 1/2). Stored as [..., 2] real pairs.
        C = jax.random.normal(rngs.params(), (channels, modes, 2), jnp.float32) * math.sqrt(0.5)
        if init == "inv":
            # safari's random_dplr: B ~ CN(0, 1) per mode (one draw shared by the channels), scaled so a
            # random C gives unit kernel variance, and folded into C.
            A = -0.5 + 1j * imag
            b = jax.random.normal(rngs.params(), (modes, 2), jnp.float32) * math.sqrt(0.5)
            b = b[:, 0] + 1j * b[:, 1]
            b = b / jnp.sqrt(2 * jnp.sum(jnp.abs(-b / A) ** 2))
            Cc = (C[..., 0] + 1j * C[..., 1]) * b
            C = jnp.stack([Cc.real, Cc.imag], axis=-1)
        self.C = nnx.Param(C)
        if trainable_B:
            # safari keeps B (initialised to 1) as its own SSM parameter and uses C * B.
            self.B = SSMParam(jnp.zeros((channels, modes, 2), jnp.float32).at[..., 0].set(1.0))

    def discrete(self) -> tuple[Complex[Array, "c n"], Complex[Array, "c n"]]:
        """``(dA, C dB)``: the discrete poles and the output weights of each mode."""
        dt = jnp.exp(self.log_dt[...])[:, None]
        A = -jnp.exp(self.inv_A_real[...]) + 1j * self.A_imag[...]
        C = self.C[..., 0] + 1j * self.C[..., 1]
        if self.trainable_B:
            C = C * (self.B[..., 0] + 1j * self.B[..., 1])
        dtA = dt * A
        if self.discretization == "bilinear":
            dA = (1 + dtA / 2) / (1 - dtA / 2)
            dB = dt / (1 - dtA / 2)
        else:
            dA = jnp.exp(dtA)
            dB = (dA - 1) / A
        return dA, C * dB

    def kernel(self, length: int) -> Float[Array, "l c"]:
        """``K[l, c] = 2 Re sum_n (C dB)[c, n] dA[c, n]^l`` for l < length, f32."""
        dA, cdb = self.discrete()
        # The Vandermonde product in blocks: with l = b B + j, dA^l = dA^(b B) dA^j, so
        #   K[b B + j, c] = 2 Re sum_n (C dB dA^(b B))[c, n, b] dA^j[c, n, j],
        # one [nb, n] x [n, B] complex matmul per channel. With B ~ sqrt(L) it holds c n (nb + B) powers
        # instead of the c n L of the plain form (64x less at L = 16K) and takes exponentials of only those.
        # Every power is exp(l log dA) of one exact exponent; |dA| < 1 keeps them bounded.
        block = 1 << (math.isqrt(max(length, 1)).bit_length() - 1)  # largest power of two <= sqrt(length)
        nb = -(-length // block)
        log_da = jnp.log(dA)[..., None]  # [c, n, 1]
        within = jnp.exp(log_da * jnp.arange(block, dtype=jnp.float32))  # [c, n, B]
        starts = jnp.exp(log_da * (block * jnp.arange(nb, dtype=jnp.float32)))  # [c, n, nb]
        k = 2 * jnp.einsum("cnb,cnj->bjc", cdb[..., None] * starts, within).real  # [nb, B, c]
        return k.reshape(nb * block, -1)[:length].astype(jnp.float32)


class H3(nnx.Module):
    """The H3 mixer (see the module docstring), ``[b, l, d] -> [b, l, d]``."""

    def __init__(
        self,
        d_model: int,
        config: H3Config,
        *,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        fft_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        if d_model % config.head_dim:
            raise ValueError(f"h3 head_dim={config.head_dim} must divide d_model={d_model}")
        self.d_model = d_model
        self.head_dim = config.head_dim
        self.num_heads = d_model // config.head_dim
        self.dtype = dtype
        self.implementation = implementation
        self.fft_size = fft_size
        kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.q_proj = nnx.Linear(d_model, d_model, **kw)
        self.k_proj = nnx.Linear(d_model, d_model, **kw)
        self.v_proj = nnx.Linear(d_model, d_model, **kw)
        self.out_proj = nnx.Linear(d_model, d_model, **kw)
        self.shift_kernel = ShiftSSMKernel(d_model, config.d_state, rngs=rngs)
        self.D_k = nnx.Param(jax.random.normal(rngs.params(), (d_model,), jnp.float32))
        self.diag_kernel = DiagSSMKernel(
            self.num_heads,
            config.d_state,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            discretization=config.discretization,
            trainable_B=config.diag_B,
            rngs=rngs,
        )
        self.D = nnx.Param(jax.random.normal(rngs.params(), (self.num_heads,), jnp.float32))

    def _conv(self, u, k, skip, **gates):
        return jaxflash.fftconv(
            u,
            k.astype(u.dtype),
            skip=skip.astype(u.dtype),
            fft_size=self.fft_size,
            implementation=self.implementation,
            **gates,
        )

    def _per_channel(self, x: jax.Array) -> jax.Array:
        """A per-head quantity ``[..., H]`` repeated over the head's d_h x d_h kv channels (h, i, j)."""
        return jnp.repeat(x, self.head_dim**2, axis=-1)

    def __call__(self, u: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        return self._forward(u)[0]

    def _forward(self, u: Float[Array, "b l d"], *, keep_inputs: bool = False):
        """The output and (``keep_inputs``) the two SSMs' inputs, k and the kv channels (h, i, j)."""
        b, length, d = u.shape
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)
        k_shift = self.shift_kernel.kernel(min(length, self.shift_kernel.d_state))
        k_bar = self._conv(k, k_shift, self.D_k[...])
        k_diag = self.diag_kernel.kernel(length)
        kv = None
        if self.head_dim == 1:
            # q . (K_diag * (k_bar . v) + D . (k_bar . v)) in one gated convolution.
            y = self._conv(v, k_diag, self.D[...], pre_gate=k_bar, post_gate=q)
            if keep_inputs:
                kv = k_bar * v
        else:
            H, dh = self.num_heads, self.head_dim
            kv = k_bar.reshape(b, length, H, dh, 1) * v.reshape(b, length, H, 1, dh)
            s = self._conv(
                kv.reshape(b, length, H * dh * dh), self._per_channel(k_diag), self._per_channel(self.D[...])
            )
            # safari flattens the heads' outputs as (d_h, H): feature j * H + h.
            y = jnp.einsum("blhi,blhij->bljh", q.reshape(b, length, H, dh), s.reshape(b, length, H, dh, dh))
            y = y.reshape(b, length, d)
            kv = kv.reshape(b, length, -1)
        return self.out_proj(y), k, kv

    def prefill(
        self, u: Float[Array, "b l d"], max_len: int | None = None
    ) -> tuple[Float[Array, "b l d"], State]:
        """The parallel forward over a prompt and both SSM states after it, computed from the prompt in
        closed form (not by stepping): the shift state ``x[n] = sum_{j <= n} B[n - j] k_{l-1-j}`` and the
        diagonal state ``s[n] = sum_t dA_n^(l-1-t) kv_t``."""
        del max_len  # the recurrent state does not grow with the sequence
        y, k, kv = self._forward(u, keep_inputs=True)
        length, n = u.shape[1], self.shift_kernel.d_state
        # The last n inputs, newest first (zeros before t = 0): recent[:, j] = k_{l-1-j}.
        recent = jnp.pad(k.astype(jnp.float32), ((0, 0), (max(n - length, 0), 0), (0, 0)))[:, ::-1][:, :n]
        lag = jnp.arange(n)[:, None] - jnp.arange(n)[None, :]  # [n, j] -> n - j
        B = self.shift_kernel.B[...]  # [c, n]
        toeplitz = jnp.where(lag >= 0, B[:, jnp.clip(lag, 0, n - 1)], 0.0)  # [c, n, j]
        shift = jnp.einsum("cnj,bjc->bcn", toeplitz, recent)
        dA, _ = self.diag_kernel.discrete()  # [H, modes]
        powers = jnp.exp(jnp.log(dA)[..., None] * jnp.arange(length - 1, -1, -1, dtype=jnp.float32))
        kv = kv.astype(jnp.float32).reshape(u.shape[0], length, self.num_heads, self.head_dim**2)
        diag = jnp.einsum("blhk,hnl->bhkn", kv.astype(jnp.complex64), powers)
        diag = diag.reshape(u.shape[0], -1, dA.shape[1])
        return y, dict(shift=shift, diag=diag)

    def init_state(self, batch: int, max_len: int | None = None) -> State:
        del max_len  # the recurrent state does not grow with the sequence
        channels = self.num_heads * self.head_dim**2
        diag = jnp.zeros((batch, channels, self.diag_kernel.inv_A_real.shape[1]), jnp.complex64)
        return dict(shift=self.shift_kernel.init_state(batch), diag=diag)

    def step(self, u: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        b, d = u.shape
        q, k, v = self.q_proj(u), self.k_proj(u), self.v_proj(u)
        k_conv, shift = self.shift_kernel.step(k, state["shift"])
        k_bar = k_conv + self.D_k[...] * k.astype(jnp.float32)
        H, dh = self.num_heads, self.head_dim
        kv = (k_bar.reshape(b, H, dh, 1) * v.astype(jnp.float32).reshape(b, H, 1, dh)).reshape(b, -1)
        dA, cdb = self.diag_kernel.discrete()
        dA, cdb = self._per_channel(dA.T).T, self._per_channel(cdb.T).T  # per kv channel (h, i, j)
        diag = dA * state["diag"] + kv[..., None]
        s = 2 * jnp.sum(cdb * diag, axis=-1).real + self._per_channel(self.D[...]) * kv
        y = jnp.einsum("bhi,bhij->bjh", q.astype(jnp.float32).reshape(b, H, dh), s.reshape(b, H, dh, dh))
        return self.out_proj(y.reshape(b, d).astype(self.dtype)), dict(shift=shift, diag=diag)


class S4D(nnx.Module):
    """The S4D layer (Gu et al. 2022), safari ``src/models/sequence/ssm/s4d.py``: the baseline of the
    H3 paper's synthetic table. ``[b, l, d] -> [b, l, d]``::

        y = W_o GELU(K * u + D . u)          K: one diagonal SSM kernel per channel (S4D-Inv, ZOH)

    safari's layer defaults: S4D-Inv init with a random B folded into C, ZOH discretisation, one
    kernel channel, no dropout, no activation after the output Linear. Recurrent ``step``: the same
    diagonal state recurrence as H3's second SSM.
    """

    def __init__(
        self,
        d_model: int,
        config: S4DConfig,
        *,
        dtype: Any = jnp.float32,
        implementation: str | None = None,
        fft_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.implementation = implementation
        self.fft_size = fft_size
        self.kernel = DiagSSMKernel(
            d_model,
            config.d_state,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            discretization=config.discretization,
            trainable_B=False,
            init=config.init,
            rngs=rngs,
        )
        self.D = nnx.Param(jax.random.normal(rngs.params(), (d_model,), jnp.float32))
        self.out_proj = nnx.Linear(d_model, d_model, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, u: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        k = self.kernel.kernel(u.shape[1]).astype(u.dtype)
        y = jaxflash.fftconv(
            u,
            k,
            skip=self.D[...].astype(u.dtype),
            fft_size=self.fft_size,
            implementation=self.implementation,
        )
        return self.out_proj(jax.nn.gelu(y, approximate=False))

    def prefill(
        self, u: Float[Array, "b l d"], max_len: int | None = None
    ) -> tuple[Float[Array, "b l d"], State]:
        """The parallel forward over a prompt and the state after it, ``s[n] = sum_t dA_n^(l-1-t) u_t``."""
        del max_len  # the recurrent state does not grow with the sequence
        dA, _ = self.kernel.discrete()
        powers = jnp.exp(jnp.log(dA)[..., None] * jnp.arange(u.shape[1] - 1, -1, -1, dtype=jnp.float32))
        ssm = jnp.einsum("bld,dnl->bdn", u.astype(jnp.complex64), powers)
        return self(u), dict(ssm=ssm)

    def init_state(self, batch: int, max_len: int | None = None) -> State:
        del max_len  # the recurrent state does not grow with the sequence
        return dict(ssm=jnp.zeros((batch, *self.kernel.inv_A_real.shape), jnp.complex64))

    def step(self, u: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        dA, cdb = self.kernel.discrete()
        ssm = dA * state["ssm"] + u.astype(jnp.float32)[..., None]
        y = 2 * jnp.sum(cdb * ssm, axis=-1).real + self.D[...] * u.astype(jnp.float32)
        return self.out_proj(jax.nn.gelu(y, approximate=False).astype(self.dtype)), dict(ssm=ssm)
