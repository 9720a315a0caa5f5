"""FlexGen's cost model and offloading-policy search (Sheng et al., ICML 2023, arXiv:2303.06865).

FlexGen runs a model too large for one GPU by keeping each kind of tensor split across three tiers:
a fraction of the weights (``wg, wc, wn`` on GPU / CPU / disk), of the KV cache (``cg, cc, cn``) and
of the activations (``hg, hc, hn``; the runtime keeps none on disk, so ``hn = 0``). It processes a block
of ``bls = gpu_batch_size * num_gpu_batches`` sequences per pass over the layers, so each layer's weights
are loaded once per block. For fixed batch sizes every per-layer latency term and every peak-memory term
is affine in the nine fractions, and the policy is the solution of a linear program:

    minimize   T / bls,    T = l * Tpre + l * (n - 1) * Tgen
    subject to Tpre >= max(ctog_p + dtoc_p, gtoc_p + ctod_p, comp_p)          (prefill, per layer)
               Tgen >= ctog_g + max(gtoc_g, dtoc_g, ctod_g, comp_g)           (decode, per layer)
               peak_{gpu,cpu}^{prefill,decode} <= alpha * capacity,  peak_nvme <= alpha * capacity
               each triple of fractions sums to 1, hn = 0

with ``l`` layers, prompt length ``s`` and ``n`` generated tokens. ``ctog`` is a CPU-to-GPU copy,
``dtoc`` disk-to-CPU and so on; ``comp`` is compute, with attention over a CPU-resident cache run on the
CPU. A layer holds ``wi = 8 h1^2 + 4 h1 h2`` bytes of fp16 weights (``wi / 4`` when 4-bit compressed).
E.g. the decode weight-and-activation upload is ``ctog_g = (wi (wc + wn) + 2 h1 bls (hc + hn)) /
ctog_bdw``; the full set, the peak-memory expressions and the T4 constants follow FlexGen's
``experimental/cost_model.py`` (FMInference/FlexLLMGen). The outer search tries ``gpu_batch_size = 1,
2, 3, 4, 8, 16, ...``; for each it finds the largest feasible ``num_gpu_batches`` (doubling, then
bisection), then scans ``num_gpu_batches`` upward while the predicted throughput rises.

Every term is written once, as an affine function of the fraction vector (``_Affine``): the LP's
coefficient rows and ``predict``'s dot products come from the same objects, so they cannot disagree.
``compress_cache`` (4-bit KV cache) is not modelled by the original; here it divides the cache's stored
and transferred bytes by 4 and leaves compute and the GPU's decompressed working buffers unchanged.
The LP is often degenerate (e.g. weight reads from disk hidden behind decode compute cost nothing), so
``solve_placement`` breaks ties towards the least data on disk, where the original takes CBC's vertex.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linprog

GiB = float(1 << 30)
TFLOPS = 1e12

# Relative slack for "better than" in the search: the LP solver's rounding would otherwise break ties
# between equal-throughput policies (e.g. everything on the GPU, where throughput does not depend on
# the batch) at random. Real steps between neighbouring batch shapes are ~1e-4 or more.
_REL_TOL = 1e-7
# How much objective the tie-break (least data on disk) may give up: the LP is often degenerate, e.g.
# weights read from disk while the GPU computes cost nothing, so the optimal placement is not unique.
_TIE_SLACK = 1e-9
# Peak memory of an LP solution may exceed its budget by the solver's feasibility tolerance.
_FIT_TOL = 1e-6
_SUM_TOL = 1e-6

# The CPU attention throughput was fitted at batch 64 and hidden size 4096; smaller batches and
# models run below the nominal rate, and the fit is floored so it cannot go to zero or negative.
_CPU_FIT_BATCH = 64
_CPU_FIT_HIDDEN = 4096
_CPU_FIT_FLOOR = 0.1
# Disk reads of weights ran at 95% of the cache's disk bandwidth in the fit.
_DISK_WEIGHT_EFFICIENCY = 0.95

_FRACTIONS = ("wg", "wc", "wn", "cg", "cc", "cn", "hg", "hc", "hn")
_PREFILL_TERMS = ("ctog_p", "gtoc_p", "dtoc_p", "ctod_p", "comp_p")
_DECODE_TERMS = ("ctog_g", "gtoc_g", "dtoc_g", "ctod_g", "comp_g")
_TIERS = ("gpu", "cpu", "nvme")


def _check_positive(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number; got {value!r}")
    if value <= 0:
        raise ValueError(f"{owner}.{name} must be positive; got {value!r}")


def _check_nonnegative(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number; got {value!r}")
    if value < 0:
        raise ValueError(f"{owner}.{name} must be non-negative; got {value!r}")


def _check_count(owner: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer; got {value!r}")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Bandwidths (bytes/s), flop rates (flop/s), tier capacities (bytes) and the fitted CPU correction.

    ``alpha_*`` is the fraction of each capacity the search may plan for: the peak-memory estimate is
    approximate, so a smaller value gives a more conservative policy.

    ``call_overhead`` (seconds) is a fixed cost of every (layer, GPU batch) step that moves and
    computes nothing: dispatch, kernel launches, synchronisation. FlexGen's model has none (0 here
    by default); for a small model it dominates, and :func:`fit_hardware` fits it to measured runs.
    """

    ctog_bdw: float
    gtoc_bdw_cache: float
    gtoc_bdw_hidden: float
    dtoc_bdw: float
    ctod_bdw_cache_p: float
    ctod_bdw_hidden_p: float
    ctod_bdw_g: float
    mm_flops_p: float
    mm_flops_g: float
    bmm_flops_p: float
    bmm_flops_g: float
    cpu_flops: float
    gpu_mem: float
    cpu_mem: float
    nvme_mem: float
    c1: float = 0.0
    c2: float = 0.0
    c3: float = 0.0
    alpha_g: float = 0.8
    alpha_c: float = 0.8
    alpha_n: float = 0.8
    call_overhead: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("gpu_mem", "cpu_mem", "nvme_mem", "c1", "c2", "c3", "call_overhead"):
                _check_nonnegative("Hardware", f.name, value)
            else:
                _check_positive("Hardware", f.name, value)

    @classmethod
    def gcp_t4(cls, gpu_mem_gb: float = 15, cpu_mem_gb: float = 200, nvme_mem_gb: float = 1500) -> Hardware:
        """FlexGen's constants fitted on a Google Cloud T4 VM; capacities in GiB, by default those of
        the original command line (15 / 200 / 1500)."""
        return cls(
            ctog_bdw=12.89 * GiB,
            gtoc_bdw_cache=0.97 * GiB,
            gtoc_bdw_hidden=4.82 * GiB,
            dtoc_bdw=0.473 * GiB,
            ctod_bdw_cache_p=0.746 * GiB,
            ctod_bdw_hidden_p=2.015 * GiB,
            ctod_bdw_g=2.015 * GiB,
            mm_flops_p=21.24 * TFLOPS,
            mm_flops_g=4.3 * TFLOPS,
            bmm_flops_p=9.97 * TFLOPS,
            bmm_flops_g=0.079 * TFLOPS,
            cpu_flops=0.0123 * TFLOPS,
            c1=0.0168,
            c2=0.0328,
            c3=0.0621,
            gpu_mem=gpu_mem_gb * GiB,
            cpu_mem=cpu_mem_gb * GiB,
            nvme_mem=nvme_mem_gb * GiB,
        )

    def usable(self, tier: str) -> float:
        """Bytes of ``tier`` ("gpu", "cpu" or "nvme") the policy may occupy at its peak."""
        capacity = {"gpu": self.gpu_mem, "cpu": self.cpu_mem, "nvme": self.nvme_mem}[tier]
        alpha = {"gpu": self.alpha_g, "cpu": self.alpha_c, "nvme": self.alpha_n}[tier]
        return capacity * alpha

    def capacity(self, tier: str) -> float:
        return {"gpu": self.gpu_mem, "cpu": self.cpu_mem, "nvme": self.nvme_mem}[tier]


