r"""Contrastive losses: SupCon, Perfectly Balanced's spread loss, TABi, and two retrieval losses.

All of them are pure functions of their arrays (``jit``, ``vmap`` and ``grad`` apply), computed in float32
or wider, and finite in value and gradient at temperature 0.01 and for large embedding norms: every
log-denominator is a masked logsumexp with its maximum subtracted, masked entries never reach an ``exp``,
and a row with nothing to contrast contributes exactly 0. Embeddings are used as given (the papers'
encoders L2-normalise them before the loss); the retrieval losses take cosines themselves.

**SupCon** (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, "Supervised
Contrastive Learning", NeurIPS 2020, eq. 2, :math:`\mathcal L^{sup}_{out}`). With logits
:math:`s_{ab} = z_a \cdot z_b / \tau`, the candidates :math:`A(a) = \{b \ne a\}`, the positives
:math:`P(a) = \{p \in A(a) : y_p = y_a\}` and the negatives :math:`N(a) = A(a) \setminus P(a)`,

.. math::  \ell(a) = -\frac{1}{|P(a)|} \sum_{p \in P(a)} \log \frac{e^{s_{ap}}}{\sum_{b \in A(a)} e^{s_{ab}}},

or, without the other positives in the denominator (TABi; Perfectly Balanced's ``pos_in_denom=False``),

.. math::  \ell(a) = -\frac{1}{|P(a)|} \sum_{p \in P(a)}
           \log \frac{e^{s_{ap}}}{e^{s_{ap}} + \sum_{n \in N(a)} e^{s_{an}}}.

The loss is the mean of :math:`\ell(a)` over the anchors, the rows with :math:`|P(a)| > 0`, and 0 when
there are none; TABi multiplies it by :math:`\tau`.

**Unknown labels.** A label < 0 is unknown and is not "the same" as any label, its own included: such a
row is never a positive, so it is never an anchor either, but it stays a negative of every other anchor
(TABi's convention: a query without a gold entity is still a different point). A row dropped by a
``mask`` takes no part at all, like padding. In the two-view losses the two views of one example are
always positives of each other, whatever its label.

**Perfectly Balanced** (Chen, Fu, Narayan, Zhang, Song, Fatahalian, Re, "Perfectly Balanced: Improving
Transfer and Robustness of Supervised Contrastive Learning", ICML 2022, arXiv 2204.07596). For views
:math:`u, v` of n examples and :math:`\mathrm{num}_{bc} = u_b \cdot v_c / \tau`, the class-conditional
InfoNCE takes the example's other view as the positive and the other examples of the same class as the
negatives, :math:`P(b) = \{b\} \cup \{c : y_c = y_b\}`:

.. math::  \ell_{cNCE}(b) = -\mathrm{num}_{bb} + \log \sum_{p \in P(b)} e^{\mathrm{num}_{bp}},

averaged over b and over both directions (u against v, v against u). The spread loss mixes it with
SupCon (no positives in the denominator) over the 2n views concatenated:
:math:`L_{spread} = (1 - \alpha) L_{SupCon} + \alpha L_{cNCE}` (the Thanos code's ``a_lc = a_spread = 1``
is :math:`\alpha = 0.5`). The concatenation is Khosla et al.'s multi-view batch; the Thanos code's SupCon
instead contrasts each view only with the other one.

**TABi** (Leszczynski, Fu, Chen, Re, "TABi: Type-Aware Bi-Encoders for Open-Domain Entity Retrieval",
Findings of ACL 2022; the ``tabi`` code's ``TABiLoss``): :math:`L = \alpha L_{type} + (1 - \alpha)
L_{ent}`, both :math:`\tau`-scaled SupCon without positives in the denominator. :math:`L_{ent}` runs over
the queries and entities concatenated, labelled by entity id (a query by its gold entity); :math:`L_{type}`
over the queries, two type sets :math:`T_a, T_b` being the same under ``"strict"`` equivalence when
:math:`|T_a \cap T_b| = |T_a| = |T_b|` and under ``"weak"`` when
:math:`|T_a \cap T_b| > \frac12 \max(|T_a|, |T_b|)`; an empty type set is unknown.

**Retrieval** (Saad-Falcon, Fu, Arora, Guha, Re, "Benchmarking and Building Long-Context Retrieval Models
with LoCo and M2-BERT", ICML 2024): the orthogonal projection loss
:math:`\mathrm{OPL} = \mathrm{mean}_{q,d} (\cos(q, d) - y_{qd})^2`, and, its baseline, the multiple
negatives ranking loss (Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply",
2017; sentence-transformers' ``MultipleNegativesRankingLoss``)
:math:`-\mathrm{mean}_i \log \mathrm{softmax}_j(\sigma \cos(q_i, d_j))_i`.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from jaxflash.utils import check_real, check_values, matmul_precision

TYPE_EQUIVALENCES = ("strict", "weak")

# Floor on a squared norm before it is inverted (torch's F.normalize eps, squared): a zero vector gets
# cosine 0, not NaN.
_NORM_EPS_SQUARED = 1e-24


# --- input checks ------------------------------------------------------------------------------------


def _check_scalar(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> None:
    """A Python or NumPy number is checked at once (``check_real``); a JAX scalar (a learnable
    temperature) through ``check_values``, so that it may be traced."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        check_real(name, value, above=above, at_least=at_least, at_most=at_most)
        return
    value = jnp.asarray(value)
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.number):
        raise ValueError(f"{name} must be a real scalar, got {value.shape=} and {value.dtype=}")
    ok = jnp.isfinite(value)
    ok &= True if above is None else value > above
    ok &= True if at_least is None else value >= at_least
    ok &= True if at_most is None else value <= at_most
    bounds = " and ".join(
        f"{op} {b}" for op, b in ((">", above), (">=", at_least), ("<=", at_most)) if b is not None
    )
    check_values(ok, f"{name} must be a finite number {bounds}; got {{}}", value)


