"""Grafting: the replacement operators (shapes, causality, identity init, their closed forms), swapping
them into a DiT (self-grafting is exact, the teacher is left alone), the depth-to-width restructuring,
and stage-1 activation distillation, on a tiny DiT (8 x 8 images, patch 2: 16 tokens, width 32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxflash.models import (
    OPERATORS,
    DiT,
    DiTBlock,
    HyenaSE,
    HyenaX,
    HyenaY,
    LinearAttention,
    ParallelDiTBlock,
    SelfAttention,
    SlidingWindowAttention,
    dit_tiny,
    graft,
    interleaved,
    make_operator,
    parallelize,
)

import jaxflash.diffusion as jd
from jaxflash.testing import assert_close, random_normal

CONFIG = dit_tiny(d_model=32, num_heads=2, n_layers=4)
D, HEADS = CONFIG.d_model, CONFIG.num_heads


def tiny_teacher(key: jax.Array, zero_second_of_pairs: bool = False) -> DiT:
    """The tiny DiT in eval mode with its zero-initialised Linears (adaLN modulations, final layer) drawn
    at random, so that no block is the identity and the output is not zero; with
    ``zero_second_of_pairs`` the odd blocks keep adaLN-Zero's zeros (their branches output 0)."""
    model = DiT(CONFIG, rngs=nnx.Rngs(0))
    model.eval()
    layers = [model.final_layer.adaLN_modulation, model.final_layer.linear]
    layers += [b.adaLN_modulation for i, b in enumerate(model.blocks) if not (zero_second_of_pairs and i % 2)]
    for layer, k in zip(layers, jax.random.split(key, len(layers)), strict=True):
        layer.kernel.set_value(random_normal(k, layer.kernel.shape, scale=0.3))
    return model


@nnx.jit
def forward(model, x, t, y):
    return model(x, t, y)


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher(jax.random.key(1))


@pytest.fixture(scope="module")
def batch():
    kx, kt, ky = jax.random.split(jax.random.key(2), 3)
    x = random_normal(kx, (3, CONFIG.input_size, CONFIG.input_size, CONFIG.in_channels))
    return x, jax.random.randint(kt, (3,), 0, 1000), jax.random.randint(ky, (3,), 0, CONFIG.num_classes)


def tokens(key, b: int = 2, t: int = 13, d: int = D):
    return random_normal(key, (b, t, d))


# --- the operators ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_maps_tokens_to_tokens(name, key):
    op = make_operator(name, D, num_heads=HEADS, rngs=nnx.Rngs(0))
    u = tokens(key, t=13)
    y = op(u)
    assert y.shape == u.shape and y.dtype == u.dtype
    assert np.isfinite(np.asarray(y)).all() and float(jnp.abs(y).max()) > 0
    assert_close(nnx.jit(lambda m, u: m(u))(op, u), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [HyenaY, HyenaSE])
def test_inner_convolution_starts_as_identity(cls):
    inner = cls(D, rngs=nnx.Rngs(0)).inner
    expected = np.zeros((4, D), np.float32)
    expected[-1] = 1.0
    np.testing.assert_array_equal(np.asarray(inner.weight[...]), expected)
    np.testing.assert_array_equal(np.asarray(inner.bias[...]), 0.0)
    assert HyenaX(D, rngs=nnx.Rngs(0)).inner is None and HyenaY(D, rngs=nnx.Rngs(0)).featurizer is None


def test_hyena_y_at_init_is_the_gated_linear_map(key):
    """Identity inner filter: Hyena-Y is ``W_out(q . (k . v))`` with ``[q, k, v] = W_in u``, exactly."""
    op = HyenaY(D, rngs=nnx.Rngs(3))
    u = tokens(key)
    dims = (((2,), (0,)), ((), ()))
    z = jax.lax.dot_general(u, op.in_proj.kernel[...], dims) + op.in_proj.bias[...]
    q, k, v = z[..., :D], z[..., D : 2 * D], z[..., 2 * D :]
    expected = jax.lax.dot_general(q * (k * v), op.out_proj.kernel[...], dims) + op.out_proj.bias[...]
    np.testing.assert_array_equal(np.asarray(op(u)), np.asarray(expected))


def test_hyena_se_at_init_is_hyena_x_with_the_same_weights(key):
    se = HyenaSE(D, rngs=nnx.Rngs(4))
    x = HyenaX(D, rngs=nnx.Rngs(5))
    x.in_proj, x.featurizer, x.out_proj = se.in_proj, se.featurizer, se.out_proj
    u = tokens(key)
    np.testing.assert_array_equal(np.asarray(se(u)), np.asarray(x(u)))