# (layers, hidden, heads) of the OPT decoders FlexGen serves; the FFN is 4x hidden. opt-350m is left
# out, as in FlexGen, because its embedding is projected from a smaller width.
_OPT_SIZES: Mapping[str, tuple[int, int, int]] = {
    "opt-125m": (12, 768, 12),
    "opt-1.3b": (24, 2048, 32),
    "opt-2.7b": (32, 2560, 32),
    "opt-6.7b": (32, 4096, 32),
    "opt-13b": (40, 5120, 40),
    "opt-30b": (48, 7168, 56),
    "opt-66b": (64, 9216, 72),
    "opt-175b": (96, 12288, 96),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """A decoder's shape (``l, h1, h2, nh`` in the paper) and the request: prompt length ``s`` and
    ``n`` generated tokens per sequence; whether weights / KV cache are stored 4-bit; and where decode
    attention over the part of the cache off the GPU runs.

    ``cpu_cache_compute=True`` (FlexGen's ``--cpu-cache-compute``, the only case its cost model
    covers): on the CPU, next to the cache, so only hidden states cross the link. ``False`` (FlexGen's
    default at run time, and what :class:`jaxflash.inference.offload.OffloadedLM` does): each step
    loads the sequence's whole preallocated cache (``s + n`` positions) onto the GPU, attends there and
    writes it back."""

    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    prompt_len: int
    gen_len: int
    compress_weight: bool = False
    compress_cache: bool = False
    cpu_cache_compute: bool = True

    def __post_init__(self) -> None:
        for name in ("n_layers", "hidden_size", "ffn_size", "n_heads", "prompt_len", "gen_len"):
            _check_count("Workload", name, getattr(self, name))
        for name in ("compress_weight", "compress_cache", "cpu_cache_compute"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Workload.{name} must be a bool; got {getattr(self, name)!r}")

    @classmethod
    def from_opt(
        cls,
        name: str,
        prompt_len: int = 512,
        gen_len: int = 32,
        *,
        compress_weight: bool = False,
        compress_cache: bool = False,
    ) -> Workload:
        """The workload of an OPT model by name: "opt-30b", "facebook/opt-175b", "opt-iml-30b"."""
        key = name.split("/")[-1].lower().replace("-iml-max", "").replace("-iml", "")
        if key not in _OPT_SIZES:
            raise ValueError(f"unknown OPT model {name!r}; known sizes: {', '.join(_OPT_SIZES)}")
        n_layers, hidden, heads = _OPT_SIZES[key]
        return cls(
            n_layers=n_layers,
            hidden_size=hidden,
            ffn_size=4 * hidden,
            n_heads=heads,
            prompt_len=prompt_len,
            gen_len=gen_len,
            compress_weight=compress_weight,
            compress_cache=compress_cache,
        )


@dataclasses.dataclass(frozen=True)
class Policy:
    """An offloading policy: batch shape and the fraction of weights (w), KV cache (c) and activations
    (h) on GPU (g), CPU (c) and disk (n)."""

    gpu_batch_size: int
    num_gpu_batches: int
    wg: float
    wc: float
    wn: float
    cg: float
    cc: float
    cn: float
    hg: float
    hc: float
    hn: float = 0.0
    compress_weight: bool = False
    compress_cache: bool = False

    def __post_init__(self) -> None:
        _check_count("Policy", "gpu_batch_size", self.gpu_batch_size)
        _check_count("Policy", "num_gpu_batches", self.num_gpu_batches)
        for name in _FRACTIONS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"Policy.{name} must be a fraction in [0, 1]; got {value!r}")
        for kind, names in (("weight", "wg wc wn"), ("cache", "cg cc cn"), ("activation", "hg hc hn")):
            total = sum(getattr(self, n) for n in names.split())
            if abs(total - 1) > _SUM_TOL:
                raise ValueError(
                    f"Policy {kind} fractions {names.replace(' ', ' + ')} must sum to 1 (within "
                    f"{_SUM_TOL:g}); got {total:.9g}"
                )
        if self.hn != 0:
            raise ValueError(
                f"Policy.hn must be 0: the runtime keeps no activations on disk; got {self.hn!r}"
            )

    @classmethod
    def from_percent(
        cls,
        gpu_batch_size: int,
        num_gpu_batches: int,
        percent: tuple[float, float, float, float, float, float],
        *,
        compress_weight: bool = False,
        compress_cache: bool = False,
    ) -> Policy:
        """FlexGen's ``--percent`` form: weight GPU%, weight CPU%, cache GPU%, cache CPU%, activation
        GPU%, activation CPU%; the rest of each pair is on disk."""
        if len(percent) != 6:
            raise ValueError(f"percent needs 6 numbers (w, cache, act: GPU% CPU%); got {len(percent)}")
        wg, wc, cg, cc, hg, hc = (p / 100 for p in percent)
        return cls(
            gpu_batch_size,
            num_gpu_batches,
            wg,
            wc,
            1 - wg - wc,
            cg,
            cc,
            1 - cg - cc,
            hg,
            hc,
            1 - hg - hc,
            compress_weight=compress_weight,
            compress_cache=compress_cache,
        )

    @property
    def block_size(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    def fractions(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in _FRACTIONS], dtype=np.float64)

    def percent(self) -> tuple[int, int, int, int, int, int]:
        """Whole percentages for FlexGen's ``--percent``. Each pair rounds its cumulative sum, so the
        implied disk share (100 - GPU% - CPU%) never goes negative."""
        out: list[int] = []
        for g, c in ((self.wg, self.wc), (self.cg, self.cc), (self.hg, self.hc)):
            gpu = round(100 * g)
            out += [gpu, round(100 * (g + c)) - gpu]
        return tuple(out)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The cost model's estimate for one policy. Times in seconds (per layer for ``prefill_time`` and
    ``decode_time``; ``total_time`` for the whole block), memory in bytes."""

    prefill_time: float
    decode_time: float
    total_time: float
    throughput: float
    gpu_peak: float
    cpu_peak: float
    nvme_peak: float
    fits: bool  # every peak within its tier's usable memory (capacity * alpha)
    terms: Mapping[str, float]  # the latency terms (ctog_p, ..., comp_g), seconds per layer


@dataclasses.dataclass(frozen=True)
class SearchResult:
    policy: Policy
    prediction: Prediction


@dataclasses.dataclass(frozen=True)
class _Affine:
    """``coef . x + const`` over the fraction vector x = (wg, wc, wn, cg, cc, cn, hg, hc, hn)."""

    coef: np.ndarray
    const: float = 0.0

    # Lets numpy scalars on the left defer to the reflected operators below instead of broadcasting.
    __array_ufunc__ = None

    def __add__(self, other: _Affine | float) -> _Affine:
        if isinstance(other, _Affine):
            return _Affine(self.coef + other.coef, self.const + other.const)
        return _Affine(self.coef, self.const + other)

    __radd__ = __add__

    def __sub__(self, other: _Affine | float) -> _Affine:
        return self + (-1.0) * other

    def __rsub__(self, other: float) -> _Affine:
        return (-1.0) * self + other

    def __mul__(self, k: float) -> _Affine:
        return _Affine(self.coef * k, self.const * k)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> _Affine:
        return _Affine(self.coef / k, self.const / k)

    def __call__(self, x: np.ndarray) -> float:
        return float(self.coef @ x + self.const)


def _fraction_vars() -> dict[str, _Affine]:
    eye = np.eye(len(_FRACTIONS))
    return {name: _Affine(eye[i]) for i, name in enumerate(_FRACTIONS)}


def layer_weight_bytes(workload: Workload) -> float:
    """Bytes of one layer's weights: fp16 ``4 h1^2 + 2 h1 h2`` parameters, a quarter of that at 4 bits."""
    h1, h2 = workload.hidden_size, workload.ffn_size
    wi = 8.0 * h1**2 + 4.0 * h1 * h2
    return wi / 4 if workload.compress_weight else wi


