"""The saved searchable image index and the search engines (stage: vectors -> ranked images).

:func:`build_index` describes a folder once (any describer of :mod:`retrieval.image`),
:func:`save_index` / :func:`load_index` / :func:`add_to_index` keep it on disk,
:func:`query_index` ranks the indexed images for a query image. The search engines
(:class:`ExactIndex`, :class:`FaissIndex`, :func:`make_index`) work on plain vectors.

A collection too large for one process is indexed in shards: :func:`fit_images` fits the
post-processing and the IVF-PQ quantizer once on a sample (:class:`FittedState`,
:func:`save_fitted` / :func:`load_fitted`), :func:`build_part` describes shard I of N
(:func:`shard_slice` of the sorted image list) into an :class:`IndexPart`
(:func:`save_part` / :func:`load_part`), and :func:`merge_parts` checks the parts and
writes one index, its IVF-PQ inverted lists and vectors kept on disk and memory-mapped.
"""

from __future__ import annotations

from retrieval._src.index import (
    CLAIMS,
    DEFAULT_BACKBONE,
    EXACT_LIMIT,
    NPROBE,
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
from retrieval._src.index.fitted import (
    FIT_SAMPLE,
    FittedState,
    fit_images,
    fit_vectors,
    load_fitted,
    save_fitted,
)
from retrieval._src.index.merge import (
    merge_parts,
)
from retrieval._src.index.parts import (
    IndexPart,
    build_part,
    load_part,
    parse_shard,
    part_from_vectors,
    save_part,
    shard_bounds,
    shard_slice,
)
from retrieval._src.index_figure import (
    query_figure,
)
from retrieval._src.ivfpq import FaissIndex, make_index, recall_at
from retrieval._src.search import ExactIndex, Index, exact_search

__all__ = [
    "CLAIMS",
    "DEFAULT_BACKBONE",
    "EXACT_LIMIT",
    "ExactIndex",
    "FIT_SAMPLE",
    "FaissIndex",
    "FittedState",
    "Index",
    "IndexPart",
    "IndexQueryResult",
    "IndexSettings",
    "Mismatch",
    "NPROBE",
    "Part",
    "RERANK",
    "SEARCH_MODES",
    "SavedIndex",
    "WHITEN_MODES",
    "add_to_index",
    "build_index",
    "build_part",
    "check_index_settings",
    "describe_for_index",
    "exact_search",
    "fit_images",
    "fit_vectors",
    "index_info",
    "load_fitted",
    "load_index",
    "load_part",
    "make_index",
    "merge_parts",
    "mismatch_text",
    "parse_shard",
    "part_from_vectors",
    "query_figure",
    "query_images",
    "query_index",
    "recall_at",
    "save_fitted",
    "save_index",
    "save_part",
    "settings_mismatch",
    "shard_bounds",
    "shard_slice",
]
