"""The contrastive losses against float64 double-loop references written from the equations of
``jaxflash.losses.contrastive``: values on random inputs with unknown labels and masks, the no-anchor
cases, gradients by finite differences, stability at temperature 0.01, jit and vmap, and the errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflash.losses import (
    class_conditional_infonce,
    multiple_negatives_ranking_loss,
    orthogonal_projection_loss,
    spread_loss,
    supcon_loss,
    tabi_entity_loss,
    tabi_loss,
    tabi_type_loss,
    tabi_type_mask,
)
from jaxflash.testing import assert_close

# --- float64 references: one loop per sum in the equations -------------------------------------------


def _lse(values):
    return np.logaddexp.reduce(np.asarray(values, np.float64))


def _ref_supcon_from(s, same, is_anchor, candidates, positives_in_denominator):
    """Mean over anchors of -(1/|P|) sum_p log(e^{s_ap} / sum_{b in D(a,p)} e^{s_ab}); 0 without anchors."""
    per_anchor = []
    for a in range(len(s)):
        if not is_anchor(a):
            continue
        cands = candidates(a)
        pos = [p for p in cands if same(a, p)]
        neg = [b for b in cands if not same(a, b)]
        if not pos:
            continue
        terms = []
        for p in pos:
            denominator = cands if positives_in_denominator else [p, *neg]
            terms.append(s[a, p] - _lse([s[a, b] for b in denominator]))
        per_anchor.append(-np.mean(terms))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def ref_supcon(z, labels, tau, positives_in_denominator=True, mask=None):
    z = np.asarray(z, np.float64)
    n = len(z)
    keep = np.ones(n, bool) if mask is None else np.asarray(mask)
    return _ref_supcon_from(
        z @ z.T / tau,
        lambda a, b: labels[a] >= 0 and labels[a] == labels[b],
        lambda a: keep[a] and labels[a] >= 0,
        lambda a: [b for b in range(n) if b != a and keep[b]],
        positives_in_denominator,
    )


def ref_cnce(u, v, labels, tau):
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    n = len(u)

    def one_direction(x, y):
        num = x @ y.T / tau
        total = 0.0
        for b in range(n):
            same_class = [c for c in range(n) if c == b or (labels[b] >= 0 and labels[c] == labels[b])]
            total += -num[b, b] + _lse([num[b, c] for c in same_class])
        return total / n

    return (one_direction(u, v) + one_direction(v, u)) / 2


def ref_spread(u, v, labels, tau, alpha):
    z = np.concatenate([np.asarray(u, np.float64), np.asarray(v, np.float64)])
    n2 = len(z)
    both = np.concatenate([labels, labels])
    supcon = _ref_supcon_from(
        z @ z.T / tau,
        lambda a, b: b == (a + n2 // 2) % n2 or (both[a] >= 0 and both[a] == both[b]),
        lambda a: True,
        lambda a: [b for b in range(n2) if b != a],
        False,
    )
    return (1 - alpha) * supcon + alpha * ref_cnce(u, v, labels, tau)


def ref_type_same(types_a, types_b, equivalence):
    ta, tb = set(np.flatnonzero(types_a)), set(np.flatnonzero(types_b))
    if not ta or not tb:
        return False
    if equivalence == "strict":
        return ta == tb
    return len(ta & tb) > 0.5 * max(len(ta), len(tb))


def ref_tabi_type(q, types, tau, equivalence):
    q = np.asarray(q, np.float64)
    n = len(q)
    return tau * _ref_supcon_from(
        q @ q.T / tau,
        lambda a, b: ref_type_same(types[a], types[b], equivalence),
        lambda a: types[a].any(),
        lambda a: [b for b in range(n) if b != a],
        False,
    )


def ref_tabi_entity(q, e, query_labels, entity_labels, tau):
    z = np.concatenate([np.asarray(q, np.float64), np.asarray(e, np.float64)])
    return tau * ref_supcon(z, np.concatenate([query_labels, entity_labels]), tau, False)


def _ref_cos(x, y):
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def ref_opl(q, d, relevance):
    q, d, relevance = (np.asarray(x, np.float64) for x in (q, d, relevance))
    terms = [(_ref_cos(q[i], d[j]) - relevance[i, j]) ** 2 for i in range(len(q)) for j in range(len(d))]
    return float(np.mean(terms))


def ref_mnrl(q, d, scale):
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    total = 0.0
    for i in range(len(q)):
        scores = [scale * _ref_cos(q[i], d[j]) for j in range(len(d))]
        total += _lse(scores) - scores[i]
    return total / len(q)


# --- inputs ----------------------------------------------------------------------------------------------


@pytest.fixture
def rng(key):
    """A NumPy generator of this test's own (inputs drawn in NumPy compile nothing)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def _rows(rng, n, d, norm=1.0):
    """n random rows of L2 norm ``norm`` (float32)."""
    x = rng.standard_normal((n, d))
    return (norm * x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _labels(rng, n, num_classes=3):
    """Labels in {-1 (unknown), 0, ..., num_classes - 1}."""
    return rng.integers(-1, num_classes, n).astype(np.int32)


def _types(rng, n):
    """Multi-hot type sets drawn from few patterns, so that strict and weak matches both occur."""
    patterns = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], np.int32)
    return patterns[rng.integers(0, len(patterns), n)]


