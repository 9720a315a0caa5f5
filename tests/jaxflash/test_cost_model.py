"""jaxflash.inference.cost_model: FlexGen's cost model and policy search against the original program's
output, the LP against ``predict``, monotonicity and placement invariants, bad input."""

import dataclasses
import re

import numpy as np
import pytest

from jaxflash.inference import cost_model as cm
from jaxflash.inference.cost_model import Hardware, Policy, Workload

# The T4 machine of FlexGen's README, at the memories of its policy-search example.
T4 = Hardware.gcp_t4(gpu_mem_gb=16, cpu_mem_gb=200, nvme_mem_gb=1500)

# Output of the ORIGINAL FlexGen cost model: FMInference/FlexLLMGen at commit
# 004ffef82b46e8dc8685c55d0cdda650bdaf1269, file experimental/cost_model.py (unchanged since it was added
# in e6e4b1059be4b564c2434f594a7046b9bca2b13b), run on CPU with pulp 3.3.2 (its bundled CBC) and
# numpy 2.4.6 as
#     python cost_model.py --model facebook/opt-30b --prompt-len 512 --gen-len 32 \
#                          --gpu-mem 16 --cpu-mem 200 --nvme-mem 1500          [--compress-w]
# and likewise for facebook/opt-6.7b and facebook/opt-175b. It prints "max_throughput: 7.09 token/s"
# for OPT-30B; the full-precision values below come from importing the same file and calling its
# solve(config, solve_lp, args) with the configuration its __main__ builds from those flags. Its
# imports from flexllmgen (GB, T, get_opt_config, Policy, CompressionConfig) were satisfied by that
# repository's opt_config.py and by copies of the two dataclasses, to avoid installing torch.
# percent = (wg, wc, cg, cc, hg, hc) as fractions, the values its Policy carries (CBC's 8 digits).
ORIGINAL = {
    ("opt-6.7b", False): dict(
        gbs=1, nb=2, percent=(1.0, 0.0, 1.0, 0.0, 1.0, 0.0), throughput=60.84806419014412
    ),
    ("opt-30b", False): dict(
        gbs=32, nb=5, percent=(0.12428276, 0.77809922, 0.0, 1.0, 0.0, 1.0), throughput=7.094728299550625
    ),
    ("opt-175b", False): dict(
        gbs=1, nb=432, percent=(0.01840524, 0.46794105, 0.0, 0.0, 0.0, 1.0), throughput=0.16937098490514177
    ),
    ("opt-30b", True): dict(
        gbs=64, nb=3, percent=(0.32942916, 0.67057084, 0.0, 1.0, 0.0, 1.0), throughput=8.336737998876224
    ),
    ("opt-175b", True): dict(
        gbs=4,
        nb=10,
        percent=(0.12947203, 0.87052797, 0.0, 0.93566558, 0.0, 1.0),
        throughput=1.4197997756206113,
    ),
}
# The original's prefill and decode totals (Tpre * l, Tgen * (n - 1) * l, seconds) for OPT-30B.
ORIGINAL_30B_TIMES = (234.0782352, 487.5843432)
# The original's solve_lp(config, gbs * nb, gbs) at fixed batch shapes for OPT-30B: throughput, percent.
ORIGINAL_30B_POINTS = {
    (1, 1): (0.2844975759472947, (0.18328897, 0.81671103, 1.0, 0.0, 1.0, 0.0)),
    (4, 2): (1.8435756322222165, (0.083910086, 0.91608991, 1.0, 0.0, 0.0, 1.0)),
    (8, 8): (5.693162239723383, (0.18018338, 0.81981662, 0.0, 1.0, 0.0, 1.0)),
    (48, 3): (6.973968979731493, (0.087015676, 0.91298432, 0.0, 1.0, 0.0, 1.0)),
    (64, 1): (5.624349478621705, (0.049748595, 0.9502514, 0.0, 1.0, 1.0, 0.0)),
}
# The original's get_nb_ub (largest feasible num_gpu_batches) per gpu_batch_size for OPT-30B.
ORIGINAL_30B_NB_UB = {1: 1880, 2: 940, 3: 626, 4: 469, 8: 234, 16: 117, 32: 58, 64: 29, 128: 0}

FRACTION_TOL = 1e-3  # CBC prints 8 digits; LP vertices agree to ~1e-5
THROUGHPUT_RTOL = 1e-6


