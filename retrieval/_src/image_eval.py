"""The VLAD image retrieval pipeline: fit, encode, search, score.

:func:`evaluate_vlad` runs, on the local descriptors of a collection
(:mod:`retrieval._src.local`): a VLAD model fitted on training images or on the
collection itself (:mod:`retrieval._src.vlad_fit`), the global vector of every
image, a search of every image against all others (:func:`retrieval.index.make_index`:
exact inner-product top-k, or faiss IVF-PQ for large collections), and the
image retrieval mAP (:mod:`retrieval._src.metrics.image`: every image of a
group is a query against all other images, itself excluded, junk removed,
ties against the relevant images; non-interpolated AP, the Oxford
trapezoidal AP beside it).

References:
  Jegou et al., "Aggregating local descriptors into a compact image
  representation", CVPR 2010. Paulin et al., IJCV 2017, Sec. 6 (VLAD over
  Patch-CKN descriptors).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from retrieval._src.local import LocalFeatures
from retrieval._src.metrics.image import (
    ImageRetrievalResult,
    evaluate_rankings,
    image_retrieval_map,
)
from retrieval._src.search import make_index
from retrieval._src.vlad_fit import VladConfig, VladModel, encode_images, fit_vlad


class VladEvaluation(NamedTuple):
    """Result of :func:`evaluate_vlad`.

    Attributes:
      result: the mAP evaluation.
      vectors: (N, dim) float32 global vectors.
      model: the fitted VLAD model.
      ranking: (N, min(N - 1, depth)) ids of each image's top results (itself
        excluded; -1 pads), by the search method used.
      seconds: {"fit", "encode" (first call, compilation included), "search"}.
    """

    result: ImageRetrievalResult
    vectors: np.ndarray
    model: VladModel
    ranking: np.ndarray
    seconds: dict


def evaluate_vlad(
    features: Sequence[LocalFeatures],
    labels,
    *,
    train: Sequence[LocalFeatures] | None = None,
    config: VladConfig = VladConfig(),  # noqa: B008 (a frozen dataclass)
    junk=None,
    names: Sequence[str] | None = None,
    search: str = "exact",
    search_options: dict | None = None,
    depth: int = 10,
) -> VladEvaluation:
    """Fits VLAD on ``train`` (default: the evaluated images), encodes, searches, scores.

    Exact search is scored on the full similarity matrix (ties against the
    relevant images); IVF-PQ on its ranked lists of ``min(N, 100)`` results.
    """
    t0 = time.perf_counter()
    model = fit_vlad(features if train is None else train, config)
    t1 = time.perf_counter()
    vecs = encode_images(model, features, names=names)
    t2 = time.perf_counter()
    n = vecs.shape[0]
    index = make_index(vecs, search, **(search_options or {}))
    if search == "exact":
        res = image_retrieval_map(vecs, labels, junk=junk, names=names)
        top = index.search(vecs, min(n, depth + 1)).ids
    else:
        top = index.search(vecs, min(n, 100)).ids
        res = evaluate_rankings(top, labels, junk=junk, names=names)
    t3 = time.perf_counter()
    width = max(1, min(n - 1, depth))
    ranking = np.stack(
        [np.concatenate([r[r != q], np.full(width, -1)])[:width] for q, r in enumerate(top)]
    )
    return VladEvaluation(
        res, vecs, model, ranking, {"fit": t1 - t0, "encode": t2 - t1, "search": t3 - t2}
    )