# A case: make(rng, norm) -> (float args, other args); fn(*floats, *others) -> loss; ref the same in float64.
TAU = 0.2


def _make_supcon(rng, norm):
    return (_rows(rng, 9, 4, norm),), (_labels(rng, 9),)


def _make_two_views(rng, norm):
    return (_rows(rng, 7, 4, norm), _rows(rng, 7, 4, norm)), (_labels(rng, 7),)


def _make_tabi(rng, norm):
    q, e = _rows(rng, 6, 4, norm), _rows(rng, 5, 4, norm)
    entity_labels = rng.integers(0, 4, 5).astype(np.int32)
    entity_labels[-1] = -1
    return (q, e), (_types(rng, 6), _labels(rng, 6, 4), entity_labels)


def _make_retrieval(rng, norm):
    q, d = _rows(rng, 5, 4, norm), _rows(rng, 8, 4, norm)
    return (q, d), ((rng.random((5, 8)) < 0.3).astype(np.float32),)


CASES = {
    "supcon": (
        _make_supcon,
        lambda z, y, tau=TAU: supcon_loss(z, y, temperature=tau),
        lambda z, y, tau=TAU: ref_supcon(z, y, tau, True),
    ),
    "supcon_no_positives_in_denominator": (
        _make_supcon,
        lambda z, y, tau=TAU: supcon_loss(z, y, temperature=tau, positives_in_denominator=False),
        lambda z, y, tau=TAU: ref_supcon(z, y, tau, False),
    ),
    "class_conditional_infonce": (
        _make_two_views,
        lambda u, v, y, tau=TAU: class_conditional_infonce(u, v, y, temperature=tau),
        lambda u, v, y, tau=TAU: ref_cnce(u, v, y, tau),
    ),
    "spread": (
        _make_two_views,
        lambda u, v, y, tau=TAU: spread_loss(u, v, y, temperature=tau, alpha=0.3),
        lambda u, v, y, tau=TAU: ref_spread(u, v, y, tau, 0.3),
    ),
    "tabi_entity": (
        _make_tabi,
        lambda q, e, t, ql, el, tau=TAU: tabi_entity_loss(q, e, ql, el, temperature=tau),
        lambda q, e, t, ql, el, tau=TAU: ref_tabi_entity(q, e, ql, el, tau),
    ),
    "tabi_type_weak": (
        _make_tabi,
        lambda q, e, t, ql, el, tau=TAU: tabi_type_loss(q, t, temperature=tau, equivalence="weak"),
        lambda q, e, t, ql, el, tau=TAU: ref_tabi_type(q, t, tau, "weak"),
    ),
    "tabi": (
        _make_tabi,
        lambda q, e, t, ql, el, tau=TAU: tabi_loss(q, e, t, ql, el, temperature=tau, alpha=0.25),
        lambda q, e, t, ql, el, tau=TAU: (
            0.25 * ref_tabi_type(q, t, tau, "strict") + 0.75 * ref_tabi_entity(q, e, ql, el, tau)
        ),
    ),
    "orthogonal_projection": (_make_retrieval, orthogonal_projection_loss, ref_opl),
    "multiple_negatives_ranking": (
        _make_retrieval,
        lambda q, d, y, scale=20.0: multiple_negatives_ranking_loss(q, d, scale=scale),
        lambda q, d, y, scale=20.0: ref_mnrl(q, d, scale),
    ),
}
# The cases with a temperature (MNRL's scale plays its part in the stability test).
TEMPERATURE_CASES = [
    name for name in CASES if name not in ("orthogonal_projection", "multiple_negatives_ranking")
]