@pytest.mark.parametrize("cls", [HyenaX, HyenaY, HyenaSE])
def test_convolutions_are_causal_along_tokens(cls, key, checks):
    op = cls(D, rngs=nnx.Rngs(6))
    if op.inner is not None:  # a random inner filter, so that its causality is what is tested
        op.inner.weight.set_value(random_normal(jax.random.key(8), op.inner.weight.shape))
    checks.causal(op, tokens(key, t=11), cut=5)


def test_sliding_window_attention_sees_w_tokens_each_side(key):
    w, t = 2, 11
    op = SlidingWindowAttention(D, HEADS, window=w, implementation="xla", rngs=nnx.Rngs(0))
    u = tokens(key, t=t)
    j = 5
    y = op(u)
    y2 = op(u.at[:, j].add(1.0))
    moved = np.abs(np.asarray(y2 - y)).max(axis=(0, 2)) > 1e-6
    np.testing.assert_array_equal(moved, np.abs(np.arange(t) - j) <= w)


def test_sliding_window_covering_all_tokens_is_full_attention(key):
    t = 13
    swa = SlidingWindowAttention(D, HEADS, window=t - 1, implementation="xla", rngs=nnx.Rngs(0))
    mha = SelfAttention(D, HEADS, implementation="xla", rngs=nnx.Rngs(1))
    nnx.update(mha, nnx.state(swa, nnx.Param))
    u = tokens(key, t=t)
    assert_close(swa(u), mha(u), atol=1e-5, rtol=1e-5)


def test_linear_attention_matches_the_quadratic_form(key):
    op = LinearAttention(D, HEADS, rngs=nnx.Rngs(0))
    u = tokens(key)
    b, t, _ = u.shape
    qkv = op.qkv(u).reshape(b, t, 3, HEADS, D // HEADS)
    q, k, v = (np.asarray(qkv[:, :, i], np.float64) for i in range(3))
    phi_q, phi_k = (np.where(x > 0, x + 1, np.exp(x)) for x in (q, k))
    a = np.einsum("bqhd,bkhd->bhqk", phi_q, phi_k)
    y = np.einsum("bhqk,bkhd->bqhd", a, v) / (a.sum(-1).transpose(0, 2, 1)[..., None] + 1e-6)
    expected = op.proj(jnp.asarray(y.reshape(b, t, D), jnp.float32))
    assert_close(op(u), expected, atol=1e-5, rtol=1e-5)


# --- grafting into a DiT ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["attn", "mlp"])
def test_grafting_copies_of_the_operators_reproduces_the_model(kind, teacher, batch):
    expected = forward(teacher, *batch)
    grafted = teacher
    for i in range(CONFIG.n_layers):
        grafted = graft(
            grafted, i, kind=kind, operator=lambda i=i: nnx.clone(getattr(teacher.blocks[i], kind))
        )
        assert getattr(grafted.blocks[i], kind) is not getattr(teacher.blocks[i], kind)
    np.testing.assert_array_equal(np.asarray(forward(grafted, *batch)), np.asarray(expected))


def test_graft_replaces_only_the_chosen_blocks_and_leaves_the_teacher(teacher, batch):
    before = forward(teacher, *batch)
    grafted = graft(teacher, interleaved(4, 0.5), kind="attn", operator="swa", rngs=nnx.Rngs(0), window=1)
    assert [type(b.attn) for b in grafted.blocks] == [SelfAttention, SlidingWindowAttention] * 2
    assert grafted.blocks[1].attn.window == 1 and grafted.blocks[1].attn.implementation == "xla"
    assert all(type(b.attn) is SelfAttention for b in teacher.blocks)
    out = forward(grafted, *batch)
    assert out.shape == before.shape and float(jnp.abs(out - before).max()) > 1e-4
    np.testing.assert_array_equal(np.asarray(forward(teacher, *batch)), np.asarray(before))
    linear = graft(teacher, 1, kind="attn", operator="linear_attention", rngs=nnx.Rngs(0))
    assert linear.blocks[1].attn.implementation is None  # the config's names a softmax attention
    mlps = graft(teacher, [3, 0], kind="mlp", operator="mlp", rngs=nnx.Rngs(0), ratio=3)
    assert [b.mlp.fc1.out_features for b in mlps.blocks] == [96, 128, 128, 96]


def test_interleaved_patterns():
    assert interleaved(28, 0.5) == list(range(1, 28, 2))
    seventy_five = interleaved(28, 0.75)
    assert len(seventy_five) == 21 and seventy_five == [i for i in range(28) if i % 4]
    assert interleaved(6, 1.0) == list(range(6)) and interleaved(6, 0.0) == []


# --- depth to width -------------------------------------------------------------------------------------


def test_parallel_block_adds_both_residual_branches(teacher, key):
    first, second = teacher.blocks[0], teacher.blocks[1]
    kx, kc = jax.random.split(key)
    x, c = tokens(kx, b=2, t=CONFIG.num_patches), random_normal(kc, (2, D))
    expected = x + (first(x, c) - x) + (second(x, c) - x)
    assert_close(ParallelDiTBlock(first, second)(x, c), expected, atol=1e-5, rtol=1e-5)


def test_parallelize_equals_the_sequential_model_when_second_branches_are_zero(batch):
    model = tiny_teacher(jax.random.key(9), zero_second_of_pairs=True)
    parallel = parallelize(model)
    assert len(parallel.blocks) == 2 and parallel.config.n_layers == 2
    assert all(isinstance(b, ParallelDiTBlock) for b in parallel.blocks)
    assert all(isinstance(b, DiTBlock) for b in model.blocks) and len(model.blocks) == 4

    def count(m):
        return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(m, nnx.Param)))

    assert count(parallel) == count(model)
    # Op by op (eager) the arithmetic is the same; compiled, the two programs fuse differently (ulps apart).
    np.testing.assert_array_equal(np.asarray(parallel(*batch)), np.asarray(model(*batch)))