def cpu_flops_real(gpu_batch_size: int, hidden_size: int, hardware: Hardware) -> float:
    """The fitted CPU attention rate: below nominal for batches under 64 and hidden sizes under 4096."""
    b = max(0.0, math.log2(_CPU_FIT_BATCH / gpu_batch_size))
    h = max(0.0, math.log2(_CPU_FIT_HIDDEN / hidden_size))
    scale = 1 + hardware.c1 * b * h - hardware.c2 * b - hardware.c3 * h
    return hardware.cpu_flops * max(_CPU_FIT_FLOOR, scale)


@dataclasses.dataclass(frozen=True)
class _Terms:
    time: Mapping[str, _Affine]
    # Each tier's peak-memory candidates (prefill, decode); the peak is their maximum.
    memory: Mapping[str, tuple[_Affine, ...]]


def _terms(gbs: int, bls: int, workload: Workload, hw: Hardware) -> _Terms:
    v = _fraction_vars()
    wg, wc, wn, cg, cc, cn, hg, hc, hn = (v[name] for name in _FRACTIONS)
    s, n, layers = workload.prompt_len, workload.gen_len, workload.n_layers
    h1, h2, nh = workload.hidden_size, workload.ffn_size, workload.n_heads
    wi = layer_weight_bytes(workload)
    kv = 0.25 if workload.compress_cache else 1.0  # stored / transferred KV bytes per fp16 byte
    ctx = s + n / 2  # mean context length over the decode steps
    zero = _Affine(np.zeros(len(_FRACTIONS)))

    time = {
        "ctog_p": (wi * (wc + wn) + 2 * s * h1 * bls * (hc + hn)) / hw.ctog_bdw,
        "gtoc_p": 4 * (s + 1) * h1 * bls * kv * (cc + cn) / hw.gtoc_bdw_cache
        + 2 * s * h1 * bls * (hc + hn) / hw.gtoc_bdw_hidden,
        "dtoc_p": (wi * wn + 2 * s * h1 * bls * hn) / hw.dtoc_bdw,
        "ctod_p": 4 * bls * (s + 1) * h1 * kv * cn / hw.ctod_bdw_cache_p
        + 2 * s * h1 * bls * hn / hw.ctod_bdw_hidden_p,
        "comp_p": zero
        + bls * (8 * s * h1**2 + 4 * s * h1 * h2) / hw.mm_flops_p
        + 4 * bls * s**2 * h1 / hw.bmm_flops_p,
    }
    mlp_flops = bls * (8 * h1**2 + 4 * h1 * h2) / hw.mm_flops_g
    if workload.cpu_cache_compute:
        # Attention over the part of the cache off the GPU runs on the CPU, next to the cache; the new
        # token's keys and values are written where the cache lives.
        time |= {
            "ctog_g": (wi * (wc + wn) + 2 * h1 * bls * (hc + hn)) / hw.ctog_bdw,
            "gtoc_g": 2 * h1 * bls * (hc + hn) / hw.gtoc_bdw_hidden,
            "dtoc_g": (4 * bls * ctx * h1 * kv * cn + 2 * h1 * bls * hn) / hw.dtoc_bdw
            + wi * wn / (_DISK_WEIGHT_EFFICIENCY * hw.dtoc_bdw),
            "ctod_g": (4 * bls * h1 * kv * cn + 2 * h1 * bls * hn) / hw.ctod_bdw_g,
            "comp_g": mlp_flops
            + 4 * bls * ctx * h1 * cg / hw.bmm_flops_g
            + 4 * bls * ctx * h1 * (cc + cn) / cpu_flops_real(gbs, h1, hw),
        }
        attention_on_gpu: _Affine | float = cg
    else:
        # Every step loads the whole cache buffer of the off-GPU sequences, attends on the GPU and
        # stores the buffer back (to the CPU, and from there to disk for its disk part).
        full = 4 * bls * (s + n) * h1 * kv
        time |= {
            "ctog_g": (wi * (wc + wn) + 2 * h1 * bls * (hc + hn) + full * (cc + cn)) / hw.ctog_bdw,
            "gtoc_g": 2 * h1 * bls * (hc + hn) / hw.gtoc_bdw_hidden + full * (cc + cn) / hw.gtoc_bdw_cache,
            "dtoc_g": (full * cn + 2 * h1 * bls * hn) / hw.dtoc_bdw
            + wi * wn / (_DISK_WEIGHT_EFFICIENCY * hw.dtoc_bdw),
            "ctod_g": (full * cn + 2 * h1 * bls * hn) / hw.ctod_bdw_g,
            "comp_g": zero + mlp_flops + 4 * bls * ctx * h1 / hw.bmm_flops_g,
        }
        attention_on_gpu = 1.0

    # GPU: resident ("home") data plus the working set of one layer for one GPU batch: weights and
    # activations fetched from elsewhere are double-buffered, and the prefill's intermediates (qkv,
    # attention scores, attention output, MLP) are held at once.
    gpu_home_p = wi * layers * wg + 2 * s * h1 * bls * hg + 4 * (s + n) * h1 * bls * layers * kv * cg
    inter_p = gbs * (
        8 * s * h1 + (2 * s * h1 + 2 * nh * s**2) + 2 * s * h1 + 4 * s * h1 + 2 * s * h2 + 2 * s * h1
    )
    gpu_w_p = 2 * wi * (1 - wg) + 2 * s * h1 * gbs * (1 - hg) + inter_p
    # In decode the attention buffers exist on the GPU only for the GPU-resident part of the cache.
    gpu_home_g = wi * layers * wg + 2 * h1 * bls * hg + 4 * (s + n) * h1 * bls * layers * kv * cg
    inter_g = (
        8 * gbs * h1
        + gbs * (2 * h1 + 2 * (s + n) * h1 + 2 * nh * (s + n)) * attention_on_gpu
        + gbs * (2 * (s + n) * h1 + 2 * h1) * attention_on_gpu
        + 4 * gbs * h1
        + 2 * gbs * h2
        + 2 * gbs * h1
    )
    gpu_w_g = 2 * wi * (1 - wg) + 2 * h1 * gbs * (1 - hg) + 4 * gbs * (s + n) * h1 * cg + inter_g
    if not workload.cpu_cache_compute:  # one GPU batch's loaded cache, double-buffered
        gpu_w_g = gpu_w_g + 2 * 4 * gbs * (s + n) * h1 * kv * (cc + cn)

    # CPU: resident data plus staging buffers for what passes through host memory.
    cpu_home_p = wi * layers * wc + 2 * s * h1 * bls * hc + 4 * s * h1 * bls * layers * kv * cc
    cpu_w_p = wi * (1 - wg) + 2 * s * h1 * gbs * (1 - hg)
    cpu_home_g = wi * layers * wc + 2 * h1 * bls * hc + 4 * (s + n) * h1 * bls * layers * kv * cc
    cpu_w_g = (
        wi * wn
        + 4 * h1 * gbs * hn
        + 8 * (s + n) * h1 * gbs * kv * cn
        + (2 * nh * (s + n) * gbs + 2 * h1 * gbs)
    )

    nvme = wi * layers * wn + 2 * s * h1 * bls * hn + 4 * (s + n) * h1 * bls * layers * kv * cn

    memory = {
        "gpu": (gpu_home_p + gpu_w_p, gpu_home_g + gpu_w_g),
        "cpu": (cpu_home_p + cpu_w_p, cpu_home_g + cpu_w_g),
        "nvme": (nvme,),
    }
    return _Terms(time=time, memory=memory)


