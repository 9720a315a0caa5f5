"""jaxflash.inference.offload: the offloaded engine generates the same greedy tokens as in-memory
generation for every placement tried (weights fully on disk included), loads each offloaded layer once
per block, honours a device budget smaller than the model, compresses, and refuses bad set-ups."""

import numpy as np
import pytest
from flax import nnx
from jaxflash.models import LanguageModel, LMConfig

from jaxflash.inference import generate
from jaxflash.inference.cost_model import Policy
from jaxflash.inference.offload import OffloadedLM

PROMPT, NEW = 5, 6


@pytest.fixture(scope="module")
def model():
    config = LMConfig(vocab_size=64, d_model=32, n_layers=3, max_seq_len=32, mixer="attention")
    m = LanguageModel(config, rngs=nnx.Rngs(0))
    m.eval()
    return m


@pytest.fixture(scope="module")
def prompts():
    return np.random.default_rng(0).integers(64, size=(4, PROMPT)).astype(np.int32)


@pytest.fixture(scope="module")
def expected(model, prompts):
    return np.asarray(generate(model, prompts, NEW, temperature=0.0).tokens)[:, PROMPT : PROMPT + NEW]


PLACEMENTS = {
    # gbs, nb, (wg, wc, wn), (cg, cc, cn), (hg, hc)
    "all on device": (2, 2, (1, 0, 0), (1, 0, 0), (1, 0)),
    "weights on disk": (2, 2, (0, 0, 1), (0, 1, 0), (0.5, 0.5)),
    "weights and cache on disk": (4, 1, (0, 0, 1), (0, 0, 1), (0, 1)),
    "split three ways": (1, 4, (0.3, 0.3, 0.4), (0.25, 0.25, 0.5), (0.5, 0.5)),
}


def _policy(gbs, nb, w, c, h, **flags):
    return Policy(gbs, nb, *w, *c, *h, 0.0, **flags)


@pytest.mark.parametrize("name", list(PLACEMENTS))
@pytest.mark.parametrize("overlap", [True, False])
def test_same_greedy_tokens_as_in_memory_generation(model, prompts, expected, tmp_path, name, overlap):
    gbs, nb, w, c, h = PLACEMENTS[name]
    engine = OffloadedLM(model, _policy(gbs, nb, w, c, h), offload_dir=tmp_path, overlap=overlap)
    baseline = engine.meter.now
    tokens, stats = engine.generate(prompts, NEW)
    np.testing.assert_array_equal(tokens, expected)
    assert engine.meter.now == baseline, "the device meter did not return to what the engine keeps resident"
    assert stats.device_peak_bytes <= engine.worst_case_device_bytes()
    offloaded = w[0] < 1
    # Each offloaded layer is loaded once per position for the whole block, not once per GPU batch.
    assert stats.weight_loads == (3 * NEW if offloaded else 0)
    if w[2] == 1:
        assert stats.disk_to_device_bytes >= 3 * NEW * engine.layer_bytes
    engine.close()
    assert not any(tmp_path.glob("tensor-*.bin")), "disk-tier files left behind"


def test_a_device_budget_smaller_than_the_model_is_honoured(prompts, tmp_path):
    config = LMConfig(vocab_size=64, d_model=32, n_layers=16, max_seq_len=32, mixer="attention")
    model = LanguageModel(config, rngs=nnx.Rngs(1))
    model.eval()
    expected = np.asarray(generate(model, prompts, NEW, temperature=0.0).tokens)[:, PROMPT : PROMPT + NEW]
    policy = _policy(2, 2, (0, 0.5, 0.5), (0, 1, 0), (0, 1))
    probe = OffloadedLM(model, policy, offload_dir=tmp_path)
    budget = probe.worst_case_device_bytes()
    # The bound counts the layer's XLA workspace, which the meter holds while the layer computes.
    assert 0 < probe.workspace_bytes(2, PROMPT) <= probe.workspace_bytes(2, config.max_seq_len - 1)
    probe.close()
    engine = OffloadedLM(model, policy, offload_dir=tmp_path, device_budget=budget)
    assert budget < engine.model_bytes / 3
    tokens, stats = engine.generate(prompts, NEW)
    np.testing.assert_array_equal(tokens, expected)
    assert stats.device_peak_bytes <= budget
    engine.close()


def test_a_budget_too_small_for_any_policy_names_the_minimum(model, tmp_path):
    policy = _policy(2, 2, (1, 0, 0), (1, 0, 0), (1, 0))
    probe = OffloadedLM(
        model, _policy(1, 1, (0, 0, 1), (0, 0, 1), (0, 1)), offload_dir=tmp_path, overlap=False
    )
    minimum = probe.minimum_device_bytes()
    probe.close()
    with pytest.raises(ValueError, match=f"the minimum for any policy on this model is {minimum} bytes"):
        OffloadedLM(model, policy, offload_dir=tmp_path, device_budget=minimum // 2)


def test_compression_moves_about_a_quarter_of_the_bytes(model, prompts, tmp_path):
    policy = dict(gbs=2, nb=2, w=(0, 1, 0), c=(0, 1, 0), h=(1, 0))
    plain = OffloadedLM(model, _policy(*policy.values()), offload_dir=tmp_path)
    packed = OffloadedLM(
        model, _policy(*policy.values(), compress_weight=True, compress_cache=True), offload_dir=tmp_path
    )
    tokens_plain, moved_plain = plain.generate(prompts, NEW)
    tokens_packed, moved_packed = packed.generate(prompts, NEW)
    ratio = moved_packed.host_to_device_bytes / moved_plain.host_to_device_bytes
    assert 0.2 < ratio < 0.4, ratio
    assert tokens_packed.shape == tokens_plain.shape
    plain.close()
    packed.close()


def test_bad_set_ups_raise(model, prompts, tmp_path):
    policy = _policy(2, 2, (0, 1, 0), (0, 1, 0), (1, 0))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="not a writable directory"):
        OffloadedLM(model, policy, offload_dir=blocker / "sub")
    with pytest.raises(ValueError, match="Policy"):
        OffloadedLM(model, {"wg": 1.0})
    engine = OffloadedLM(model, policy, offload_dir=tmp_path)
    with pytest.raises(ValueError, match="GPU batches of 2"):
        engine.generate(prompts[:3], NEW)
    with pytest.raises(ValueError, match="exceeds max_len"):
        engine.generate(prompts, 40)
    engine.close()