def _percent(policy: Policy) -> np.ndarray:
    return np.array([policy.wg, policy.wc, policy.cg, policy.cc, policy.hg, policy.hc])


def _original_policy(expected: dict, workload: Workload) -> Policy:
    wg, wc, cg, cc, hg, hc = expected["percent"]
    return Policy(
        expected["gbs"],
        expected["nb"],
        wg,
        wc,
        1 - wg - wc,
        cg,
        cc,
        1 - cg - cc,
        hg,
        hc,
        0.0,
        compress_weight=workload.compress_weight,
    )


@pytest.mark.parametrize(("model", "compress"), list(ORIGINAL))
def test_search_matches_original(model, compress):
    """Same gbs, nb, placement (to 1e-3) and throughput (to 1e-6) as the original, where those are well
    defined. Two known differences, both ties between policies of equal predicted throughput:

    * OPT-6.7B fits entirely on the GPU, where T is proportional to the block size, so every small
      block has the same throughput. The original's CBC rounding made nb=2 look higher by 4e-8 relative;
      our search keeps the first of equal policies, (gbs, nb) = (1, 1).
    * OPT-30B uncompressed: the LP is degenerate. The original stores 9.8% of the weights on disk (their
      disk reads hide exactly behind decode compute); ours, which breaks ties towards less data on
      disk, keeps them on the CPU (wc = 0.876, wn = 0). Both give the same objective; we compare wg,
      the cache and activation fractions, and check that our ``predict`` gives the original's placement
      the original's throughput.
    """
    workload = Workload.from_opt(model, 512, 32, compress_weight=compress)
    expected = ORIGINAL[(model, compress)]
    result = cm.search_policy(workload, T4)

    np.testing.assert_allclose(result.prediction.throughput, expected["throughput"], rtol=THROUGHPUT_RTOL)
    assert result.prediction.fits
    original = _original_policy(expected, workload)
    original_prediction = cm.predict(original, workload, T4)
    np.testing.assert_allclose(original_prediction.throughput, expected["throughput"], rtol=THROUGHPUT_RTOL)
    assert original_prediction.fits

    ours = _percent(result.policy)
    if model == "opt-6.7b":
        assert (result.policy.gpu_batch_size, result.policy.num_gpu_batches) == (1, 1)
        np.testing.assert_allclose(ours, expected["percent"], atol=FRACTION_TOL)
        return
    assert (result.policy.gpu_batch_size, result.policy.num_gpu_batches) == (expected["gbs"], expected["nb"])
    if (model, compress) == ("opt-30b", False):
        keep = [0, 2, 3, 4, 5]  # wg, cg, cc, hg, hc; wc / wn is the tie
        np.testing.assert_allclose(ours[keep], np.array(expected["percent"])[keep], atol=FRACTION_TOL)
        assert result.policy.wn == 0 and result.prediction.nvme_peak == 0
        layers = workload.n_layers
        totals = (result.prediction.prefill_time * layers, result.prediction.decode_time * 31 * layers)
        np.testing.assert_allclose(totals, ORIGINAL_30B_TIMES, rtol=THROUGHPUT_RTOL)
    else:
        np.testing.assert_allclose(ours, expected["percent"], atol=FRACTION_TOL)


def test_fixed_batch_shapes_and_feasibility_boundary_match_original():
    workload = Workload.from_opt("opt-30b", 512, 32)
    for (gbs, nb), (throughput, percent) in ORIGINAL_30B_POINTS.items():
        policy = cm.solve_placement(gbs, nb, workload, T4)
        assert policy is not None
        np.testing.assert_allclose(
            cm.predict(policy, workload, T4).throughput, throughput, rtol=THROUGHPUT_RTOL
        )
        np.testing.assert_allclose(_percent(policy), percent, atol=FRACTION_TOL)
    got = {gbs: cm.max_gpu_batches(gbs, workload, T4) for gbs in ORIGINAL_30B_NB_UB}
    assert got == ORIGINAL_30B_NB_UB


