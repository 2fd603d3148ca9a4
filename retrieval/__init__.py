"""Patch and image retrieval with CKN descriptors: data sets, descriptors, metrics, search.

The top level holds the entry points a first example needs; the rest is public by stage:

- :mod:`retrieval.patches`: patch data sets, the SIFT / pixel baselines, the patch
  evaluation and ``ckn reproduce``'s benchmark;
- :mod:`retrieval.local`: interest regions, local descriptors, VLAD;
- :mod:`retrieval.image`: the image retrieval pipeline: describers (pooling heads over a
  backbone, learned heads, CAM, VLAD), whitening, scorers (query expansion, CAM) and the one
  evaluation :func:`evaluate`;
- :mod:`retrieval.nets`: ImageNet CNN backbones and a trained CKN as a backbone;
- :mod:`retrieval.index`: the saved searchable index and the search engines;
- :mod:`retrieval.metrics`: AP, patch and image retrieval mAP, ROC, the revisited protocol.

Implementation modules under ``retrieval._src`` are private.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retrieval import image as image
    from retrieval import index as index
    from retrieval import local as local
    from retrieval import metrics as metrics
    from retrieval import nets as nets
    from retrieval import patches as patches
    from retrieval.image import GlobalConfig, evaluate, extract_global
    from retrieval.index import build_index, load_index, query_index
    from retrieval.nets import load_backbone
    from retrieval.patches import (
        PatchSet,
        build_default,
        evaluate_descriptors,
        load_patchset,
        reproduce,
        save_patchset,
        write_tfds,
    )

# Everything is imported on first use (PEP 562): `import retrieval` loads neither JAX nor
# OpenCV, so that the `ckn` command installs its signal handlers before the long imports.
_STAGES = ("image", "index", "local", "metrics", "nets", "patches")
# Entry point -> its stage module. `write_tfds` imports tensorflow_datasets on its first call.
_ENTRY = {
    "GlobalConfig": "image",
    "evaluate": "image",
    "extract_global": "image",
    "build_index": "index",
    "load_index": "index",
    "query_index": "index",
    "load_backbone": "nets",
    "PatchSet": "patches",
    "build_default": "patches",
    "evaluate_descriptors": "patches",
    "load_patchset": "patches",
    "reproduce": "patches",
    "save_patchset": "patches",
    "write_tfds": "patches",
}


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"retrieval.{name}")
    if name in _ENTRY:
        value = getattr(importlib.import_module(f"retrieval.{_ENTRY[name]}"), name)
        if name != "write_tfds":  # stays lazy in retrieval.patches
            globals()[name] = value
        return value
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_STAGES, *_ENTRY})


__all__ = [
    "GlobalConfig",
    "PatchSet",
    "build_default",
    "build_index",
    "evaluate_descriptors",
    "evaluate",
    "extract_global",
    "load_backbone",
    "load_index",
    "load_patchset",
    "query_index",
    "reproduce",
    "save_patchset",
    "write_tfds",
]