def _check_flags(policy: Policy, workload: Workload) -> None:
    for name in ("compress_weight", "compress_cache"):
        if getattr(policy, name) != getattr(workload, name):
            raise ValueError(
                f"policy.{name}={getattr(policy, name)} but workload.{name}={getattr(workload, name)}: "
                "the cost model needs both to agree"
            )


def predict(policy: Policy, workload: Workload, hardware: Hardware) -> Prediction:
    """The cost model's latency, throughput and peak memory for ``policy``."""
    _check_flags(policy, workload)
    terms = _terms(policy.gpu_batch_size, policy.block_size, workload, hardware)
    x = policy.fractions()
    t = {name: term(x) for name, term in terms.time.items()}
    tpre = max(t["ctog_p"] + t["dtoc_p"], t["gtoc_p"] + t["ctod_p"], t["comp_p"])
    tgen = t["ctog_g"] + max(t["gtoc_g"], t["dtoc_g"], t["ctod_g"], t["comp_g"])
    layers, n = workload.n_layers, workload.gen_len
    overhead = hardware.call_overhead * layers * n * policy.num_gpu_batches  # per layer, position, batch
    total = tpre * layers + tgen * (n - 1) * layers + overhead
    peaks = {tier: max(m(x) for m in terms.memory[tier]) for tier in _TIERS}
    fits = all(peaks[tier] <= hardware.usable(tier) * (1 + _FIT_TOL) for tier in _TIERS)
    return Prediction(
        prefill_time=tpre,
        decode_time=tgen,
        total_time=total,
        throughput=policy.block_size * n / total,
        gpu_peak=peaks["gpu"],
        cpu_peak=peaks["cpu"],
        nvme_peak=peaks["nvme"],
        fits=fits,
        terms=t,
    )


