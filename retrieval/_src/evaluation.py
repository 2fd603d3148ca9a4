"""Patch retrieval evaluation: describe patches, then score the descriptors.

The two entry points used by ``ckn eval-patches`` and ``ckn reproduce``:

* :func:`describe_with` describes patches with a baseline (``"sift"``,
  ``"rootsift"``, ``"pixels"``) or a trained CKN (a model directory written by
  ``ckn.save`` / ``ckn train``, or a model object);
* :func:`evaluate_descriptors` scores (N, D) descriptors of one set of patches
  against their group labels with the RomePatches protocol (CKN_NOTES
  section 3): every patch is a query against all other patches of the set,
  relevant = same group, mean average precision over the queries.

Protocol, stated once (:mod:`retrieval._src.metrics` has the details):

* similarity = dot product of L2-normalized descriptors (the ranking of the
  Euclidean distance); descriptors are L2-normalized here first, a zero row
  (flat patch) stays zero;
* the query is excluded from its own ranking; ties are broken against the
  relevant items, so an uninformative descriptor scores at chance, not 1.0;
* the reported AP is the non-interpolated one (precision averaged at the rank
  of each relevant item); the Oxford trapezoid AP is given beside it;
* a patch whose group has no other member in the set has no relevant item: it
  is not a query, and ``num_skipped`` says how many there were;
* pair metrics (ROC AUC, FPR at 95% recall) use all matching pairs (at most
  ``max_pairs``, drawn at random beyond) and as many random non-matching
  pairs, with a fixed seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ckn import CKN, InputError, describe, load
from retrieval._src import metrics as M
from retrieval._src.baselines import BASELINES, describe_baseline
from retrieval._src.checks import check_matrix

#: The AP definition behind ``"map"`` (the one reported).
AP_DEFINITION = "non-interpolated"

#: Keys of the dict returned by :func:`evaluate_descriptors`.
RESULT_KEYS = (
    "map",
    "map_trapezoid",
    "nn_accuracy",
    "fpr95",
    "roc_auc",
    "num_patches",
    "num_groups",
    "num_queries",
    "num_skipped",
    "num_pairs",
    "dim",
    "ap_definition",
    "precision_recall",
)


def evaluate_descriptors(
    descriptors, labels, *, max_pairs: int = 100_000, seed: int = 0, recall_levels=None
) -> dict:
    """Patch retrieval metrics of one set of descriptors (RomePatches protocol).

    Args:
      descriptors: (N, D) float descriptors of the patches of one set (one
        split); L2-normalized here (zero rows stay zero).
      labels: (N,) integer group ids; patches with equal ids show the same
        physical point.
      max_pairs: cap on the matching pairs of the pair metrics (the same number
        of non-matching pairs is drawn).
      seed: seed of the pair sampling.
      recall_levels: (L,) recall levels of the precision-recall summary
        (default 0, 0.05, ..., 1).

    Returns:
      A JSON-serializable dict (fractions in [0, 1], not percent):

      * ``"map"``: mean non-interpolated AP over the queries (reported);
      * ``"map_trapezoid"``: the same with the Oxford trapezoid AP;
      * ``"nn_accuracy"``: fraction of queries whose nearest neighbour is in
        their group (ties count as wrong);
      * ``"fpr95"``: false-positive rate at 95% recall of the sampled pairs;
      * ``"roc_auc"``: area under the ROC curve of the sampled pairs;
      * ``"num_patches"`` (N), ``"num_groups"``, ``"dim"`` (D);
      * ``"num_queries"``: patches with at least one other patch of their
        group; ``"num_skipped"``: the others (N - num_queries);
      * ``"num_pairs"``: ``{"matching": P, "non_matching": P}``;
      * ``"ap_definition"``: ``"non-interpolated"``;
      * ``"precision_recall"``: ``{"recall": [L floats], "precision": [L
        floats]}``, the interpolated precision at each recall level averaged
        over the queries (a mean PR curve, ready to plot).

    Raises:
      InputError: wrong shapes, NaN/inf, no two patches sharing a label, or
        all patches in one group (no non-matching pair).

    Examples:
      >>> x = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]]
      >>> evaluate_descriptors(x, [7, 7, 8, 8])["map"]
      1.0
    """
    x = check_matrix(descriptors, "descriptors")
    lab = M.check_labels(labels, x.shape[0])
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 1:
        raise InputError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    # Norms in float64: squares of large float32 entries would overflow.
    norms = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))[:, None]
    x = np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
    pairs = M.sample_pairs(lab, max_positive=int(max_pairs), seed=seed)  # raises if no query
    summary = M.retrieval_summary(x, lab, recall_levels=recall_levels)
    pair_s = M.pair_scores(x, pairs.i, pairs.j)
    n_match = int(pairs.is_match.sum())
    return {
        "map": summary.mean_ap,
        "map_trapezoid": summary.mean_ap_trapezoid,
        "nn_accuracy": summary.nn_accuracy,
        "fpr95": M.fpr_at_recall(pair_s, pairs.is_match, 0.95),
        "roc_auc": M.roc_auc(pair_s, pairs.is_match),
        "num_patches": int(x.shape[0]),
        "num_groups": int(np.unique(lab).size),
        "num_queries": summary.num_queries,
        "num_skipped": summary.num_skipped,
        "num_pairs": {"matching": n_match, "non_matching": int(pairs.is_match.size - n_match)},
        "dim": int(x.shape[1]),
        "ap_definition": AP_DEFINITION,
        "precision_recall": {
            "recall": [float(v) for v in summary.recall_levels],
            "precision": [float(v) for v in summary.mean_precision],
        },
    }


def resolve_model(name_or_model) -> str | CKN:
    """A baseline name as is, a CKN model as is, or the model of a directory.

    Args:
      name_or_model: ``"sift"``, ``"rootsift"``, ``"pixels"``, a model
        directory (str or path; loaded with ``ckn.load``) or a ``ckn.CKN``.

    Returns:
      The baseline name (str) or a ``ckn.CKN``; either can be passed on to
      :func:`describe_with` and :func:`descriptor_info` (so a directory is
      read once).

    Raises:
      InputError: neither a baseline nor an existing model directory; a
        corrupt model directory.
    """
    if isinstance(name_or_model, CKN):
        return name_or_model
    if isinstance(name_or_model, str) and name_or_model in BASELINES:
        return name_or_model
    if not isinstance(name_or_model, (str, os.PathLike)):
        raise InputError(
            f"expected a baseline name ({', '.join(BASELINES)}), a model directory "
            f"or a CKN model, got {type(name_or_model).__name__}"
        )
    path = Path(name_or_model)
    if not path.exists():
        raise InputError(
            f"model not found: {path} is neither a model directory nor a baseline "
            f"({', '.join(BASELINES)})"
        )
    return load(path)


def describe_with(
    name_or_model_dir,
    patches,
    *,
    batch_size: int = 256,
    progress: bool = False,
    any_size: bool = False,
) -> np.ndarray:
    """Describes patches with a baseline or a trained CKN.

    Args:
      name_or_model_dir: ``"sift"``, ``"rootsift"`` or ``"pixels"`` (a
        baseline, :mod:`retrieval._src.baselines`; these names win over a
        directory of the same name: write ``./sift`` for that), a model
        directory written by ``ckn.save`` / ``ckn train`` (loaded with
        ``ckn.load``), or a ``ckn.CKN`` model object (see
        :func:`resolve_model`).
      patches: (N, H, W) or (N, H, W, C) patches (uint8 for the SIFT
        baselines; a memory-mapped array streams for CKN models).
      batch_size: patches per jitted batch (CKN models; ignored by baselines).
      progress: show a progress bar (stderr).
      any_size: CKN models: describe patches of another size or channel count
        than the model's training patches (``ckn.describe``); refused otherwise.

    Returns:
      (N, D) float32 descriptors, L2-normalized rows (zero rows for flat
      patches).

    Raises:
      InputError: unknown name or missing / corrupt model directory; bad
        patches (shape, dtype, NaN); patches smaller than the model's
        receptive field, or (CKN models) of another size or channel count
        than its training patches.
    """
    what = resolve_model(name_or_model_dir)
    if isinstance(what, str):
        return describe_baseline(what, patches, progress=progress)
    return describe(what, patches, batch_size=batch_size, progress=progress, any_size=any_size)


def descriptor_info(name_or_model_dir, patch_shape) -> dict:
    """Name, kind and dimension of a descriptor for patches of a given shape.

    Args:
      name_or_model_dir: as for :func:`describe_with`.
      patch_shape: (H, W) or (H, W, C) of one patch.

    Returns:
      ``{"name": str, "kind": "baseline" | "ckn", "dim": int, "coverage":
      "HxW"}``; ``name`` is the baseline or the model's config name.

    Raises:
      InputError: as :func:`describe_with`; patches too small for the model.
    """
    shape = tuple(int(v) for v in patch_shape)
    if len(shape) not in (2, 3):
        raise InputError(f"patch_shape must be (H, W) or (H, W, C), got {shape}")
    h, w = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    coverage = f"{h}x{w}"
    what = resolve_model(name_or_model_dir)
    if isinstance(what, str):
        dim = 128 if what in ("sift", "rootsift") else h * w * channels
        return {"name": what, "kind": "baseline", "dim": dim, "coverage": coverage}
    dim = what.config.descriptor_dim(h, w)
    return {"name": what.config.name, "kind": "ckn", "dim": int(dim), "coverage": coverage}