def _embeddings(name: str, x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point [n, d] array, got {name}.shape={x.shape}, {x.dtype}"
        )
    return x


def _labels(name: str, labels: Any, n: int, of: str, of_shape: tuple[int, ...]) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(
            f"{name} must be [n] = ({n},) to match {of}.shape={of_shape}, got {name}.shape={labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers (< 0 for unknown), got dtype {labels.dtype}")
    return labels


def _same_width(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must share the width d, got {name_a}.shape={a.shape} and "
            f"{name_b}.shape={b.shape}"
        )


def _type_labels(type_labels: Any) -> jax.Array:
    t = jnp.asarray(type_labels)
    if t.ndim != 2:
        raise ValueError(
            f"type_labels must be a multi-hot [n, ntypes] array, got type_labels.shape={t.shape}"
        )
    t = t.astype(jnp.float32)
    bad = (t != 0) & (t != 1)
    check_values(
        ~bad.any(),
        "type_labels must be multi-hot (entries 0 or 1); {} entries are not, e.g. {}",
        bad.sum(),
        t.ravel()[jnp.argmax(bad.ravel())] if t.size else 0.0,
    )
    return t


# --- shared computations -----------------------------------------------------------------------------


def _similarity(x: jax.Array, y: jax.Array, temperature: Any) -> jax.Array:
    """``x @ y.T / temperature`` in float32 or wider (IEEE float32 products on a GPU too)."""
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
    dots = jnp.matmul(x.astype(dtype), y.astype(dtype).T, precision=matmul_precision(dtype))
    return dots / temperature


def _cosine(x: jax.Array, y: jax.Array) -> jax.Array:
    def unit(v):
        v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
        return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=1, keepdims=True), _NORM_EPS_SQUARED))

    return _similarity(unit(x), unit(y), 1.0)