def _tau(name, tau=TAU):
    return {"tau": tau} if name in TEMPERATURE_CASES else {}


@functools.cache
def _value_and_grad(name):
    """The case's loss and its gradients with respect to the float args, jitted once per case and shared
    by the tests below (the temperature is traced, so one compilation serves every temperature)."""
    make, fn, _ = CASES[name]
    n_floats = len(make(np.random.default_rng(0), 1.0)[0])
    return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(n_floats))))


# --- values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", CASES)
def test_matches_reference(key, name, seed):
    make, fn, ref = CASES[name]
    floats, others = make(np.random.default_rng([*np.asarray(jax.random.key_data(key)), seed]), 1.0)
    value, grads = _value_and_grad(name)(*floats, *others, **_tau(name))
    assert_close(value, ref(*floats, *others), atol=1e-5, rtol=1e-5)
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("positives_in_denominator", [True, False])
def test_supcon_mask_and_temperature_scaling(key, seed, positives_in_denominator):
    rng = np.random.default_rng([*np.asarray(jax.random.key_data(key)), seed])
    z, y = _rows(rng, 10, 3), _labels(rng, 10)
    mask = rng.random(10) < 0.7
    loss = jax.jit(
        functools.partial(supcon_loss, temperature=0.3, positives_in_denominator=positives_in_denominator),
        static_argnames="scale_by_temperature",
    )
    ref = ref_supcon(z, y, 0.3, positives_in_denominator, mask)
    assert_close(loss(z, y, mask=mask), ref, atol=1e-5, rtol=1e-5)
    assert_close(loss(z, y, mask=mask, scale_by_temperature=True), 0.3 * ref, atol=1e-5, rtol=1e-5)


def test_supcon_single_positive_known_value():
    # Anchors 0 and 1 (each other's only positive); 2 has no positive; 3 is unknown but a negative of both.
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2]], np.float32)
    y = np.array([0, 0, 1, -1])
    s = z.astype(np.float64) @ z.T.astype(np.float64) / 0.5
    anchor0 = -(s[0, 1] - np.log(np.exp(s[0, [1, 2, 3]]).sum()))
    anchor1 = -(s[1, 0] - np.log(np.exp(s[1, [0, 2, 3]]).sum()))
    for positives_in_denominator in (True, False):  # one positive: the two forms agree
        got = supcon_loss(z, y, temperature=0.5, positives_in_denominator=positives_in_denominator)
        assert_close(got, (anchor0 + anchor1) / 2, atol=1e-6, rtol=1e-6)


def test_spread_endpoints(rng):
    u, v = _rows(rng, 8, 5), _rows(rng, 8, 5)
    y = rng.integers(0, 3, 8).astype(np.int32)  # all known: the views share a label
    supcon = jax.jit(functools.partial(supcon_loss, temperature=0.5, positives_in_denominator=False))
    spread = jax.jit(spread_loss, static_argnames="alpha")
    expected = supcon(np.concatenate([u, v]), np.concatenate([y, y]))
    assert_close(spread(u, v, y, alpha=0.0), expected, atol=1e-6, rtol=1e-6)
    expected = jax.jit(class_conditional_infonce)(u, v, y)
    assert_close(spread(u, v, y, alpha=1.0), expected, atol=1e-6, rtol=1e-6)