@pytest.mark.parametrize(
    ("model", "gbs", "nb", "compress_cache"),
    [("opt-30b", 8, 8, False), ("opt-175b", 4, 10, False), ("opt-13b", 16, 4, True)],
)
def test_predict_equals_lp_objective(model, gbs, nb, compress_cache):
    workload = Workload.from_opt(model, 512, 32, compress_cache=compress_cache)
    lp = cm.build_lp(gbs, nb, workload, T4)
    res = lp.solve()
    assert res.status == 0
    policy = cm.solve_placement(gbs, nb, workload, T4)
    pred = cm.predict(policy, workload, T4)
    # The LP objective is T / bls; the tie-break may give up at most 1e-9 of it.
    np.testing.assert_allclose(pred.total_time / policy.block_size, res.fun, rtol=1e-8)
    assert pred.fits
    # predict at the LP's own optimum, with its per-layer time variables, gives the same times.
    fractions = (float(v) for v in np.clip(res.x[:9], 0.0, 1.0))
    raw = Policy(gbs, nb, *fractions, compress_weight=False, compress_cache=compress_cache)
    raw_pred = cm.predict(raw, workload, T4)
    np.testing.assert_allclose([raw_pred.prefill_time, raw_pred.decode_time], res.x[-2:], rtol=1e-8)


def test_more_gpu_memory_never_lowers_throughput():
    """Each LP's feasible set only grows with the GPU, so the LP optimum cannot drop; the search's
    early stop could in principle miss a policy, which this sweep checks it does not."""
    workload = Workload.from_opt("opt-6.7b", 512, 32)
    throughputs = []
    for gpu in (2, 4, 8, 16):
        hw = Hardware.gcp_t4(gpu_mem_gb=gpu, cpu_mem_gb=32, nvme_mem_gb=200)
        throughputs.append(cm.search_policy(workload, hw).prediction.throughput)
    assert all(b >= a * (1 - 1e-9) for a, b in zip(throughputs, throughputs[1:], strict=False))
    assert throughputs[-1] > throughputs[0]

    workload = Workload.from_opt("opt-30b", 512, 32)
    objectives = []
    for gpu in (8, 12, 16, 24):
        hw = Hardware.gcp_t4(gpu_mem_gb=gpu, cpu_mem_gb=200, nvme_mem_gb=1500)
        objectives.append(cm.build_lp(16, 4, workload, hw).solve().fun)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(objectives, objectives[1:], strict=False))


def test_weights_on_gpu_move_no_weights():
    workload = Workload.from_opt("opt-6.7b", 512, 32)
    everything_on_gpu = Policy(2, 1, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)
    pred = cm.predict(everything_on_gpu, workload, T4)
    for name in ("ctog_p", "gtoc_p", "dtoc_p", "ctod_p", "ctog_g", "gtoc_g", "dtoc_g", "ctod_g"):
        assert pred.terms[name] == 0, name
    assert pred.prefill_time == pred.terms["comp_p"] and pred.decode_time == pred.terms["comp_g"]
    # The CPU keeps only the original's small per-batch staging buffers (attention scores, one token).
    assert pred.fits and pred.cpu_peak < 2**20 and pred.nvme_peak == 0

    # Weights and activations on the GPU, the cache on disk: only cache bytes cross the links.
    cache_on_disk = Policy(2, 1, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0)
    pred = cm.predict(cache_on_disk, workload, T4)
    assert pred.terms["ctog_p"] == pred.terms["ctog_g"] == pred.terms["dtoc_p"] == 0
    h1, s, n, bls = workload.hidden_size, workload.prompt_len, workload.gen_len, 2
    np.testing.assert_allclose(pred.terms["dtoc_g"], 4 * bls * (s + n / 2) * h1 / T4.dtoc_bdw)


def test_compression_quarters_weight_bytes():
    plain = Workload.from_opt("opt-30b", 512, 32)
    packed = Workload.from_opt("opt-30b", 512, 32, compress_weight=True)
    h1, h2 = 7168, 4 * 7168
    assert cm.layer_weight_bytes(plain) == 8 * h1**2 + 4 * h1 * h2
    assert cm.layer_weight_bytes(packed) == cm.layer_weight_bytes(plain) / 4
    # All weights on disk, activations on the GPU: the weight traffic shrinks 4x with them.
    on_disk = dict(wg=0.0, wc=0.0, wn=1.0, cg=1.0, cc=0.0, cn=0.0, hg=1.0, hc=0.0)
    a = cm.predict(Policy(1, 1, **on_disk), plain, T4)
    b = cm.predict(Policy(1, 1, **on_disk, compress_weight=True), packed, T4)
    for name in ("ctog_g", "dtoc_g", "dtoc_p"):
        np.testing.assert_allclose(b.terms[name], a.terms[name] / 4, rtol=1e-12)
    np.testing.assert_allclose(b.nvme_peak, a.nvme_peak / 4, rtol=1e-12)


