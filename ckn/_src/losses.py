"""Metric-learning losses on descriptors, with hardest-in-batch mining (pure JAX).

Two losses from GLOBAL_NOTES section 4:

* contrastive (Chopra, Hadsell, LeCun 2005), on a pair at Euclidean distance d
  with y = 1 for a matching pair, 0 otherwise:
  ``1/2 y d^2 + 1/2 (1 - y) max(0, margin - d)^2``;
* triplet ranking (Wang et al. 2014; Gordo et al. 2016), on squared distances:
  ``max(0, margin + |a - p|^2 - |a - n|^2)``.

Batch versions mine each anchor's pairs inside the batch ("batch hard",
Hermans, Beyer, Leibe 2017; HardNet, Mishchuk et al. 2017, takes the same
hardest negative but a fixed positive): the anchor's positive is the *farthest*
other member of its group and its negative the *closest* member of another
group. Batches have a static shape (B, D) with a validity mask (B,), so one
compiled step serves every batch, the last padded one included (STYLE.md).

For L2-normalized descriptors |a - b|^2 = 2 - 2 <a, b> lies in [0, 4], so the
triplet margin is in squared-distance units and the contrastive one in
distance units (cirtorch: contrastive 0.7, triplet 0.1 - 0.5).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ckn._src.errors import InputError

# Squared distances below this count as 0 where a square root is taken (the
# derivative of sqrt is unbounded at 0; the loss is flat there anyway).
_SQ_EPS = 1e-12


def _check_matrix(x, name: str) -> None:
    if jnp.ndim(x) != 2:
        raise InputError(f"{name} must be (B, D), got shape {jnp.shape(x)}")


def _check_vector(x, n: int, name: str) -> None:
    if jnp.shape(x) != (n,):
        raise InputError(f"{name} must be (B,) with B = {n}, got shape {jnp.shape(x)}")


def _distance(sq: jax.Array) -> jax.Array:
    # sqrt with a zero derivative (not inf * 0 = NaN) for coincident descriptors.
    return jnp.sqrt(jnp.maximum(sq, _SQ_EPS))


def contrastive_loss(
    a: jax.Array, b: jax.Array, same: jax.Array, margin: float | jax.Array
) -> jax.Array:
    """Contrastive loss of pairs of descriptors (Chopra, Hadsell, LeCun 2005).

    ``1/2 y d^2 + 1/2 (1 - y) max(0, margin - d)^2`` with d = |a - b| and
    y = ``same``.

    Args:
      a: (..., D) descriptors.
      b: (..., D) descriptors, paired with ``a`` row by row.
      same: (...) bool or 0/1: 1 for a matching pair.
      margin: distance below which a non-matching pair is penalized (> 0).

    Returns:
      (...) loss of each pair.
    """
    if jnp.shape(a) != jnp.shape(b):
        raise InputError(f"a and b must have the same shape, got {jnp.shape(a)} and {jnp.shape(b)}")
    if jnp.shape(same) != jnp.shape(a)[:-1]:
        raise InputError(f"same must be {jnp.shape(a)[:-1]} (one per pair), got {jnp.shape(same)}")
    sq = jnp.sum((a - b) ** 2, axis=-1)
    y = jnp.asarray(same).astype(sq.dtype)
    push = jnp.maximum(margin - _distance(sq), 0.0)
    return 0.5 * y * sq + 0.5 * (1.0 - y) * push * push


def triplet_loss(
    anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float | jax.Array
) -> jax.Array:
    """Triplet ranking loss ``max(0, margin + |a - p|^2 - |a - n|^2)``.

    Args:
      anchor: (..., D) descriptors.
      positive: (..., D) descriptors matching the anchors.
      negative: (..., D) descriptors not matching the anchors.
      margin: required gap between the squared distances (>= 0).

    Returns:
      (...) loss of each triplet.
    """
    if not jnp.shape(anchor) == jnp.shape(positive) == jnp.shape(negative):
        raise InputError(
            "anchor, positive and negative must have the same shape, got "
            f"{jnp.shape(anchor)}, {jnp.shape(positive)}, {jnp.shape(negative)}"
        )
    d_pos = jnp.sum((anchor - positive) ** 2, axis=-1)
    d_neg = jnp.sum((anchor - negative) ** 2, axis=-1)
    return jnp.maximum(margin + d_pos - d_neg, 0.0)


class Mined(NamedTuple):
    """Pairs mined in a batch by :func:`hardest_in_batch`.

    Attributes:
      positive: (B,) int32 row of each anchor's hardest positive (farthest
        other valid row with its label).
      negative: (B,) int32 row of its hardest negative (closest valid row with
        another label).
      valid: (B,) bool: the anchor is valid and has both.
    """

    positive: jax.Array
    negative: jax.Array
    valid: jax.Array


def pairwise_sq_distances(x: jax.Array) -> jax.Array:
    """(B, D) -> (B, B) squared Euclidean distances (from the Gram matrix, clamped at 0)."""
    sq = jnp.sum(x * x, axis=1)
    gram = jnp.matmul(x, x.T, precision="highest")
    return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)


def hardest_in_batch(
    descriptors: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> Mined:
    """Batch-hard mining: each anchor's farthest positive and closest negative.

    Only valid rows (``mask``) are anchors or candidates; an anchor without
    a positive or without a negative is marked invalid. Indices come from the
    Gram-matrix distances and carry no gradient; the losses recompute the
    chosen distances from the descriptors (exact, and exact gradients).
    Ties go to the lowest row index.

    Args:
      descriptors: (B, D).
      labels: (B,) integer group ids.
      mask: (B,) bool validity of each row (None: all valid).

    Returns:
      A :class:`Mined` of (B,) arrays.
    """
    _check_matrix(descriptors, "descriptors")
    b = descriptors.shape[0]
    _check_vector(labels, b, "labels")
    if mask is None:
        mask = jnp.ones((b,), bool)
    _check_vector(mask, b, "mask")
    mask = jnp.asarray(mask, bool)
    d2 = pairwise_sq_distances(jax.lax.stop_gradient(descriptors))
    both = mask[:, None] & mask[None, :] & ~jnp.eye(b, dtype=bool)
    same = labels[:, None] == labels[None, :]
    pos, neg = both & same, both & ~same
    positive = jnp.argmax(jnp.where(pos, d2, -jnp.inf), axis=1).astype(jnp.int32)
    negative = jnp.argmin(jnp.where(neg, d2, jnp.inf), axis=1).astype(jnp.int32)
    valid = mask & pos.any(axis=1) & neg.any(axis=1)
    return Mined(positive, negative, valid)


def check_batch(labels, mask=None) -> None:
    """Host-side check that a batch has something to learn from.

    Raises:
      InputError: no valid row has another valid row with its label (no
        positive pair), or the valid rows hold fewer than two groups (no
        negative).
    """
    labels = np.asarray(labels)
    valid = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    values, counts = np.unique(labels[valid], return_counts=True)
    if values.size < 2:
        raise InputError(
            f"the batch holds {values.size} group(s) among its valid rows: "
            "a negative needs at least two groups"
        )
    if not (counts >= 2).any():
        raise InputError(
            "the batch has no positive pair: every label occurs once among its valid rows"
        )


def _maybe_check(labels, mask) -> None:
    # Checked when the values are known (eager calls); under jit a batch
    # without triplets simply contributes 0 (the sampler never makes one).
    if not isinstance(labels, jax.core.Tracer) and not isinstance(mask, jax.core.Tracer):
        check_batch(labels, mask)


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1).astype(values.dtype)


def batch_triplet_loss(
    descriptors: jax.Array,
    labels: jax.Array,
    margin: float | jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean triplet loss of every valid anchor with its batch-hard triplet.

    Args:
      descriptors: (B, D).
      labels: (B,) integer group ids.
      margin: triplet margin in squared-distance units.
      mask: (B,) bool validity of each row (None: all valid).

    Returns:
      () mean over the anchors that have a positive and a negative (0 if none
      under jit).

    Raises:
      InputError: (eager calls) no positive pair, or fewer than two groups.
    """
    mined = hardest_in_batch(descriptors, labels, mask)
    _maybe_check(labels, mask)
    x = descriptors
    losses = triplet_loss(x, x[mined.positive], x[mined.negative], margin)
    return _masked_mean(losses, mined.valid)


def batch_contrastive_loss(
    descriptors: jax.Array,
    labels: jax.Array,
    margin: float | jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean contrastive loss of the batch-hard pairs of every valid anchor.

    Each anchor contributes its hardest positive pair (y = 1) and its hardest
    negative pair (y = 0), the pairs of :func:`batch_triplet_loss`: the sum
    of the two pair losses is averaged over the valid anchors.

    Args:
      descriptors: (B, D).
      labels: (B,) integer group ids.
      margin: contrastive margin in distance units.
      mask: (B,) bool validity of each row (None: all valid).

    Returns:
      () mean over the anchors that have a positive and a negative.

    Raises:
      InputError: (eager calls) no positive pair, or fewer than two groups.
    """
    mined = hardest_in_batch(descriptors, labels, mask)
    _maybe_check(labels, mask)
    x = descriptors
    ones = jnp.ones(mined.valid.shape, bool)
    losses = contrastive_loss(x, x[mined.positive], ones, margin) + contrastive_loss(
        x, x[mined.negative], ~ones, margin
    )
    return _masked_mean(losses, mined.valid)


#: Batch losses by name (``FinetuneConfig.loss``).
BATCH_LOSSES = {"triplet": batch_triplet_loss, "contrastive": batch_contrastive_loss}
