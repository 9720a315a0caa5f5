"""The papers' optimizer parameter groups: each parameter kind's label, each group's learning rate and
weight decay, and refusals of learning rates and decays that cannot train."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jaxflash.models import LanguageModel, Parcae, parcae_tiny, tiny_lm
from jaxflash.train import GROUPS, make_optimizer, param_labels

from jaxflash.testing import assert_close


def _labels_by_name(model):
    return {"/".join(map(str, path)): label for path, label in param_labels(model).items()}


def test_param_labels_follow_the_papers():
    h3 = _labels_by_name(LanguageModel(tiny_lm("h3", attn_layer_idx=(1,)), rngs=nnx.Rngs(0)))
    m = "blocks/0/mixer/"
    for name in (
        "diag_kernel/log_dt",
        "diag_kernel/inv_A_real",
        "diag_kernel/A_imag",
        "diag_kernel/B",
        "shift_kernel/B",
    ):
        assert h3[m + name] == "ssm", name
    for name in ("diag_kernel/C", "shift_kernel/C", "q_proj/kernel", "D", "D_k"):
        assert h3[m + name] == "default", name
    assert h3[m + "q_proj/bias"] == "no_decay" and h3["blocks/0/norm1/scale"] == "no_decay"
    assert h3["embed/embedding"] == "default" and h3["blocks/1/mixer/q_proj/kernel"] == "default"
    hy = _labels_by_name(LanguageModel(tiny_lm("hyena"), rngs=nnx.Rngs(0)))
    f = "blocks/0/mixer/filter/"
    assert hy[f + "z"] == "pos_emb" and hy[f + "freq"] == "filter" and hy[f + "bias"] == "no_decay"
    assert hy[f + "ffn/first/kernel"] == "filter" and hy[f + "ffn/last/kernel"] == "filter"
    assert hy["blocks/0/mixer/in_proj/kernel"] == "default"
    lc = _labels_by_name(LanguageModel(tiny_lm("long_conv"), rngs=nnx.Rngs(0)))
    assert lc["blocks/0/mixer/kernel/kernel"] == "ssm"
    pa = _labels_by_name(Parcae(parcae_tiny(), rngs=nnx.Rngs(0)))
    for name in ("core/injection/A_log", "core/injection/dt_bias", "core/injection/B", "C/kernel"):
        assert pa[name] == "no_decay", name
    assert set(h3.values()) | set(hy.values()) | set(lc.values()) <= set(GROUPS)


def _get(state, path):
    node = state
    for p in path:
        node = node[p]
    return jnp.asarray(node[...])


def test_optimizer_groups_take_their_own_learning_rate():
    model = LanguageModel(tiny_lm("h3"), rngs=nnx.Rngs(0))
    lr, ssm_lr = 1e-2, 1e-3
    opt = nnx.Optimizer(model, make_optimizer(model, lr=lr, ssm_lr=ssm_lr, weight_decay=0.0), wrt=nnx.Param)
    before = jax.tree.map(lambda x: x, nnx.state(model, nnx.Param))
    opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    after = nnx.state(model, nnx.Param)

    def moved(*path):
        return float(jnp.max(jnp.abs(_get(after, path) - _get(before, path))))

    # Adam's first step moves every coordinate with a constant gradient by its group's lr.
    assert moved("blocks", 0, "mixer", "diag_kernel", "log_dt") == pytest.approx(ssm_lr, rel=1e-3)
    assert moved("blocks", 0, "mixer", "q_proj", "kernel") == pytest.approx(lr, rel=1e-3)
    # Weight decay reaches the default group only.
    opt = nnx.Optimizer(model, make_optimizer(model, lr=lr, weight_decay=0.5), wrt=nnx.Param)
    zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    w = _get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "q_proj", "kernel"))
    a = _get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "diag_kernel", "A_imag"))
    opt.update(model, zero)
    assert_close(
        _get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "q_proj", "kernel")), w * (1 - lr * 0.5)
    )
    assert_close(_get(nnx.state(model, nnx.Param), ("blocks", 0, "mixer", "diag_kernel", "A_imag")), a)
    assert isinstance(make_optimizer(model, lr=lr), optax.GradientTransformation)


@pytest.fixture(scope="module")
def small_model():
    return LanguageModel(tiny_lm("attention", n_layers=1), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-1e-3), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr=float("inf")), "lr"),
        (dict(lr=1e-3, ssm_lr=0.0), "ssm_lr"),
        (dict(lr=1e-3, filter_lr=float("nan")), "filter_lr"),
        (dict(lr=1e-3, pos_emb_lr=-1.0), "pos_emb_lr"),
        (dict(lr=1e-3, weight_decay=-0.1), "weight_decay"),
        (dict(lr=1e-3, weight_decay=float("nan")), "weight_decay"),
        (dict(lr=1e-3, filter_weight_decay=-1.0), "filter_weight_decay"),
        (dict(lr=1e-3, b2=1.0), "b2"),
    ],
)
def test_make_optimizer_refuses_rates_that_cannot_train(small_model, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        make_optimizer(small_model, **kwargs)