def test_format_policy():
    workload = Workload.from_opt("opt-30b", 512, 32)
    policy = cm.solve_placement(32, 5, workload, T4)
    text = cm.format_policy(policy, cm.predict(policy, workload, T4))
    assert "--gpu-batch-size 32 --num-gpu-batches 5 --percent 12 88 0 100 0 100" in text
    assert "7.09 token/s" in text and "\n" not in text
    p = Policy.from_percent(32, 5, (12, 88, 0, 100, 0, 100))
    assert p.percent() == (12, 88, 0, 100, 0, 100) and p.wn == 0


def test_bad_policy_and_hardware():
    with pytest.raises(ValueError, match=r"weight fractions wg \+ wc \+ wn must sum to 1"):
        Policy(1, 1, 0.5, 0.4, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"Policy.cg must be a fraction in \[0, 1\]"):
        Policy(1, 1, 1.0, 0.0, 0.0, 1.5, -0.5, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="Policy.hn must be 0: the runtime keeps no activations on disk"):
        Policy(1, 1, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.0, 0.5)
    with pytest.raises(ValueError, match="Policy.gpu_batch_size must be a positive integer"):
        Policy(0, 1, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="Hardware.ctog_bdw must be positive; got -1"):
        dataclasses.replace(T4, ctog_bdw=-1.0)
    with pytest.raises(ValueError, match="Hardware.cpu_flops must be a finite number"):
        dataclasses.replace(T4, cpu_flops=float("inf"))
    with pytest.raises(ValueError, match="unknown OPT model 'opt-7b'"):
        Workload.from_opt("opt-7b")
    with pytest.raises(ValueError, match="Workload.prompt_len must be a positive integer"):
        Workload.from_opt("opt-30b", prompt_len=0)
    workload = Workload.from_opt("opt-30b", compress_weight=True)
    with pytest.raises(ValueError, match="policy.compress_weight=False but workload.compress_weight=True"):
        cm.predict(Policy(1, 1, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0), workload, T4)


def test_too_small_budget_states_the_minimum():
    workload = Workload.from_opt("opt-30b", 512, 32)
    small = Hardware.gcp_t4(gpu_mem_gb=16, cpu_mem_gb=20, nvme_mem_gb=20)
    with pytest.raises(
        ValueError, match=r"no offloading policy fits.*needs at least: GPU >= [\d.]+ GiB"
    ) as err:
        cm.search_policy(workload, small)
    message = str(err.value)
    assert "enable compress_weight" in message
    need = float(re.search(r"GPU >= ([\d.]+) GiB", message).group(1))
    # The stated GPU minimum is tight: a little more GPU memory fits, a little less does not.
    assert cm.solve_placement(1, 1, workload, dataclasses.replace(small, gpu_mem=need * 1.001 * cm.GiB))
    assert (
        cm.solve_placement(1, 1, workload, dataclasses.replace(small, gpu_mem=need * 0.999 * cm.GiB)) is None
    )


