"""Patch and image retrieval with CKN descriptors: data sets, descriptors, metrics, search.

The top level holds the entry points a first example needs; the rest is public by stage:

- :mod:`retrieval.patches`: patch data sets, the SIFT / pixel baselines, the patch
  evaluation and ``ckn reproduce``'s benchmark;
- :mod:`retrieval.local`: interest regions, local descriptors, VLAD;
- :mod:`retrieval.image`: global image descriptors (pooling heads, CAM, learned heads),
  whitening, query expansion and their evaluation;
- :mod:`retrieval.nets`: ImageNet CNN backbones and a trained CKN as a backbone;
- :mod:`retrieval.index`: the saved searchable index and the search engines;
- :mod:`retrieval.metrics`: AP, patch and image retrieval mAP, ROC, the revisited protocol.

Implementation modules under ``retrieval._src`` are private.
"""

from retrieval import image as image
from retrieval import index as index
from retrieval import local as local
from retrieval import metrics as metrics
from retrieval import nets as nets
from retrieval import patches as patches
from retrieval.image import GlobalConfig, evaluate_global, extract_global
from retrieval.index import build_index, load_index, query_index
from retrieval.local import evaluate_vlad
from retrieval.nets import load_backbone
from retrieval.patches import (
    PatchSet,
    build_default,
    evaluate_descriptors,
    load_patchset,
    reproduce,
    save_patchset,
)

# `write_tfds` imports tensorflow_datasets: loaded on first use (see retrieval.patches).
_LAZY = ("write_tfds",)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(patches, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "GlobalConfig",
    "PatchSet",
    "build_default",
    "build_index",
    "evaluate_descriptors",
    "evaluate_global",
    "evaluate_vlad",
    "extract_global",
    "load_backbone",
    "load_index",
    "load_patchset",
    "query_index",
    "reproduce",
    "save_patchset",
    "write_tfds",
]