@dataclasses.dataclass(frozen=True)
class LinearProgram:
    """The placement LP in ``scipy.optimize.linprog`` form over ``variables`` = the nine fractions,
    then ``Tpre`` and ``Tgen`` (seconds per layer); memory rows are in GiB to keep the rows well scaled.
    ``c @ z`` is ``T / bls`` (seconds per sequence)."""

    c: np.ndarray
    a_ub: np.ndarray
    b_ub: np.ndarray
    a_eq: np.ndarray
    b_eq: np.ndarray
    bounds: tuple[tuple[float, float], ...]
    disk: np.ndarray
    variables: tuple[str, ...] = (*_FRACTIONS, "Tpre", "Tgen")

    def solve(self):
        """``scipy.optimize.linprog``'s result for the LP as stated (status 0: optimal, 2: infeasible)."""
        return linprog(
            self.c,
            A_ub=self.a_ub,
            b_ub=self.b_ub,
            A_eq=self.a_eq,
            b_eq=self.b_eq,
            bounds=self.bounds,
            method="highs",
        )

    def solve_canonical(self) -> np.ndarray | None:
        """An optimal ``z`` that, among the (near-)optimal ones, keeps the least data (``disk``, GiB)
        on disk; None if infeasible."""
        first = self.solve()
        if first.status != 0:
            return None
        budget = first.fun * (1 + _TIE_SLACK)
        second = linprog(
            self.disk,
            A_ub=np.vstack([self.a_ub, self.c]),
            b_ub=np.append(self.b_ub, budget),
            A_eq=self.a_eq,
            b_eq=self.b_eq,
            bounds=self.bounds,
            method="highs",
        )
        return second.x if second.status == 0 else first.x


