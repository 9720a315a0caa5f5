"""Laughing Hyena distillation (Massaroli et al. 2023, arXiv:2310.18780): each long convolution filter
of a trained Hyena becomes a modal state-space model of order d, which decodes in O(d) per token and
channel with constant memory.

Model class (per filter channel; ``shared/reference/models.md`` section 4)::

    h_hat[0] = h0,    h_hat[t] = Re sum_{n < d} R_n lambda_n^(t-1)    (t >= 1, |lambda_n| < 1)

Fit (:func:`fit_modal`): a Prony-type initialisation (linear prediction of order 2d on the filter, its
roots as poles, the residues by least squares), then Adam (optax) on the squared error in the frequency
domain: the DFT of ``h_hat`` in closed form, ``h0 + (C_k + conj(C_{-k})) / 2`` with
``C_k = sum_n R_n w^k (1 - (lambda_n w^k)^(L-1)) / (1 - lambda_n w^k)``, ``w = exp(-2 pi i / L)``
(by Parseval the same as the time-domain error). Poles are ``sigmoid(a) exp(i theta)``, inside the unit
circle by construction. The report gives each filter's relative l2 error and the Hankel singular values
of the filter, whose decay bounds what order d can reach (AAK: sigma_{2d+1} is the best Hankel-norm
error of a real order-2d system).

Decoding (:class:`ModalHyena`, a drop-in mixer for ``generate``): the convolution ``y_t = sum_s h[t-s]
g_s`` becomes ``y_t = h0 g_t + Re sum_n R_n x_{t-1}[n]`` with the state ``x_t = lambda . x_{t-1} + g_t``;
prefill computes ``x_{l-1}[n] = sum_s lambda_n^(l-1-s) g_s`` from the prompt in one contraction.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModalFit:
    """A fitted modal filter bank of ``C`` channels and order ``d``: ``poles``, ``residues`` ``[C, d]``
    (complex), ``h0 [C]``, ``rel_error [C]`` (``||h - h_hat|| / ||h||`` over the fitted length)."""

    poles: np.ndarray
    residues: np.ndarray
    h0: np.ndarray
    rel_error: np.ndarray

    @property
    def order(self) -> int:
        return self.poles.shape[1]


def modal_kernel(poles, residues, h0, length: int) -> Float[Array, "l c"]:
    """``h_hat[t]`` for t < ``length`` as ``[length, C]`` (module docstring), float32."""
    t = jnp.arange(max(length - 1, 0), dtype=jnp.float32)
    powers = jnp.exp(jnp.log(poles)[..., None] * t)  # [C, d, L-1]
    tail = jnp.einsum("cd,cdl->lc", residues, powers).real
    return jnp.concatenate([jnp.asarray(h0, jnp.float32)[None], tail.astype(jnp.float32)], axis=0)[:length]


HANKEL_SIZE = 256  # the default Hankel matrix size: the leading singular values are what bound the fit


def hankel_singular_values(h: np.ndarray, size: int | None = None) -> np.ndarray:
    """Singular values of each channel's Hankel matrix ``H_ij = h[i + j + 1]`` (``size x size``, default
    ``min((L - 1) // 2, HANKEL_SIZE)``), ``[C, size]``, largest first."""
    h = np.asarray(h, np.float64)
    size = size or min((h.shape[0] - 1) // 2, HANKEL_SIZE)
    idx = np.arange(size)[:, None] + np.arange(size)[None, :] + 1
    return np.stack([np.linalg.svd(h[idx, c], compute_uv=False) for c in range(h.shape[1])])


def _prony(h: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Poles and residues of one real filter tail ``h[1:]`` by linear prediction of order 2d."""
    tail = h[1:]
    p = min(2 * order, len(tail) // 2)
    rows = np.stack([tail[i : i + p][::-1] for i in range(len(tail) - p)])
    coeffs, *_ = np.linalg.lstsq(rows, tail[p:], rcond=None)
    roots = np.roots(np.concatenate([[1.0], -coeffs])) if p else np.zeros(0)
    roots = roots[roots.imag >= -1e-12]  # one of each conjugate pair (Re() adds the other)
    roots = roots[np.argsort(-np.abs(roots))][:order]
    radius = np.abs(roots)
    roots = np.where(radius > 0.999, roots / np.maximum(radius, 1e-12) * 0.999, roots)
    roots = np.concatenate([roots, 0.5 * np.exp(1j * np.linspace(0.1, 3.0, order - len(roots)))])
    t = np.arange(len(tail))
    vander = roots[None, :] ** t[:, None]  # [L-1, d]
    # Re(V R) = Re(V) Re(R) - Im(V) Im(R): a real least-squares problem in (Re R, Im R).
    a = np.concatenate([vander.real, -vander.imag], axis=1)
    sol, *_ = np.linalg.lstsq(a, tail, rcond=None)
    return roots, sol[:order] + 1j * sol[order:]


def _spectrum(params, length: int) -> jax.Array:
    """The length-L DFT of ``h_hat`` in closed form (module docstring), ``[C, L]``."""
    poles = jax.nn.sigmoid(params["a"]) * jnp.exp(1j * params["theta"])  # [C, d]
    residues = params["re"] + 1j * params["im"]
    k = jnp.arange(length)

    def geometric(sign):
        w = jnp.exp(sign * -2j * jnp.pi * k / length)[None, None]  # [1, 1, L]
        z = poles[..., None] * w
        return jnp.sum(residues[..., None] * w * (1 - z ** (length - 1)) / (1 - z), axis=1)  # [C, L]

    c_pos, c_neg = geometric(1.0), geometric(-1.0)
    return params["h0"][:, None] + (c_pos + jnp.conj(c_neg)) / 2


@jax.jit
def _relative_errors(params, target, norms) -> jax.Array:
    """Each channel's squared error relative to its energy, from the spectra (Parseval)."""
    length = target.shape[1]
    return jnp.sum(jnp.abs(_spectrum(params, length) - target) ** 2, axis=1) / length / norms


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _refine(params, target, norms, *, steps: int, lr: float):
    """``steps`` Adam steps on the summed relative errors (one compilation per shape and setting)."""
    tx = optax.adam(lr)

    def step(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(_relative_errors(p, target, norms)))(params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


def fit_modal(h: Float[Array, "l c"], order: int, *, steps: int = 300, lr: float = 1e-2) -> ModalFit:
    """Fit every channel of the filter bank ``h [L, C]`` with a modal filter of ``order`` complex modes
    (module docstring). ``steps`` Adam steps (0: the Prony initialisation alone); the better of the
    initialisation and the refinement is kept per channel."""
    if not (isinstance(order, int) and order >= 1):
        raise ValueError(f"order must be an int >= 1; got {order!r}")
    h = np.asarray(h, np.float64)
    if h.ndim != 2 or h.shape[0] < 4 * order + 2:
        raise ValueError(f"h must be [length, channels] with length >= 4 * order + 2; got {h.shape}")
    length, channels = h.shape
    inits = [_prony(h[:, c], order) for c in range(channels)]
    poles = np.stack([p for p, _ in inits])
    residues = np.stack([r for _, r in inits])
    radius = np.clip(np.abs(poles), 1e-4, 0.999)
    params = dict(
        a=jnp.asarray(np.log(radius / (1 - radius)), jnp.float32),
        theta=jnp.asarray(np.angle(poles), jnp.float32),
        re=jnp.asarray(residues.real, jnp.float32),
        im=jnp.asarray(residues.imag, jnp.float32),
        h0=jnp.asarray(h[0], jnp.float32),
    )
    target = jnp.asarray(np.fft.fft(h, axis=0).T, jnp.complex64)  # [C, L]
    norms = jnp.asarray(np.maximum(np.sum(h**2, axis=0), 1e-30), jnp.float32)

    errors0 = _relative_errors(params, target, norms)
    best = params
    if steps:
        refined = _refine(params, target, norms, steps=steps, lr=lr)
        better = _relative_errors(refined, target, norms) < errors0
        best = jax.tree.map(
            lambda r, p: jnp.where(better.reshape((-1,) + (1,) * (r.ndim - 1)), r, p), refined, params
        )
    errors = np.sqrt(np.asarray(_relative_errors(best, target, norms), np.float64))
    poles = np.asarray(jax.nn.sigmoid(best["a"])) * np.exp(1j * np.asarray(best["theta"]))
    residues = np.asarray(best["re"]) + 1j * np.asarray(best["im"])
    return ModalFit(poles.astype(np.complex64), residues.astype(np.complex64), np.asarray(best["h0"]), errors)


class ModalFilter(nnx.Module):
    """A modal filter bank in the interface of :class:`~jaxflash.models.HyenaFilter`: ``kernel(length)``
    and the D-skip ``bias`` (kept from the distilled filter)."""

    def __init__(self, fit: ModalFit, bias: jax.Array, max_len: int):
        self.channels = fit.poles.shape[0]
        self.max_len = max_len
        self.poles = nnx.Variable(jnp.asarray(fit.poles))
        self.residues = nnx.Variable(jnp.asarray(fit.residues))
        self.h0 = nnx.Variable(jnp.asarray(fit.h0, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))

    def kernel(self, length: int) -> Float[Array, "l c"]:
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the filter's max_len={self.max_len}")
        return modal_kernel(self.poles[...], self.residues[...], self.h0[...], length)


class ModalHyena(nnx.Module):
    """A Hyena operator whose long filters are modal (:class:`ModalFilter`): the same parallel forward
    (through ``jaxflash.fftconv`` on the materialised filters) and an O(d)-per-token ``step`` with a
    constant-size state (module docstring). Built by :func:`distill_hyena`."""

    def __init__(self, operator, fit: ModalFit):
        operator.filter = ModalFilter(fit, operator.filter.bias[...], operator.max_len)
        self.operator = operator

    def __call__(self, u: Float[Array, "b l d"]) -> Float[Array, "b l d"]:
        return self.operator(u)

    def _modal(self, o: int):
        """Poles, residues ``[d, order]``, h0 and bias ``[d]`` of convolution o, per channel
        (``HyenaOperator.conv_filter``: safari's (v o) layout, tied heads expanded)."""
        f, pick = self.operator.filter, self.operator.conv_filter
        return (
            pick(f.poles[...].T, o).T,
            pick(f.residues[...].T, o).T,
            pick(f.h0[...], o),
            pick(f.bias[...], o),
        )

    def init_state(self, batch: int, max_len: int | None = None) -> State:
        del max_len  # the state does not grow with the sequence
        op = self.operator
        d = op.filter.poles.shape[1]
        return dict(
            window=jnp.zeros((batch, op.short_conv.taps, (op.order + 1) * op.d_model), op.dtype),
            modal=jnp.zeros((op.order - 1, batch, op.d_model, d), jnp.complex64),
        )

    def step(self, u: Float[Array, "b d"], state: State) -> tuple[Float[Array, "b d"], State]:
        op = self.operator
        z, window = op.short_conv.step(state["window"], op.in_proj(u))
        chunks = jnp.split(z, op.order + 1, axis=-1)
        x0, gates, v = chunks[0], chunks[1:-1], chunks[-1]
        modal = []
        for o, x_i in enumerate(reversed(gates)):
            poles, residues, h0, bias = self._modal(o)
            g = (x_i * v).astype(jnp.float32)
            x = state["modal"][o]
            y = (h0 + bias) * g + jnp.sum(residues * x, axis=-1).real
            modal.append(poles * x + g[..., None])
            v = y.astype(op.dtype)
        return op.out_proj(x0 * v), dict(window=window, modal=jnp.stack(modal))

    def prefill(
        self, u: Float[Array, "b l d"], max_len: int | None = None
    ) -> tuple[Float[Array, "b l d"], State]:
        del max_len
        op = self.operator
        y, zin, inputs = op._forward(u, keep_inputs=True)
        from jaxflash.models.hyena import last_window

        length = u.shape[1]
        modal = []
        for o, g in enumerate(inputs):
            poles = self._modal(o)[0]  # [d_model, d]
            powers = jnp.exp(jnp.log(poles)[..., None] * jnp.arange(length - 1, -1, -1, dtype=jnp.float32))
            modal.append(jnp.einsum("blc,cnl->bcn", g.astype(jnp.complex64), powers))
        return y, dict(window=last_window(zin, op.short_conv.taps, op.dtype), modal=jnp.stack(modal))


@dataclasses.dataclass(frozen=True)
class DistillReport:
    """Per distilled layer: the fit (relative errors per filter channel) and the Hankel singular values
    of its filters (``[C, k]``, normalised by the largest)."""

    layers: dict[int, ModalFit]
    hankel: dict[int, np.ndarray]

    def summary(self) -> str:
        lines = []
        for i, fit in self.layers.items():
            e = fit.rel_error
            lines.append(
                f"layer {i}: order {fit.order}, relative l2 error median {np.median(e):.2e}, "
                f"max {e.max():.2e}"
            )
        return "\n".join(lines)


def distill_hyena(model, order: int, *, length: int | None = None, steps: int = 300, lr: float = 1e-2):
    """A copy of ``model`` (a ``LanguageModel``) whose Hyena mixers are :class:`ModalHyena` of ``order``
    modes per filter channel, fitted on the filters materialised at ``length`` (default the model's
    ``max_seq_len``), and the :class:`DistillReport`. The copy is a drop-in model for ``generate``."""
    from jaxflash.models import HyenaOperator

    graphdef, state = nnx.split(model)
    distilled = nnx.merge(graphdef, state, copy=True)
    length = length or model.config.max_seq_len
    fits, hankel = {}, {}
    for i, block in enumerate(distilled.blocks):
        if not isinstance(block.mixer, HyenaOperator):
            continue
        if block.mixer.filter.__class__.__name__ != "HyenaFilter":
            raise NotImplementedError("distill_hyena fits implicit (HyenaFilter) filters")
        h = np.asarray(block.mixer.filter.kernel(length))
        fits[i] = fit_modal(h, order, steps=steps, lr=lr)
        sv = hankel_singular_values(h)
        hankel[i] = sv / np.maximum(sv[:, :1], 1e-30)
        block.mixer = ModalHyena(block.mixer, fits[i])
    if not fits:
        raise ValueError("the model has no Hyena mixer to distill")
    return distilled, DistillReport(fits, hankel)
