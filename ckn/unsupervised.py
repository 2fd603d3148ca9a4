"""Unsupervised layer-by-layer training of a CKN (stage: filters from unlabelled patches).

Spherical k-means (``init`` / ``step`` over :class:`KMeansState` in one ``lax.scan``),
sub-patch sampling, the kernel bandwidth from a quantile, the Nystrom refinement and
the NIPS 2014 objective. The entry point is :func:`ckn.train`.
"""

from ckn._src.config import (
    METHODS,
)
from ckn._src.kmeans import (
    KMeansState,
    kmeans,
    kmeans_init,
    kmeans_objective,
    kmeans_step,
)
from ckn._src.refine import (
    fit_nips14,
    nips14_loss,
    nystrom_residual,
    refine_nystrom,
)
from ckn._src.training import (
    MIN_SUBPATCHES_PER_FILTER,
    LayerReport,
    check_training_set,
    sample_subpatches,
    sigma_from_quantile,
)

__all__ = [
    "KMeansState",
    "LayerReport",
    "METHODS",
    "MIN_SUBPATCHES_PER_FILTER",
    "check_training_set",
    "fit_nips14",
    "kmeans",
    "kmeans_init",
    "kmeans_objective",
    "kmeans_step",
    "nips14_loss",
    "nystrom_residual",
    "refine_nystrom",
    "sample_subpatches",
    "sigma_from_quantile",
]