def _same_known_label(labels: jax.Array, present: jax.Array) -> jax.Array:
    """``[n, n]``: both rows present with the same label >= 0 (an unknown label matches nothing)."""
    known = present & (labels >= 0)
    return (labels[:, None] == labels[None, :]) & known[:, None] & known[None, :]


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Per row, ``log sum_b [mask_ab] exp(x_ab)``, and 0 on a row whose mask is empty (callers discard it).

    The row maximum is subtracted (the result does not depend on it, so it carries no gradient); entries
    outside the mask become ``-inf`` before the ``exp`` and so add nothing, NaN included, to the gradient.
    """
    nonempty = mask.any(axis=1)
    row_max = jax.lax.stop_gradient(jnp.where(nonempty, jnp.max(jnp.where(mask, x, -jnp.inf), axis=1), 0))
    total = jnp.exp(jnp.where(mask, x - row_max[:, None], -jnp.inf)).sum(axis=1)  # >= 1 where nonempty
    return jnp.where(nonempty, row_max + jnp.log(jnp.where(nonempty, total, 1)), 0)


def _masked_supcon(
    similarity: jax.Array,
    same_mask: jax.Array,
    valid_anchor_mask: jax.Array,
    *,
    contrast_mask: jax.Array,
    positives_in_denominator: bool,
) -> jax.Array:
    """The SupCon mean of the module docstring, from ``[n, m]`` logits ``s_ab`` already divided by tau.

    ``contrast_mask[a, b]``: b is a candidate of anchor a (A(a); self and absent rows off).
    ``same_mask[a, b]``: b would be a positive of a. P(a) = A(a) & same, N(a) = A(a) & ~same. The anchors
    are the rows of ``valid_anchor_mask`` with a positive; the result is 0 when there are none.
    """
    positives = same_mask & contrast_mask
    if positives_in_denominator:
        log_denominator = _masked_logsumexp(similarity, contrast_mask)[:, None]
    else:
        negatives = contrast_mask & ~same_mask
        log_negatives = _masked_logsumexp(similarity, negatives)[:, None]
        log_denominator = jnp.where(
            negatives.any(axis=1, keepdims=True), jnp.logaddexp(similarity, log_negatives), similarity
        )
    log_prob = jnp.where(positives, similarity - log_denominator, 0)
    n_positives = positives.sum(axis=1)
    per_anchor = -log_prob.sum(axis=1) / jnp.maximum(n_positives, 1)
    anchors = valid_anchor_mask & (n_positives > 0)
    return jnp.sum(jnp.where(anchors, per_anchor, 0)) / jnp.maximum(anchors.sum(), 1)


# --- SupCon and Perfectly Balanced ---------------------------------------------------------------------


def supcon_loss(
    embeddings: Any,
    labels: Any,
    *,
    temperature: Any = 0.1,
    positives_in_denominator: bool = True,
    scale_by_temperature: bool = False,
    mask: Any | None = None,
) -> jax.Array:
    r"""SupCon: the mean over anchors a of
    :math:`-\frac{1}{|P(a)|}\sum_{p \in P(a)} \log \frac{e^{s_{ap}}}{\sum_{b \in D(a,p)} e^{s_{ab}}}`,
    :math:`s_{ab} = z_a \cdot z_b / \tau`.

    ``D(a, p)`` is every ``b != a`` when ``positives_in_denominator`` (Khosla et al.'s
    :math:`\mathcal L^{sup}_{out}`), else ``{p} | N(a)`` (TABi, Perfectly Balanced). Anchors are the rows
    with a positive; a label < 0 is unknown and matches nothing (module docstring).

    Args:
      embeddings: ``[n, d]`` floating-point embeddings, used as given (normalise them first for the
        papers' cosine form).
      labels: ``[n]`` integer class labels, < 0 for unknown.
      temperature: tau > 0; a Python number, or a JAX scalar (which may be traced, e.g. learnt).
      positives_in_denominator: the original form (True) or the variant without the other positives.
      scale_by_temperature: multiply the loss by tau, as TABi does (Khosla et al.'s code multiplies by
        tau / 0.07).
      mask: optional ``[n]`` boolean; a False row takes no part (not an anchor, positive or negative).

    Returns a scalar: 0 with a zero gradient when no row has a positive.
    """
    z = _embeddings("embeddings", embeddings)
    n = z.shape[0]
    labels = _labels("labels", labels, n, "embeddings", z.shape)
    _check_scalar("temperature", temperature, above=0.0)
    if mask is None:
        present = jnp.ones(n, bool)
    else:
        present = jnp.asarray(mask)
        if present.shape != (n,) or not (present.dtype == bool or jnp.issubdtype(present.dtype, jnp.integer)):
            raise ValueError(
                f"mask must be a boolean [n] = ({n},) array, got mask.shape={present.shape}, {present.dtype}"
            )
        present = present.astype(bool)
    contrast = present[:, None] & present[None, :] & ~jnp.eye(n, dtype=bool)
    loss = _masked_supcon(
        _similarity(z, z, temperature),
        _same_known_label(labels, present),
        present & (labels >= 0),
        contrast_mask=contrast,
        positives_in_denominator=positives_in_denominator,
    )
    return loss * temperature if scale_by_temperature else loss


def _two_views(view_a: Any, view_b: Any, labels: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    a = _embeddings("view_a", view_a)
    b = _embeddings("view_b", view_b)
    if a.shape != b.shape:
        raise ValueError(
            f"view_a and view_b must have one shape, got view_a.shape={a.shape} and view_b.shape={b.shape}"
        )
    return a, b, _labels("labels", labels, a.shape[0], "view_a", a.shape)


def _cnce(a: jax.Array, b: jax.Array, labels: jax.Array, temperature: Any) -> jax.Array:
    n = a.shape[0]
    own_view = jnp.eye(n, dtype=bool)
    candidates = _same_known_label(labels, jnp.ones(n, bool)) | own_view
    similarity = _similarity(a, b, temperature)

    def one_direction(s):
        return _masked_supcon(
            s, own_view, jnp.ones(n, bool), contrast_mask=candidates, positives_in_denominator=True
        )

    return 0.5 * (one_direction(similarity) + one_direction(similarity.T))


def class_conditional_infonce(view_a: Any, view_b: Any, labels: Any, *, temperature: Any = 0.5) -> jax.Array:
    r"""Perfectly Balanced's class-conditional InfoNCE,
    :math:`\ell(b) = -\mathrm{num}_{bb} + \log \sum_{p \in P(b)} e^{\mathrm{num}_{bp}}`, with
    :math:`\mathrm{num}_{bc} = u_b \cdot v_c / \tau` and :math:`P(b) = \{b\} \cup \{c : y_c = y_b\}`: the
    positive is the example's other view, the negatives the other views of its class. The mean over b,
    averaged over both directions (``view_a`` against ``view_b`` and back).

    Args:
      view_a, view_b: ``[n, d]`` embeddings of two views of the same n examples.
      labels: ``[n]`` integer labels; < 0 matches no other example, so such a row adds exactly 0.
      temperature: tau > 0 (Python number or JAX scalar); 0.5 is the Thanos code's default.
    """
    a, b, labels = _two_views(view_a, view_b, labels)
    _check_scalar("temperature", temperature, above=0.0)
    return _cnce(a, b, labels, temperature)


def spread_loss(
    view_a: Any, view_b: Any, labels: Any, *, temperature: Any = 0.5, alpha: Any = 0.5
) -> jax.Array:
    r"""Perfectly Balanced's spread loss :math:`(1 - \alpha) L_{SupCon} + \alpha L_{cNCE}`.

    :math:`L_{SupCon}` is SupCon without the other positives in the denominator over the 2n views
    concatenated, where the positives of a view are the other views with its (known) label and always its
    own example's other view; :math:`L_{cNCE}` is :func:`class_conditional_infonce`. ``alpha = 0`` gives
    SupCon alone and ``alpha = 0.5`` the Thanos code's equal weights.

    Args:
      view_a, view_b: ``[n, d]`` embeddings of two views of the same n examples.
      labels: ``[n]`` integer labels, < 0 for unknown.
      temperature: tau > 0 (Python number or JAX scalar).
      alpha: the weight of the cNCE term, in [0, 1].
    """
    a, b, labels = _two_views(view_a, view_b, labels)
    _check_scalar("temperature", temperature, above=0.0)
    _check_scalar("alpha", alpha, at_least=0.0, at_most=1.0)
    n = a.shape[0]
    z = jnp.concatenate([a, b])
    index = jnp.arange(2 * n)
    other_view = index[None, :] == (index[:, None] + n) % (2 * n)
    same = _same_known_label(jnp.concatenate([labels, labels]), jnp.ones(2 * n, bool)) | other_view
    supcon = _masked_supcon(
        _similarity(z, z, temperature),
        same,
        jnp.ones(2 * n, bool),
        contrast_mask=~jnp.eye(2 * n, dtype=bool),
        positives_in_denominator=False,
    )
    return (1 - alpha) * supcon + alpha * _cnce(a, b, labels, temperature)


# --- TABi ----------------------------------------------------------------------------------------------


def tabi_type_mask(type_labels: Any, *, equivalence: str = "strict") -> jax.Array:
    r"""``[n, n]`` boolean: whether rows a and b have the same type set.

    ``"strict"``: :math:`|T_a \cap T_b| = |T_a| = |T_b|` (identical sets); ``"weak"``:
    :math:`|T_a \cap T_b| > \frac12 \max(|T_a|, |T_b|)`. A row with no types is unknown and matches no
    row, itself included; any other row matches itself.

    Args:
      type_labels: ``[n, ntypes]`` multi-hot (0/1 or boolean) type labels.
      equivalence: ``"strict"`` or ``"weak"``.
    """
    if equivalence not in TYPE_EQUIVALENCES:
        raise ValueError(f"equivalence must be one of {TYPE_EQUIVALENCES}, got {equivalence!r}")
    t = _type_labels(type_labels)
    counts = t.sum(axis=1)
    shared = jnp.matmul(t, t.T, precision=matmul_precision(t.dtype))
    if equivalence == "strict":
        same = (shared == counts[:, None]) & (shared == counts[None, :])
    else:
        same = 2 * shared > jnp.maximum(counts[:, None], counts[None, :])
    known = counts > 0
    return same & known[:, None] & known[None, :]


def tabi_entity_loss(
    query_embs: Any,
    entity_embs: Any,
    query_entity_labels: Any,
    entity_labels: Any,
    *,
    temperature: Any = 0.01,
) -> jax.Array:
    r"""TABi's entity loss: :math:`\tau` times SupCon without positives in the denominator over the
    queries and entities concatenated, each labelled by entity id.

    Args:
      query_embs: ``[nq, d]`` query embeddings.
      entity_embs: ``[ne, d]`` entity embeddings.
      query_entity_labels: ``[nq]`` the gold entity id of each query, -1 (any value < 0) when unknown.
      entity_labels: ``[ne]`` the id of each entity, < 0 when unknown.
      temperature: tau > 0; 0.01 is TABi's default.
    """
    q = _embeddings("query_embs", query_embs)
    e = _embeddings("entity_embs", entity_embs)
    _same_width("query_embs", q, "entity_embs", e)
    query_entity_labels = _labels(
        "query_entity_labels", query_entity_labels, q.shape[0], "query_embs", q.shape
    )
    entity_labels = _labels("entity_labels", entity_labels, e.shape[0], "entity_embs", e.shape)
    return supcon_loss(
        jnp.concatenate([q, e]),
        jnp.concatenate([query_entity_labels, entity_labels]),
        temperature=temperature,
        positives_in_denominator=False,
        scale_by_temperature=True,
    )


def tabi_type_loss(
    query_embs: Any, type_labels: Any, *, temperature: Any = 0.01, equivalence: str = "strict"
) -> jax.Array:
    r"""TABi's type loss: :math:`\tau` times SupCon without positives in the denominator over the queries,
    two queries being positives when :func:`tabi_type_mask` says their type sets are the same; queries
    without types are not anchors.

    Args:
      query_embs: ``[nq, d]`` query embeddings.
      type_labels: ``[nq, ntypes]`` multi-hot type labels.
      temperature: tau > 0; 0.01 is TABi's default.
      equivalence: ``"strict"`` or ``"weak"`` (:func:`tabi_type_mask`).
    """
    q = _embeddings("query_embs", query_embs)
    t = jnp.asarray(type_labels)
    if t.ndim != 2 or t.shape[0] != q.shape[0]:
        raise ValueError(
            f"type_labels must be [nq, ntypes] with nq = {q.shape[0]} as in query_embs.shape={q.shape}, "
            f"got type_labels.shape={t.shape}"
        )
    _check_scalar("temperature", temperature, above=0.0)
    same = tabi_type_mask(t, equivalence=equivalence)
    n = q.shape[0]
    loss = _masked_supcon(
        _similarity(q, q, temperature),
        same,
        same.any(axis=1),
        contrast_mask=~jnp.eye(n, dtype=bool),
        positives_in_denominator=False,
    )
    return loss * temperature


def tabi_loss(
    query_embs: Any,
    entity_embs: Any,
    query_type_labels: Any,
    query_entity_labels: Any,
    entity_labels: Any,
    *,
    temperature: Any = 0.01,
    alpha: Any = 0.1,
    equivalence: str = "strict",
) -> jax.Array:
    r"""TABi's loss :math:`\alpha L_{type} + (1 - \alpha) L_{ent}` (:func:`tabi_type_loss`,
    :func:`tabi_entity_loss`), arguments in the order of the TABi code's ``TABiLoss.forward``; defaults
    ``temperature=0.01, alpha=0.1, equivalence="strict"`` as there."""
    _check_scalar("alpha", alpha, at_least=0.0, at_most=1.0)
    type_loss = tabi_type_loss(
        query_embs, query_type_labels, temperature=temperature, equivalence=equivalence
    )
    entity_loss = tabi_entity_loss(
        query_embs, entity_embs, query_entity_labels, entity_labels, temperature=temperature
    )
    return alpha * type_loss + (1 - alpha) * entity_loss


# --- retrieval -----------------------------------------------------------------------------------------


def orthogonal_projection_loss(query_embs: Any, doc_embs: Any, relevance: Any) -> jax.Array:
    r"""M2-BERT's orthogonal projection loss :math:`\frac{1}{n_q n_d} \sum_{q,d} (\cos(q, d) - y_{qd})^2`.

    Args:
      query_embs: ``[nq, d]`` query embeddings.
      doc_embs: ``[nd, d]`` document embeddings.
      relevance: ``[nq, nd]`` targets y in [0, 1]: 1 for a relevant (positive) pair, 0 for a negative.
    """
    q = _embeddings("query_embs", query_embs)
    d = _embeddings("doc_embs", doc_embs)
    _same_width("query_embs", q, "doc_embs", d)
    if q.shape[0] == 0 or d.shape[0] == 0:
        raise ValueError(f"need at least one query and one document, got {q.shape=} and {d.shape=}")
    y = jnp.asarray(relevance)
    if y.shape != (q.shape[0], d.shape[0]):
        raise ValueError(
            f"relevance must be [nq, nd] = {(q.shape[0], d.shape[0])} for query_embs.shape={q.shape} and "
            f"doc_embs.shape={d.shape}, got relevance.shape={y.shape}"
        )
    cos = _cosine(q, d)
    y = y.astype(cos.dtype)
    check_values(jnp.all((y >= 0) & (y <= 1)), "relevance must lie in [0, 1]; got [{}, {}]", y.min(), y.max())
    return jnp.mean((cos - y) ** 2)


def multiple_negatives_ranking_loss(query_embs: Any, doc_embs: Any, *, scale: Any = 20.0) -> jax.Array:
    r"""Multiple negatives ranking loss :math:`-\frac1n \sum_i \log \mathrm{softmax}_j(\sigma \cos(q_i,
    d_j))_i`: document i is query i's positive, every other document (the other queries' positives, and
    the documents past n, extra hard negatives) a negative.

    Args:
      query_embs: ``[n, d]`` query embeddings.
      doc_embs: ``[m, d]`` document embeddings, ``m >= n``; row i is the positive of query i.
      scale: sigma > 0, the inverse temperature; 20 is sentence-transformers' default.
    """
    q = _embeddings("query_embs", query_embs)
    d = _embeddings("doc_embs", doc_embs)
    _same_width("query_embs", q, "doc_embs", d)
    if q.shape[0] == 0 or d.shape[0] < q.shape[0]:
        raise ValueError(
            f"doc_embs needs a positive for each of n >= 1 queries (m >= n), got "
            f"query_embs.shape={q.shape} and doc_embs.shape={d.shape}"
        )
    _check_scalar("scale", scale, above=0.0)
    n = q.shape[0]
    log_probs = jax.nn.log_softmax(scale * _cosine(q, d), axis=1)
    return -jnp.mean(log_probs[jnp.arange(n), jnp.arange(n)])
