"""The batch plan of supervised training: every group once per epoch, K members each.

``ckn.finetune`` (groups of matching patches) and retrieval's global-head training (groups of
images of one scene) draw their batches the same way: an epoch visits every group of two or
more members once, in an order drawn from (seed, epoch); a batch holds G groups; each group
gives K members drawn without replacement (all of a smaller group, the missing ones masked; the
last batch's missing groups masked too). A run resumed at an epoch therefore draws the same
batches as an uninterrupted one. A caller may ask for ``extra`` more columns per group (the
global heads' mined negatives), left empty and masked here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def group_rows(labels) -> list[np.ndarray]:
    """Rows of every group with two or more members (labels >= 0), in label order.

    Args:
      labels: (N,) int group ids; negative ids belong to no group.

    Returns:
      One int64 array of ascending rows per group of two or more members.
    """
    lab = np.asarray(labels)
    out = []
    for g in np.unique(lab[lab >= 0]):
        rows = np.flatnonzero(lab == g)
        if rows.size >= 2:
            out.append(rows)
    return out


class EpochBatches(NamedTuple):
    """The batches of one epoch.

    Attributes:
      rows: (S, G, K + extra) int64 rows (0 where masked).
      mask: (S, G, K + extra) bool, True where a row is drawn.
    """

    rows: np.ndarray
    mask: np.ndarray


def epoch_batches(
    groups: list[np.ndarray],
    groups_per_batch: int,
    per_group: int,
    seed: int,
    epoch: int,
    *,
    extra: int = 0,
) -> EpochBatches:
    """Every group once, in an order drawn from (seed, epoch); ``per_group`` members each.

    Args:
      groups: the groups' rows (:func:`group_rows`).
      groups_per_batch: G groups per batch (S = ceil(len(groups) / G) batches).
      per_group: K members drawn per group (all of a smaller group, the rest masked).
      seed, epoch: the draw (``np.random.default_rng([seed, epoch])``).
      extra: empty, masked columns after the K members of every group (for the caller).

    Returns:
      :class:`EpochBatches` of shape (S, G, K + extra).
    """
    rng = np.random.default_rng([seed, epoch])
    g, k = groups_per_batch, per_group
    order = rng.permutation(len(groups))
    steps = -(-len(groups) // g)
    rows = np.zeros((steps, g, k + extra), np.int64)
    mask = np.zeros((steps, g, k + extra), bool)
    for j, gi in enumerate(order):
        members = groups[gi]
        take = rng.choice(members, size=min(k, members.size), replace=False)
        rows[j // g, j % g, : take.size] = take
        mask[j // g, j % g, : take.size] = True
    return EpochBatches(rows, mask)
