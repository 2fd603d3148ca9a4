"""Metric-learning losses on descriptors (stage: supervised training's objective).

Contrastive and triplet losses on pairs / triplets and on whole batches with
hardest-in-batch mining; pure functions, used by :func:`ckn.finetune` and the
learned global heads of ``retrieval``.
"""

from ckn._src.losses import (
    Mined,
    batch_contrastive_loss,
    batch_triplet_loss,
    contrastive_loss,
    hardest_in_batch,
    pairwise_sq_distances,
    triplet_loss,
)

__all__ = [
    "Mined",
    "batch_contrastive_loss",
    "batch_triplet_loss",
    "contrastive_loss",
    "hardest_in_batch",
    "pairwise_sq_distances",
    "triplet_loss",
]