def test_type_mask_strict_vs_weak(rng):
    types = np.array(
        [
            [1, 1, 0, 0],  # {0, 1}
            [1, 1, 0, 0],  # {0, 1}
            [1, 1, 1, 0],  # {0, 1, 2}: shares 2 > 1.5 with {0, 1}
            [1, 0, 0, 0],  # {0}: shares 1, not > 1, with {0, 1}
            [0, 0, 0, 0],  # no types: matches nothing, itself included
            [0, 0, 0, 1],  # {3}
        ]
    )
    strict = np.zeros((6, 6), bool)
    strict[np.ix_([0, 1], [0, 1])] = True
    strict[2, 2] = strict[3, 3] = strict[5, 5] = True
    weak = strict.copy()
    weak[np.ix_([0, 1, 2], [0, 1, 2])] = True
    np.testing.assert_array_equal(tabi_type_mask(types, equivalence="strict"), strict)
    np.testing.assert_array_equal(tabi_type_mask(types.astype(bool), equivalence="weak"), weak)
    for equivalence, mask in (("strict", strict), ("weak", weak)):
        for a in range(6):
            for b in range(6):
                assert ref_type_same(types[a], types[b], equivalence) == mask[a, b]
    q = _rows(rng, 6, 3)
    losses = {}
    for equivalence in ("strict", "weak"):
        losses[equivalence] = tabi_type_loss(q, types, temperature=0.1, equivalence=equivalence)
        assert_close(losses[equivalence], ref_tabi_type(q, types, 0.1, equivalence), atol=1e-6, rtol=1e-5)
    assert abs(float(losses["strict"]) - float(losses["weak"])) > 1e-3


# --- no anchors: 0 with a finite (zero) gradient -----------------------------------------------------------

NO_ANCHOR_CASES = {
    "distinct labels": lambda z: supcon_loss(z, np.arange(5)),
    "distinct labels, no positives in denominator": lambda z: supcon_loss(
        z, np.arange(5), positives_in_denominator=False
    ),
    "all unknown": lambda z: supcon_loss(z, np.full(5, -1), temperature=0.01),
    "all masked": lambda z: supcon_loss(z, np.zeros(5, np.int32), mask=np.zeros(5, bool)),
    "one row": lambda z: supcon_loss(z[:1], np.zeros(1, np.int32)),
    "cNCE, singleton classes": lambda z: class_conditional_infonce(z, z[::-1], np.arange(5)),
    "tabi entities all unknown": lambda z: tabi_entity_loss(z[:3], z[3:], np.full(3, -1), np.full(2, -1)),
    "tabi no types": lambda z: tabi_type_loss(z, np.zeros((5, 3), np.int32)),
    "tabi distinct types": lambda z: tabi_type_loss(z, np.eye(5, dtype=np.int32), equivalence="weak"),
}


@pytest.mark.parametrize("name", NO_ANCHOR_CASES)
def test_no_anchor_gives_zero_with_finite_gradient(rng, name):
    z = _rows(rng, 5, 3, norm=30.0)
    value, grad = jax.jit(jax.value_and_grad(NO_ANCHOR_CASES[name]))(z)
    assert float(value) == 0.0
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, 0.0)


# --- gradients ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_gradient_matches_finite_differences(rng, name):
    """The directional derivative along a random direction, against central differences of the reference."""
    make, fn, ref = CASES[name]
    floats, others = make(rng, 1.0)
    _, grads = _value_and_grad(name)(*floats, *others, **_tau(name))
    directions = [rng.standard_normal(f.shape) for f in floats]
    assert all(np.all(np.isfinite(g)) for g in grads)
    got = sum(float(np.sum(np.asarray(g, np.float64) * v)) for g, v in zip(grads, directions, strict=True))
    h = 1e-5
    plus = [np.asarray(f, np.float64) + h * v for f, v in zip(floats, directions, strict=True)]
    minus = [np.asarray(f, np.float64) - h * v for f, v in zip(floats, directions, strict=True)]
    expected = (ref(*plus, *others) - ref(*minus, *others)) / (2 * h)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_gradient_with_respect_to_temperature(rng):
    make, fn, ref = CASES["supcon_no_positives_in_denominator"]
    (z,), (y,) = make(rng, 1.0)
    got = jax.jit(jax.grad(lambda tau: fn(z, y, tau)))(np.float32(0.2))
    h = 1e-6
    expected = (ref(z, y, 0.2 + h) - ref(z, y, 0.2 - h)) / (2 * h)
    np.testing.assert_allclose(got, expected, rtol=2e-4)


