"""Convolutional kernel networks (Patch-CKN) in JAX + Flax NNX.

The top level holds the entry points: the model (:class:`CKN`, :class:`KernelLayer`,
:func:`kernel_layer_apply`), its settings and presets, :func:`train`, :func:`describe`,
:func:`finetune`, :func:`save` / :func:`load`, :class:`InputError` and
:func:`enable_compile_cache` (compiled programs kept on disk for later processes) with
:func:`count_compilations`. The rest is
public by stage:

- :mod:`ckn.ops`: pure array math (sub-patches, kappa, Nystrom, Gaussian pooling, input maps);
- :mod:`ckn.unsupervised`: k-means and layer-by-layer training;
- :mod:`ckn.supervised`: the differentiable descriptor, validation, the epoch loop;
- :mod:`ckn.losses`: contrastive and triplet losses, hardest-in-batch mining;
- :mod:`ckn.files`: patch files, atomic writes, progress bars, the cache folder;
- :mod:`ckn.sharding`: the batch mesh and the sharded describe step.

Everything under ``ckn._src`` is private. ``ckn`` is a library: it imports nothing
from ``retrieval`` or the command line.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckn import files as files
    from ckn import losses as losses
    from ckn import ops as ops
    from ckn import sharding as sharding
    from ckn import supervised as supervised
    from ckn import unsupervised as unsupervised
    from ckn._src.compile_cache import count_compilations, enable_compile_cache
    from ckn._src.config import (
        PRESETS,
        CKNConfig,
        LayerConfig,
        LayerGeometry,
        TrainConfig,
        get_preset,
    )
    from ckn._src.errors import InputError
    from ckn._src.finetune import FinetuneConfig, FinetuneReport, finetune
    from ckn._src.layers import (
        CKN,
        PRECISIONS,
        Filters,
        KernelLayer,
        LayerParams,
        kernel_layer_apply,
    )
    from ckn._src.model import describe, load, read_training_report, save
    from ckn._src.training import train

__version__ = "0.1.0"

# Everything is imported on first use (PEP 562), as in `retrieval`: a program that reads a
# setting or an error class does not load Flax, and `ckn.X` loads only X's stage.
_STAGES = ("files", "losses", "ops", "sharding", "supervised", "unsupervised")
# Entry point -> the private module that defines it.
_ENTRY = {
    "count_compilations": "compile_cache",
    "enable_compile_cache": "compile_cache",
    "PRESETS": "config",
    "CKNConfig": "config",
    "LayerConfig": "config",
    "LayerGeometry": "config",
    "TrainConfig": "config",
    "get_preset": "config",
    "InputError": "errors",
    "FinetuneConfig": "finetune",
    "FinetuneReport": "finetune",
    "finetune": "finetune",
    "CKN": "layers",
    "PRECISIONS": "layers",
    "Filters": "layers",
    "KernelLayer": "layers",
    "LayerParams": "layers",
    "kernel_layer_apply": "layers",
    "describe": "model",
    "load": "model",
    "read_training_report": "model",
    "save": "model",
    "train": "training",
}


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"ckn.{name}")
    if name in _ENTRY:
        value = getattr(importlib.import_module(f"ckn._src.{_ENTRY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ckn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_STAGES, *_ENTRY})


__all__ = [
    "CKN",
    "CKNConfig",
    "Filters",
    "FinetuneConfig",
    "FinetuneReport",
    "InputError",
    "KernelLayer",
    "LayerConfig",
    "LayerGeometry",
    "LayerParams",
    "PRECISIONS",
    "PRESETS",
    "TrainConfig",
    "count_compilations",
    "describe",
    "enable_compile_cache",
    "finetune",
    "get_preset",
    "kernel_layer_apply",
    "load",
    "read_training_report",
    "save",
    "train",
]
