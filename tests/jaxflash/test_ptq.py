"""jaxflash.quant.ptq: post-training quantization of a model's Linear kernels (and nothing else)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import LanguageModel, LMConfig

from jaxflash.quant import dequantize, quantize
from jaxflash.quant.ptq import quantize_kernels, quantize_model


def _model():
    config = LMConfig(vocab_size=64, d_model=32, n_layers=2, max_seq_len=16, mixer="attention")
    return LanguageModel(config, rngs=nnx.Rngs(0))


def test_quantize_model_rounds_exactly_the_linear_kernels_along_their_inputs():
    model = _model()
    before = nnx.state(model, nnx.Param)
    quantized, report = quantize_model(model, "mxfp4")
    after = nnx.state(quantized, nnx.Param)
    assert len(report.paths) == 12  # q, k, v, out and the two MLP kernels, in two blocks
    assert all(p.endswith("kernel") for p in report.paths)
    kernel = before["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()
    expected = dequantize(quantize(kernel, "mxfp4", axis=0))
    np.testing.assert_array_equal(
        np.asarray(after["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()), np.asarray(expected)
    )
    # Embeddings, norms and biases are untouched; the original model is left as it was.
    np.testing.assert_array_equal(
        np.asarray(after["embed"]["embedding"].get_value()),
        np.asarray(before["embed"]["embedding"].get_value()),
    )
    np.testing.assert_array_equal(
        np.asarray(after["blocks"][1]["mlp"]["fc1"]["bias"].get_value()),
        np.asarray(before["blocks"][1]["mlp"]["fc1"]["bias"].get_value()),
    )
    np.testing.assert_array_equal(
        np.asarray(nnx.state(model, nnx.Param)["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()),
        np.asarray(kernel),
    )
    tokens = jnp.arange(16)[None] % 64
    assert not np.allclose(np.asarray(model(tokens)), np.asarray(quantized(tokens)))
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(quantized(tokens)), atol=0.1)


def test_report_counts_bits_and_error():
    _, report = quantize_model(_model(), "nvfp4", scale_search=8)
    assert report.elements == 2 * (4 * 32 * 32 + 2 * 32 * 128)
    assert 4.5 <= report.bits_per_weight < 4.6  # 4 bits + one 8-bit scale per 16 (+ the tensor scales)
    _, searched_not = quantize_model(_model(), "nvfp4")
    assert 0 < report.squared_error < searched_not.squared_error


def test_a_tree_without_linear_kernels_is_refused():
    with pytest.raises(ValueError, match="no 2-D 'kernel'"):
        quantize_kernels({"embedding": jnp.ones((4, 4))}, "int4")