def test_parallelize_changes_a_general_model(teacher, batch):
    out = forward(parallelize(teacher), *batch)
    assert out.shape == batch[0].shape[:3] + (CONFIG.out_channels,)
    assert float(jnp.abs(out - forward(teacher, *batch)).max()) > 1e-4


# --- stage 1 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def activations(teacher):
    kx, ky = jax.random.split(jax.random.key(10))
    images = random_normal(kx, (40, CONFIG.input_size, CONFIG.input_size, CONFIG.in_channels))
    labels = jax.random.randint(ky, (40,), 0, CONFIG.num_classes)
    diffusion = jd.create_diffusion("")
    kind_acts = {
        kind: jd.collect_activations(
            teacher, diffusion, images, labels, [1, 2], kind, key=jax.random.key(11), batch_size=20
        )
        for kind in ("attn", "mlp")
    }
    return kind_acts


def test_collected_activations_are_the_teachers_operator(teacher, activations):
    acts = activations["attn"][1]
    assert acts.inputs.shape == acts.targets.shape == (40, CONFIG.num_patches, D)
    assert acts.t.shape == (40,) and acts.t.min() >= 0 and acts.t.max() < 1000 and len(set(acts.t)) > 10
    assert_close(teacher.blocks[1].attn(jnp.asarray(acts.inputs[:4])), acts.targets[:4], atol=1e-5, rtol=1e-5)
    mlp = activations["mlp"][2]
    assert_close(teacher.blocks[2].mlp(jnp.asarray(mlp.inputs[:4])), mlp.targets[:4], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(acts.t, mlp.t)  # one key, one draw of t and noise, whatever is recorded


@pytest.mark.parametrize(
    "kind, block, make",
    [
        ("attn", 1, lambda: HyenaY(D, rngs=nnx.Rngs(0))),
        ("mlp", 2, lambda: make_operator("mlp", D, rngs=nnx.Rngs(0), ratio=2.0)),
    ],
)
def test_distillation_lowers_the_held_out_mse(kind, block, make, activations):
    acts = activations[kind][block]
    train, held_out = slice(0, 32), slice(32, 40)
    op = make()
    before = [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(op, nnx.Param))]
    trained, history = jd.distill_operator(
        op,
        acts.inputs[train],
        acts.targets[train],
        key=jax.random.key(0),
        loss="l1",
        steps=40,
        batch_size=8,
        lr=1e-2,
        validation=(acts.inputs[held_out], acts.targets[held_out]),
        eval_every=10,
    )
    assert history["step"] == [0, 10, 20, 30, 40] and len(history["train_loss"]) == 40
    zero_baseline = float(np.mean(np.square(acts.targets[held_out])))
    assert history["val_mse"][-1] < 0.5 * history["val_mse"][0]
    assert history["val_mse"][-1] < zero_baseline
    assert history["train_mse"][-1] < history["train_mse"][0]
    mse = float(
        np.mean(np.square(np.asarray(trained(jnp.asarray(acts.inputs[held_out]))) - acts.targets[held_out]))
    )
    assert mse == pytest.approx(history["val_mse"][-1], rel=1e-4)
    for old, leaf in zip(before, jax.tree.leaves(nnx.state(op, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), old)  # the operator passed in is not trained


@pytest.mark.parametrize("loss", ["l1", "l2", "huber"])
def test_every_regression_loss_trains(loss, activations):
    acts = activations["mlp"][2]
    _, history = jd.distill_operator(
        make_operator("mlp", D, rngs=nnx.Rngs(0), ratio=1.0),
        acts.inputs[:16],
        acts.targets[:16],
        key=jax.random.key(1),
        loss=loss,
        huber_delta=0.5,
        steps=6,
        batch_size=8,
        lr=1e-2,
    )
    assert np.isfinite(history["train_loss"]).all() and history["train_mse"][-1] < history["train_mse"][0]
    assert "val_mse" not in history


def test_regression_losses_by_hand():
    pred, target = jnp.array([0.0, 0.2, -3.0]), jnp.zeros(3)
    assert_close(jd.regression_loss(pred, target, "l1"), jnp.array([0.0, 0.2, 3.0]))
    assert_close(jd.regression_loss(pred, target, "l2"), jnp.array([0.0, 0.04, 9.0]))
    assert_close(jd.regression_loss(pred, target, "huber", 1.0), jnp.array([0.0, 0.02, 2.5]))


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_arguments_name_themselves(teacher, activations):
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="operator='mamba2'.*hyena_y"):
        make_operator("mamba2", D, num_heads=HEADS, rngs=rngs)
    with pytest.raises(ValueError, match="operator='mamba2'"):
        graft(teacher, 1, kind="attn", operator="mamba2", rngs=rngs)
    with pytest.raises(ValueError, match=r"indices=\[1, 4\].*\[0, 4\)"):
        graft(teacher, [1, 4], kind="attn", operator="hyena_y", rngs=rngs)
    with pytest.raises(ValueError, match="indices=-1"):
        graft(teacher, -1, kind="mlp", operator="mlp", rngs=rngs)
    with pytest.raises(ValueError, match="kind='ffn'"):
        graft(teacher, 1, kind="ffn", operator="mlp", rngs=rngs)
    with pytest.raises(ValueError, match="num_heads"):
        make_operator("swa", D, rngs=rngs)
    with pytest.raises(ValueError, match="fraction"):
        interleaved(8, 1.5)
    with pytest.raises(ValueError, match="odd"):
        parallelize(DiT(dit_tiny(d_model=32, num_heads=2, n_layers=3), rngs=rngs))
    with pytest.raises(ValueError, match="indices"):
        graft(parallelize(teacher), 0, kind="attn", operator="hyena_y", rngs=rngs)
    diffusion = jd.create_diffusion("")
    images, labels = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="kind='ffn'"):
        jd.collect_activations(teacher, diffusion, images, labels, [1], "ffn", key=jax.random.key(0))
    with pytest.raises(ValueError, match="indices"):
        jd.collect_activations(teacher, diffusion, images, labels, [7], "attn", key=jax.random.key(0))
    acts = activations["mlp"][2]
    with pytest.raises(ValueError, match="loss='l3'"):
        jd.distill_operator(
            HyenaY(D, rngs=rngs), acts.inputs, acts.targets, key=jax.random.key(0), loss="l3", steps=1
        )