def test_cache_loaded_onto_the_gpu_when_attention_runs_there():
    """``cpu_cache_compute=False``: every decode step moves the whole cache of the off-GPU sequences
    to the GPU and back, and all attention is GPU compute; a cache on the GPU is charged nothing."""
    on_cpu = Workload.from_opt("opt-6.7b", 512, 32)
    on_gpu = dataclasses.replace(on_cpu, cpu_cache_compute=False)
    h1, s, n, bls = on_cpu.hidden_size, on_cpu.prompt_len, on_cpu.gen_len, 8
    cache_on_host = Policy(4, 2, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    a, b = cm.predict(cache_on_host, on_cpu, T4), cm.predict(cache_on_host, on_gpu, T4)
    full = 4 * bls * (s + n) * h1
    np.testing.assert_allclose(b.terms["ctog_g"] - a.terms["ctog_g"], full / T4.ctog_bdw)
    np.testing.assert_allclose(b.terms["gtoc_g"] - a.terms["gtoc_g"], full / T4.gtoc_bdw_cache)
    mlp = bls * (8 * h1**2 + 4 * h1 * on_cpu.ffn_size) / T4.mm_flops_g
    np.testing.assert_allclose(b.terms["comp_g"], mlp + 4 * bls * (s + n / 2) * h1 / T4.bmm_flops_g)
    # Decode's GPU working set gains the off-GPU half of one GPU batch's cache, double-buffered, and
    # that half's attention buffers. A long generation after a short prompt makes decode the peak.
    long_cpu = Workload.from_opt("opt-6.7b", 8, 2048)
    long_gpu = dataclasses.replace(long_cpu, cpu_cache_compute=False)
    half = Policy(4, 2, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0)
    gbs, nh, ctx = 4, on_cpu.n_heads, 8 + 2048
    attention = gbs * (2 * h1 + 2 * ctx * h1 + 2 * nh * ctx) + gbs * (2 * ctx * h1 + 2 * h1)
    np.testing.assert_allclose(
        cm.predict(half, long_gpu, T4).gpu_peak - cm.predict(half, long_cpu, T4).gpu_peak,
        0.5 * (2 * 4 * gbs * ctx * h1 + attention),
    )
    # With the cache on the GPU the two modes are the same.
    resident = Policy(4, 2, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)
    assert cm.predict(resident, on_cpu, T4).terms == cm.predict(resident, on_gpu, T4).terms
    text = cm.format_policy(cache_on_host, b, on_gpu)
    assert "--cpu-cache-compute" not in text and "--cpu-cache-compute" in cm.format_policy(cache_on_host, a)


def test_call_overhead_adds_one_cost_per_layer_position_and_gpu_batch():
    workload = Workload.from_opt("opt-1.3b", 128, 8)
    policy = Policy(2, 3, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0)
    base = cm.predict(policy, workload, T4)
    slow = cm.predict(policy, workload, dataclasses.replace(T4, call_overhead=1e-3))
    np.testing.assert_allclose(slow.total_time - base.total_time, 1e-3 * 24 * 8 * 3)
    assert slow.terms == base.terms and slow.prefill_time == base.prefill_time


def test_search_respects_max_block_size():
    workload = Workload.from_opt("opt-30b", 512, 32)
    free = cm.search_policy(workload, T4)
    assert free.policy.block_size > 64
    capped = cm.search_policy(workload, T4, max_block_size=64)
    assert capped.policy.block_size <= 64 and capped.prediction.fits
    assert capped.prediction.throughput < free.prediction.throughput
    with pytest.raises(ValueError, match="search_policy.max_block_size must be a positive integer"):
        cm.search_policy(workload, T4, max_block_size=0)


def test_fit_hardware_recovers_the_constants_that_made_the_times():
    """Times predicted by a known machine (T4 at a fifth of its bandwidths and flops, plus a call
    overhead) are fitted from T4's nominal constants: the fitted model reproduces every time, and the
    overhead is found."""
    workload = dataclasses.replace(Workload.from_opt("opt-1.3b", 256, 16), cpu_cache_compute=False)
    scaled = {name: getattr(T4, name) / 5 for group in cm.FIT_GROUPS.values() for name in group}
    truth = dataclasses.replace(T4, call_overhead=2e-3, **scaled)
    policies = [
        Policy.from_percent(1, 1, (100, 0, 100, 0, 100, 0)),
        Policy.from_percent(4, 2, (0, 100, 0, 100, 0, 100)),
        Policy.from_percent(8, 1, (0, 0, 0, 100, 0, 100)),
        Policy.from_percent(2, 4, (50, 50, 100, 0, 100, 0)),
        Policy.from_percent(16, 1, (25, 25, 0, 100, 0, 100)),
        Policy.from_percent(2, 2, (0, 50, 50, 50, 0, 100)),
    ]
    observations = [(p, cm.predict(p, workload, truth).total_time) for p in policies]
    fit = cm.fit_hardware(observations, workload, T4, prior=1e-6)
    assert max(abs(e) for e in fit.errors_before) > 0.5
    assert max(abs(e) for e in fit.errors_after) < 0.02
    np.testing.assert_allclose(fit.hardware.call_overhead, 2e-3, rtol=0.05)
    with pytest.raises(ValueError, match="unknown fit groups"):
        cm.fit_hardware(observations, workload, T4, groups=("pcie",))
    with pytest.raises(ValueError, match="a measured time must be positive and finite"):
        cm.fit_hardware([(policies[0], 0.0)], workload, T4)
    with pytest.raises(ValueError, match="at least one"):
        cm.fit_hardware([], workload, T4)
