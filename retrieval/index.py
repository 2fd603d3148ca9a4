"""The saved searchable image index and the search engines (stage: vectors -> ranked images).

:func:`build_index` describes a folder once (any describer of :mod:`retrieval.image`),
:func:`save_index` / :func:`load_index` / :func:`add_to_index` keep it on disk,
:func:`query_index` ranks the indexed images for a query image. The search engines
(:class:`ExactIndex`, :class:`FaissIndex`, :func:`make_index`) work on plain vectors.
"""

from __future__ import annotations

from retrieval._src.index import (
    CLAIMS,
    DEFAULT_BACKBONE,
    EXACT_LIMIT,
    RERANK,
    SEARCH_MODES,
    WHITEN_MODES,
    IndexQueryResult,
    IndexSettings,
    Mismatch,
    Part,
    SavedIndex,
    add_to_index,
    build_index,
    check_index_settings,
    describe_for_index,
    index_info,
    load_index,
    mismatch_text,
    query_images,
    query_index,
    save_index,
    settings_mismatch,
)
from retrieval._src.index_figure import (
    query_figure,
)
from retrieval._src.search import (
    ExactIndex,
    FaissIndex,
    Index,
    exact_search,
    make_index,
    recall_at,
)

__all__ = [
    "CLAIMS",
    "DEFAULT_BACKBONE",
    "EXACT_LIMIT",
    "ExactIndex",
    "FaissIndex",
    "Index",
    "IndexQueryResult",
    "IndexSettings",
    "Mismatch",
    "Part",
    "RERANK",
    "SEARCH_MODES",
    "SavedIndex",
    "WHITEN_MODES",
    "add_to_index",
    "build_index",
    "check_index_settings",
    "describe_for_index",
    "exact_search",
    "index_info",
    "load_index",
    "make_index",
    "mismatch_text",
    "query_figure",
    "query_images",
    "query_index",
    "recall_at",
    "save_index",
    "settings_mismatch",
]
