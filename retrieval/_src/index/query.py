"""Querying an index and summarizing it."""

from __future__ import annotations

import numpy as np

from ckn import InputError
from retrieval._src.index.build import describe_for_index
from retrieval._src.index.core import IndexQueryResult, SavedIndex, _search
from retrieval._src.index.settings import FORMAT, VERSION


def query_index(index: SavedIndex, image, k: int = 10) -> IndexQueryResult:
    """The k nearest indexed images of one image (a path or a uint8 array).

    k is capped at the number of indexed images; the result's paths are absolute.

    Raises:
      InputError: an unreadable image, a bad k, a changed weights file / model.
    """
    return query_images(index, [image], k)[0]


def query_images(index: SavedIndex, images, k: int = 10) -> list[IndexQueryResult]:
    """:func:`query_index` of several images, described together (one pass over the
    backbone: images of one size bucket share one compilation) and searched together.

    Args:
      index: a :class:`SavedIndex`.
      images: image paths or uint8 arrays.
      k: results per query, capped at the number of indexed images.

    Returns:
      One :class:`IndexQueryResult` per image, in order.

    Raises:
      InputError: no image, an unreadable image, a bad k, a changed weights file / model.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    v = describe_for_index(index, images)
    scores, ids = _search(index, v, k)
    out = []
    for s, i in zip(scores, ids):
        keep = i >= 0
        out.append(IndexQueryResult(s[keep], i[keep], index.path_of(i[keep])))
    return out


def index_info(index: SavedIndex) -> dict:
    """A JSON-ready summary: counts, dims, settings, whitening, search, history."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "uid": index.uid,
        "generation": index.generation,
        "count": index.ntotal,
        "dim": index.dim,
        "settings": index.settings.to_json(),
        "description": index.description,
        "whitening": index.whitening_info,
        "search": index.search_info,
        "parts": [{"id": p.id, "root": p.root, "count": len(p.paths)} for p in index.parts],
        "history": list(index.history),
    }