def _lower_bound_row(parts: tuple[_Affine, ...], column: int, width: int) -> tuple[np.ndarray, float]:
    """``sum(parts) <= z[column]`` as ``row @ z <= rhs``."""
    total = sum(parts[1:], parts[0])
    row = np.zeros(width)
    row[: len(_FRACTIONS)] = total.coef
    row[column] = -1.0
    return row, -total.const


def _placement_constraints(terms: _Terms, hardware: Hardware, tiers: tuple[str, ...] = _TIERS):
    nf = len(_FRACTIONS)
    width = nf + 2
    t = terms.time
    tpre, tgen = nf, nf + 1
    groups = [
        ((t["ctog_p"], t["dtoc_p"]), tpre),
        ((t["gtoc_p"], t["ctod_p"]), tpre),
        ((t["comp_p"],), tpre),
        *(((t["ctog_g"], t[name]), tgen) for name in ("gtoc_g", "dtoc_g", "ctod_g", "comp_g")),
    ]
    rows, rhs = [], []
    for parts, column in groups:
        row, b = _lower_bound_row(parts, column, width)
        rows.append(row)
        rhs.append(b)
    for tier in tiers:
        for m in terms.memory[tier]:
            row = np.zeros(width)
            row[:nf] = m.coef / GiB
            rows.append(row)
            rhs.append((hardware.usable(tier) - m.const) / GiB)
    a_eq = np.zeros((3, width))
    for i in range(3):
        a_eq[i, 3 * i : 3 * i + 3] = 1.0
    # hn is pinned to 0 through its bounds, so solutions carry an exact zero.
    bounds = tuple((0.0, 0.0) if name == "hn" else (0.0, 1.0) for name in _FRACTIONS) + ((0.0, None),) * 2
    return np.array(rows), np.array(rhs), a_eq, np.ones(3), bounds


def build_lp(
    gpu_batch_size: int, num_gpu_batches: int, workload: Workload, hardware: Hardware
) -> LinearProgram:
    """The placement LP for a fixed batch shape (minimize ``T / bls``)."""
    _check_count("build_lp", "gpu_batch_size", gpu_batch_size)
    _check_count("build_lp", "num_gpu_batches", num_gpu_batches)
    bls = gpu_batch_size * num_gpu_batches
    terms = _terms(gpu_batch_size, bls, workload, hardware)
    a_ub, b_ub, a_eq, b_eq, bounds = _placement_constraints(terms, hardware)
    layers, n = workload.n_layers, workload.gen_len
    c = np.zeros(len(_FRACTIONS) + 2)
    c[-2:] = layers / bls, layers * (n - 1) / bls
    (nvme,) = terms.memory["nvme"]
    disk = np.zeros_like(c)
    disk[: len(_FRACTIONS)] = nvme.coef / GiB
    return LinearProgram(c=c, a_ub=a_ub, b_ub=b_ub, a_eq=a_eq, b_eq=b_eq, bounds=bounds, disk=disk)


def _policy(z: np.ndarray, gbs: int, nb: int, workload: Workload) -> Policy:
    # The solver may return -1e-12 or -0.0; adding 0.0 turns -0.0 into 0.0 for printing.
    x = np.clip(z[: len(_FRACTIONS)], 0.0, 1.0) + 0.0
    return Policy(
        gbs,
        nb,
        *(float(v) for v in x),
        compress_weight=workload.compress_weight,
        compress_cache=workload.compress_cache,
    )


def solve_placement(
    gpu_batch_size: int, num_gpu_batches: int, workload: Workload, hardware: Hardware
) -> Policy | None:
    """The throughput-optimal placement for this batch shape (of equally fast ones, the one with the
    least data on disk), or None when no placement fits memory."""
    z = build_lp(gpu_batch_size, num_gpu_batches, workload, hardware).solve_canonical()
    return None if z is None else _policy(z, gpu_batch_size, num_gpu_batches, workload)


def _fast_placement(gbs: int, nb: int, workload: Workload, hardware: Hardware) -> Policy | None:
    # The search only compares throughputs, which the tie-break leaves unchanged, so it skips it.
    res = build_lp(gbs, nb, workload, hardware).solve()
    return None if res.status != 0 else _policy(res.x, gbs, nb, workload)


