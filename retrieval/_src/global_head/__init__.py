"""Learned global heads on a frozen backbone: GeM with a learned p, R-MAC with a learned projection.

Two heads map a backbone's last conv map ``(N, h, w, C)`` (with a validity mask
``(N, h, w)``) to one L2-normalized vector per image:

* ``gem``: GeM pooling with a learned exponent p (Radenovic et al.), then L2;
* ``rmac``: the R-MAC regions (:func:`retrieval._src.pooling.regional_mac`); per
  region L2 -> ``(x - m) W`` -> L2 -> sum over regions -> L2 (Gordo et al.:
  the PCA shift m and the fully connected projection W, both learned; W is
  initialized with the PCA-whitening of training regions, m with their mean);

each optionally followed by a learned whitening ``L2((v - m_w) W_w)``,
initialized with Radenovic's Lw (:func:`retrieval.image.fit_learned_whitening` on the
head's outputs for the training images, the images of one group as matching
pairs; by default with the covariance of matching differences shrunk towards the
identity, ``GlobalHeadConfig.whiten_shrinkage``) and then trained with the rest as
a linear layer.

The parameters live in :class:`GlobalHead` (an NNX module, ``nnx.Param``
leaves); the forward is the pure :func:`head_forward` on a :class:`HeadParams`.

Training (:func:`train_global_head`). The backbone is frozen, so its maps are
computed once (:func:`prepare_maps`: every image shrunk to at most ``side``
pixels, never enlarged, padded to ``side x side`` with a mask, one backbone
compilation) and kept in memory as float16, bounded by
``GlobalHeadConfig.max_cache_mib`` (an InputError before any image is
described when the maps would not fit). The last backbone stage is not
unfrozen: only the head trains. Batches hold G groups x K images (triplet or
contrastive loss from ``ckn``, hardest-in-batch positives and negatives); with
``mining="pool"`` each group also brings M hard negatives re-mined at the start
of every epoch from a random pool of training images with the current head
(cirtorch), at most one per other group. Adam (optax) with a warm-up + cosine
schedule (``optax.warmup_cosine_decay_schedule``, evaluated on the host and
passed traced, so one compilation serves every step); p learns ``p_lr_scale``
times faster and is kept in [1, 64] (GeM is computed as s GeM(x / s), s the
channel max, so that x^p cannot overflow); an optional decoupled decay pulls every
parameter towards its initialization (L2-SP). One jitted step per (head, loss,
region count: the R-MAC projection runs on the valid regions only, at most
:func:`region_cap` of the training maps, not on the 50 slots of the padded region
table); a non-finite gradient skips the step. Validation mAP on other
images (groups protocol, :func:`retrieval.metrics.evaluate_scores`) after each epoch:
the best epoch is kept, early stopping after ``patience`` epochs without
progress. A checkpoint after every epoch; a resumed run ends with the same bits
as an uninterrupted one (batches and pools are drawn from (seed, epoch)).

Scale of the initial matrices. A PCA-whitening or Lw matrix has entries of very
different magnitudes from one problem to the next (1 / sqrt of variances).
Adam moves every entry by about the learning rate, so each initial matrix is
multiplied by one scalar that brings its RMS entry to 1 / sqrt(input dim) (the
scale of a standard initialization); the L2 normalization that follows makes
the head's output independent of that scalar.

References:
  F. Radenovic, G. Tolias, O. Chum, "Fine-tuning CNN image retrieval with no
  human annotation", TPAMI 2018, sections 3.2 (GeM, learned p), 3.3 (Lw), 4
  (hard-negative mining from a pool). A. Gordo, J. Almazan, J. Revaud, D.
  Larlus, "End-to-end learning of deep visual representations for image
  retrieval", IJCV 2017, section 3 (R-MAC with shift + projection). G. Tolias,
  R. Sicre, H. Jegou, ICLR 2016 (R-MAC).

The package: :mod:`~retrieval._src.global_head.config` (:class:`GlobalHeadConfig`, the
constants), :mod:`~retrieval._src.global_head.forward` (:class:`HeadParams`, the pure
:func:`head_forward`), :mod:`~retrieval._src.global_head.model` (the NNX module
:class:`GlobalHead`, :func:`backbone_info`), :mod:`~retrieval._src.global_head.maps`
(:func:`prepare_maps`), :mod:`~retrieval._src.global_head.initialize` (PCA / Lw
initialization), :mod:`~retrieval._src.global_head.checkpoint` (checkpoint / resume),
:mod:`~retrieval._src.global_head.train` (:func:`train_global_head`) and
:mod:`~retrieval._src.global_head.io` (:func:`save_global_head`, :func:`load_global_head`).
"""

from __future__ import annotations

from ckn import InputError
from retrieval._src import pooling
from retrieval._src.global_head.checkpoint import CHECKPOINT_FORMAT
from retrieval._src.global_head.config import (
    DESCRIBE_CHUNK,
    HEAD_KINDS,
    HEAD_MARGINS,
    MAX_PCA_REGIONS,
    MINING,
    P_BOUNDS,
    SCHEDULES,
    GlobalHeadConfig,
)
from retrieval._src.global_head.forward import (
    HeadParams,
    head_forward,
    pool_forward,
    project_regions,
    region_cap,
    whiten_forward,
)
from retrieval._src.global_head.initialize import (
    init_head_params,
)
from retrieval._src.global_head.io import (
    FORMAT,
    VERSION,
    load_global_head,
    save_global_head,
)
from retrieval._src.global_head.maps import (
    HeadMaps,
    maps_bytes,
    prepare_maps,
)
from retrieval._src.global_head.model import (
    GlobalHead,
    backbone_info,
)
from retrieval._src.global_head.train import (
    GlobalHeadReport,
    train_global_head,
    validation_map,
)
from retrieval._src.image_folder import group_pairs
from retrieval._src.metrics.image import evaluate_scores
from retrieval._src.postprocess import Whitening, fit_learned_whitening, fit_pca_whitening

__all__ = [
    "CHECKPOINT_FORMAT",
    "DESCRIBE_CHUNK",
    "FORMAT",
    "GlobalHead",
    "GlobalHeadConfig",
    "GlobalHeadReport",
    "HEAD_KINDS",
    "HEAD_MARGINS",
    "HeadMaps",
    "HeadParams",
    "InputError",
    "MAX_PCA_REGIONS",
    "MINING",
    "P_BOUNDS",
    "SCHEDULES",
    "VERSION",
    "Whitening",
    "backbone_info",
    "evaluate_scores",
    "fit_learned_whitening",
    "fit_pca_whitening",
    "group_pairs",
    "head_forward",
    "init_head_params",
    "load_global_head",
    "maps_bytes",
    "pool_forward",
    "pooling",
    "prepare_maps",
    "project_regions",
    "region_cap",
    "save_global_head",
    "train_global_head",
    "validation_map",
    "whiten_forward",
]