# --- stage 2 ------------------------------------------------------------------------------------------


def test_finetune_lowers_the_diffusion_loss_of_a_grafted_model_and_keeps_the_input(teacher):
    diffusion = jd.create_diffusion("", diffusion_steps=100)
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(0, 0.5, (32, CONFIG.input_size, CONFIG.input_size, 1)), -1, 1).astype(
        np.float32
    )
    images[:16, 2:6, 3:5] = 1.0  # two classes the model can tell apart
    labels = np.repeat([0, 1], 16).astype(np.int32)
    student = graft(teacher, [1, 3], kind="attn", operator="hyena_y", rngs=nnx.Rngs(3))
    before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(student, nnx.Param))]
    trained, ema, losses = jd.finetune(
        student,
        diffusion,
        images,
        labels,
        key=jax.random.key(0),
        steps=40,
        batch_size=8,
        lr=1e-3,
        ema_decay=0.0,
    )
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert isinstance(trained.blocks[1].attn, HyenaY) and trained.y_embedder.deterministic  # eval mode
    for a, b in zip(before, jax.tree.leaves(nnx.state(student, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)  # the input model is unchanged
    # ema_decay 0: the average is the last weights.
    for a, b in zip(
        jax.tree.leaves(nnx.state(trained, nnx.Param)),
        jax.tree.leaves(nnx.state(ema, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="labels"):
        jd.finetune(student, diffusion, images, labels[:3], key=jax.random.key(0), steps=1)