def max_gpu_batches(gpu_batch_size: int, workload: Workload, hardware: Hardware) -> int:
    """The largest ``num_gpu_batches`` with a feasible placement (0 if none): doubling, then bisection
    for the first infeasible count, as FlexGen does (feasibility is monotone in the block size)."""
    feasible = lambda nb: build_lp(gpu_batch_size, nb, workload, hardware).solve().status == 0
    nb = 1
    while feasible(nb):
        nb *= 2
    lo, hi = max(nb // 2, 1), nb
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def _gpu_batch_sizes():
    gbs = 1
    while True:
        yield gbs
        gbs = gbs + 1 if gbs < 4 else gbs * 2


def search_policy(
    workload: Workload, hardware: Hardware, *, max_block_size: int | None = None
) -> SearchResult:
    """FlexGen's policy search: for ``gpu_batch_size`` in 1, 2, 3, 4, 8, 16, ... (until even one GPU
    batch no longer fits) scan ``num_gpu_batches`` = 1, 2, ... up to the largest feasible one, while
    throughput keeps rising; return the best policy found. Raises ValueError if nothing fits.

    ``max_block_size`` caps ``gpu_batch_size * num_gpu_batches`` (the sequences there are to serve;
    None: no cap, as in FlexGen, where the search grows the block until memory runs out).

    Unlike the original, throughputs within a relative 1e-7 count as equal: the scan stops on a plateau
    as well as a drop, and of equal policies the first found is kept. The winner's placement is the
    one of ``solve_placement`` (least data on disk among the optimal ones)."""
    if max_block_size is not None:
        _check_count("search_policy", "max_block_size", max_block_size)
    best: tuple[Policy, Prediction] | None = None
    for gbs in _gpu_batch_sizes():
        if max_block_size is not None and gbs > max_block_size:
            break
        nb_max = max_gpu_batches(gbs, workload, hardware)
        if nb_max == 0:
            break
        if max_block_size is not None:
            nb_max = min(nb_max, max_block_size // gbs)
        previous = 0.0
        for nb in range(1, nb_max + 1):
            policy = _fast_placement(gbs, nb, workload, hardware)
            if policy is None:
                break
            pred = predict(policy, workload, hardware)
            # Stop once throughput stops rising; a plateau ends the scan too, since on it the
            # original's choice is decided by solver rounding alone.
            if pred.throughput <= previous * (1 + _REL_TOL):
                break
            previous = pred.throughput
            if best is None or pred.throughput > best[1].throughput * (1 + _REL_TOL):
                best = (policy, pred)
    if best is None:
        raise ValueError(_no_fit_message(workload, hardware))
    gbs, nb = best[0].gpu_batch_size, best[0].num_gpu_batches
    policy = solve_placement(gbs, nb, workload, hardware) or best[0]
    return SearchResult(policy, predict(policy, workload, hardware))


# Hardware constants fitted together, each group by one factor (FlexGen fits per direction and kind).
FIT_GROUPS: Mapping[str, tuple[str, ...]] = {
    "ctog": ("ctog_bdw",),
    "gtoc": ("gtoc_bdw_cache", "gtoc_bdw_hidden"),
    "dtoc": ("dtoc_bdw",),
    "ctod": ("ctod_bdw_cache_p", "ctod_bdw_hidden_p", "ctod_bdw_g"),
    "mm": ("mm_flops_p", "mm_flops_g"),
    "bmm": ("bmm_flops_p", "bmm_flops_g"),
    "cpu": ("cpu_flops",),
}


@dataclasses.dataclass(frozen=True)
class Fit:
    """What :func:`fit_hardware` returns: the fitted hardware, each group's factor over the starting
    constants, and the relative errors ``predicted / measured - 1`` of the fitted observations before
    and after."""

    hardware: Hardware
    factors: Mapping[str, float]
    errors_before: tuple[float, ...]
    errors_after: tuple[float, ...]


def fit_hardware(
    observations: Sequence[tuple[Policy, float]],
    workload: Workload,
    hardware: Hardware,
    *,
    groups: Sequence[str] = tuple(FIT_GROUPS),
    fit_overhead: bool = True,
    prior: float = 0.1,
) -> Fit:
    """The hardware constants that best explain measured times, as FlexGen fits its constants to
    profiled runs (``experimental/fit_cost_model.py``: "profiling primitives or internet numbers will
    not be accurate").

    ``observations``: ``(policy, seconds)`` pairs, each the measured time of one block of ``workload``
    under ``policy``. Each group of :data:`FIT_GROUPS` named in ``groups`` is scaled by one factor
    ``exp(theta_g)``; with ``fit_overhead``, ``call_overhead`` is fitted too (``exp(theta_o)``
    seconds). The fit minimises ``sum_i log(predicted_i / measured_i)^2 + prior * sum_g theta_g^2``
    (``scipy.optimize.least_squares``): relative errors, so a long run does not outweigh a short one,
    and a ridge that keeps a constant the observations do not constrain at its starting value
    (``hardware``, e.g. a calibration of the primitives). Fit on runs other than those you evaluate
    the model on."""
    from scipy.optimize import least_squares

    if len(observations) == 0:
        raise ValueError("fit_hardware needs at least one (policy, seconds) observation")
    unknown = [g for g in groups if g not in FIT_GROUPS]
    if unknown:
        raise ValueError(f"unknown fit groups {unknown}; choose from {', '.join(FIT_GROUPS)}")
    policies, seconds = [], []
    for policy, measured in observations:
        if not isinstance(policy, Policy):
            raise ValueError(f"observations are (Policy, seconds) pairs; got {type(policy).__name__}")
        if not measured > 0 or not math.isfinite(measured):
            raise ValueError(f"a measured time must be positive and finite; got {measured!r}")
        policies.append(policy)
        seconds.append(float(measured))
    measured_log = np.log(seconds)
    groups = tuple(groups)

    def build(theta: np.ndarray) -> Hardware:
        changes = {
            name: getattr(hardware, name) * math.exp(t)
            for group, t in zip(groups, theta, strict=False)
            for name in FIT_GROUPS[group]
        }
        if fit_overhead:
            changes["call_overhead"] = math.exp(theta[-1])
        return dataclasses.replace(hardware, **changes)

    def log_errors(hw: Hardware) -> np.ndarray:
        predicted = [predict(p, workload, hw).total_time for p in policies]
        return np.log(predicted) - measured_log

    def residuals(theta: np.ndarray) -> np.ndarray:
        ridge = math.sqrt(prior) * theta[: len(groups)]
        return np.concatenate([log_errors(build(theta)), ridge])

    # The overhead starts at the mean measured time per (layer, position, GPU batch) step / 10.
    steps = [workload.n_layers * workload.gen_len * p.num_gpu_batches for p in policies]
    theta0 = np.zeros(len(groups) + fit_overhead)
    if fit_overhead:
        theta0[-1] = math.log(float(np.mean(np.array(seconds) / np.array(steps))) / 10)
    result = least_squares(residuals, theta0, method="trf", x_scale=1.0)
    fitted = build(result.x)
    factors = {g: math.exp(t) for g, t in zip(groups, result.x, strict=False)}
    return Fit(
        hardware=fitted,
        factors=factors,
        errors_before=tuple(float(e) for e in np.expm1(log_errors(hardware))),
        errors_after=tuple(float(e) for e in np.expm1(log_errors(fitted))),
    )


def _min_tier_bytes(tier: str, workload: Workload, hardware: Hardware) -> float | None:
    """The least capacity of ``tier`` that admits a placement at gpu_batch_size = num_gpu_batches = 1,
    the other tiers as given; None if no size of this tier suffices."""
    terms = _terms(1, 1, workload, hardware)
    others = tuple(t for t in _TIERS if t != tier)
    a_ub, b_ub, a_eq, b_eq, bounds = _placement_constraints(terms, hardware, others)
    # One more variable, the tier's peak in GiB, bounds each of its memory terms from above.
    nf = len(_FRACTIONS)
    a_ub = np.hstack([a_ub, np.zeros((len(a_ub), 1))])
    rows, rhs = [], []
    for m in terms.memory[tier]:
        row = np.zeros(nf + 3)
        row[:nf] = m.coef / GiB
        row[-1] = -1.0
        rows.append(row)
        rhs.append(-m.const / GiB)
    c = np.zeros(nf + 3)
    c[-1] = 1.0
    res = linprog(
        c,
        A_ub=np.vstack([a_ub, rows]),
        b_ub=np.concatenate([b_ub, rhs]),
        A_eq=np.hstack([a_eq, np.zeros((3, 1))]),
        b_eq=b_eq,
        bounds=(*bounds, (0.0, None)),
        method="highs",
    )
    if res.status != 0:
        return None
    alpha = {"gpu": hardware.alpha_g, "cpu": hardware.alpha_c, "nvme": hardware.alpha_n}[tier]
    return res.x[-1] * GiB / alpha


def _no_fit_message(workload: Workload, hardware: Hardware) -> str:
    names = {"gpu": "GPU", "cpu": "CPU", "nvme": "disk"}
    needs = []
    for tier in _TIERS:
        need = _min_tier_bytes(tier, workload, hardware)
        have = hardware.capacity(tier) / GiB
        if need is None:
            needs.append(
                f"{names[tier]}: no size suffices with the other tiers as given (have {have:.2f} GiB)"
            )
        else:
            needs.append(f"{names[tier]} >= {need / GiB:.2f} GiB (have {have:.2f} GiB)")
    total = (
        layer_weight_bytes(workload) * workload.n_layers
        + 4 * (workload.prompt_len + workload.gen_len) * workload.hidden_size * workload.n_layers
        + 2 * workload.prompt_len * workload.hidden_size
    )
    advice = "" if workload.compress_weight else "enable compress_weight, "
    return (
        "no offloading policy fits this hardware: even gpu_batch_size=1, num_gpu_batches=1 exceeds the "
        f"usable memory (alpha = {hardware.alpha_g:g}/{hardware.alpha_c:g}/{hardware.alpha_n:g} of each "
        "capacity). With the other two tiers as given, the workload needs at least: "
        + "; ".join(needs)
        + f". The weights, one sequence's KV cache and activations total {total / GiB:.2f} GiB. Add memory "
        f"to one of these tiers, {advice}shorten the prompt or generation, or use a smaller model."
    )


def format_policy(policy: Policy, prediction: Prediction, workload: Workload | None = None) -> str:
    """A one-paragraph summary: FlexGen's command-line flags, then what the cost model predicts
    (``workload``, when given, says whether attention over an off-GPU cache runs on the CPU)."""
    flags = (
        f"--gpu-batch-size {policy.gpu_batch_size} --num-gpu-batches {policy.num_gpu_batches} "
        f"--percent {' '.join(str(p) for p in policy.percent())}"
    )
    if policy.cc + policy.cn > 0 and (workload is None or workload.cpu_cache_compute):
        # The model times decode attention on the CPU for the part of the cache held there.
        flags += " --cpu-cache-compute"
    if policy.compress_weight:
        flags += " --compress-weight"
    if policy.compress_cache:
        flags += " --compress-cache"
    pct = lambda *xs: "/".join(f"{100 * x:.1f}" for x in xs)
    return (
        f"FlexGen policy {flags}: a block of {policy.block_size} sequences; weights "
        f"{pct(policy.wg, policy.wc, policy.wn)}%, KV cache {pct(policy.cg, policy.cc, policy.cn)}% and "
        f"activations {pct(policy.hg, policy.hc)}% on GPU/CPU(/disk). Predicted throughput "
        f"{prediction.throughput:.2f} token/s ({prediction.prefill_time:.4g} s prefill and "
        f"{prediction.decode_time:.4g} s decode per layer, {prediction.total_time:.4g} s per block); peak "
        f"memory GPU {prediction.gpu_peak / GiB:.2f} GiB, CPU {prediction.cpu_peak / GiB:.2f} GiB, disk "
        f"{prediction.nvme_peak / GiB:.2f} GiB{'' if prediction.fits else ' (exceeds the usable memory)'}."
    )
