"""Querying an index and summarizing it."""

from __future__ import annotations

import numpy as np

from ckn import InputError
from retrieval._src.index.build import describe_for_index
from retrieval._src.index.core import IndexQueryResult, SavedIndex, _search
from retrieval._src.index.settings import FORMAT, VERSION


def query_index(index: SavedIndex, image, k: int = 10) -> IndexQueryResult:
    """The k nearest indexed images of one image (a path or a uint8 array).

    k is capped at the number of indexed images.

    Raises:
      InputError: an unreadable image, a bad k, a changed weights file / model.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    v = describe_for_index(index, [image])
    scores, ids = _search(index, v, k)
    keep = ids[0] >= 0
    ids0 = ids[0][keep]
    paths = index.paths
    return IndexQueryResult(scores[0][keep], ids0, [paths[i] for i in ids0])


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