# --- stability ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [1.0, 10.0])
@pytest.mark.parametrize("name", TEMPERATURE_CASES)
def test_stable_at_temperature_001(rng, name, norm):
    """Logits up to 100 (norm 1; exp overflows float32) and 10^4 (norm 10): finite values and gradients
    that match the float64 reference to float32's precision on logits of that size."""
    make, fn, ref = CASES[name]
    floats, others = make(rng, norm)
    value, grads = _value_and_grad(name)(*floats, *others, tau=0.01)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in grads)
    logit_scale = norm**2 / 0.01
    assert_close(value, ref(*floats, *others, tau=0.01), atol=1e-6 * logit_scale, rtol=1e-5)


def test_mnrl_stable_for_large_scale(rng):
    (q, d), (y,) = _make_retrieval(rng, 50.0)
    value, grad = jax.jit(jax.value_and_grad(lambda q: multiple_negatives_ranking_loss(q, d, scale=1e4)))(q)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert_close(value, ref_mnrl(q, d, 1e4), atol=1e-2, rtol=1e-5)
    zero_rows, grad = jax.jit(jax.value_and_grad(multiple_negatives_ranking_loss))(np.zeros((2, 4)), d)
    assert_close(zero_rows, np.log(8.0), atol=1e-6, rtol=1e-6)  # cosine 0, not NaN
    assert np.all(np.isfinite(grad))


# --- transformations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_jit_and_vmap(rng, name):
    make, fn, _ = CASES[name]
    batch = [make(rng, 1.0) for _ in range(3)]
    jitted = [_value_and_grad(name)(*f, *o, **_tau(name))[0] for f, o in batch]
    floats, others = batch[0]
    assert_close(fn(*floats, *others), jitted[0], atol=1e-6, rtol=1e-6)
    stacked = [np.stack(xs) for xs in zip(*(f + o for f, o in batch), strict=True)]
    assert_close(jax.vmap(fn)(*stacked), jnp.stack(jitted), atol=1e-6, rtol=1e-6)


# --- errors -------------------------------------------------------------------------------------------------


def test_errors():
    z, y = np.ones((4, 3), np.float32), np.zeros(4, np.int32)
    types = np.eye(4, dtype=np.int32)
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            supcon_loss(z, y, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(z, y, temperature=jnp.float32(0.0))
    with pytest.raises(ValueError, match="temperature"):
        class_conditional_infonce(z, z, y, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        spread_loss(z, z, y, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        tabi_loss(z, z, types, y, y, temperature=0.0)
    with pytest.raises(ValueError, match="scale"):
        multiple_negatives_ranking_loss(z, z, scale=0.0)
    with pytest.raises(ValueError, match="alpha"):
        spread_loss(z, z, y, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        tabi_loss(z, z, types, y, y, alpha=-0.1)
    with pytest.raises(ValueError, match=r"labels\.shape=\(3,\)"):
        supcon_loss(z, y[:3])
    with pytest.raises(ValueError, match="integers"):
        supcon_loss(z, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"mask"):
        supcon_loss(z, y, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        supcon_loss(z[0], y)
    with pytest.raises(ValueError, match=r"view_b\.shape=\(4, 2\)"):
        spread_loss(z, z[:, :2], y)
    with pytest.raises(ValueError, match=r"labels\.shape=\(5,\)"):
        class_conditional_infonce(z, z, np.zeros(5, np.int32))
    with pytest.raises(ValueError, match=r"entity_labels\.shape=\(2,\)"):
        tabi_entity_loss(z, z, y, y[:2])
    with pytest.raises(ValueError, match="width"):
        tabi_entity_loss(z, z[:, :2], y, y)
    with pytest.raises(ValueError, match=r"type_labels\.shape=\(3, 4\)"):
        tabi_type_loss(z, types[:3])
    with pytest.raises(ValueError, match="multi-hot"):
        tabi_type_mask(2 * types)
    with pytest.raises(ValueError, match=r"\('strict', 'weak'\).*'fuzzy'"):
        tabi_type_mask(types, equivalence="fuzzy")
    with pytest.raises(ValueError, match="strict"):
        tabi_loss(z, z, types, y, y, equivalence="exact")
    with pytest.raises(ValueError, match=r"relevance\.shape=\(4, 3\)"):
        orthogonal_projection_loss(z, z, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        orthogonal_projection_loss(z, z, np.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="m >= n"):
        multiple_negatives_ranking_loss(z, z[:3])
