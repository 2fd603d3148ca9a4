"""Convolutional kernel networks (Patch-CKN) in JAX + Flax NNX.

Public API; everything under ``ckn._src`` is private.
"""
from ckn._src.config import (
    CHANNELS,
    INPUTS,
    METHODS,
    PRESETS,
    CKNConfig,
    LayerConfig,
    TrainConfig,
    get_preset,
)
from ckn._src.errors import InputError
from ckn._src.fileio import atomic_path, check_patches, load_patch_file
from ckn._src.kmeans import KMeansState, kmeans, kmeans_init, kmeans_objective, kmeans_step
from ckn._src.layers import CKN, PRECISIONS, Filters, KernelLayer, LayerParams, kernel_layer_apply
from ckn._src.model import describe, load, read_training_report, save
from ckn._src.ops import (
    blur_matrix,
    gaussian_blur,
    central_gradient,
    centering_matrix,
    extract_patches,
    gaussian_filter_1d,
    gaussian_pool,
    gradient_map,
    kappa,
    normalize_patches,
    nystrom_projection,
    pooling_matrix,
    whitening_matrix,
)
from ckn._src.training import (
    LayerReport,
    fit_nips14,
    nips14_loss,
    nystrom_residual,
    refine_nystrom,
    sample_subpatches,
    sigma_from_quantile,
    train,
)

__all__ = [
    "CHANNELS", "INPUTS", "METHODS", "PRESETS", "CKN", "CKNConfig", "Filters", "InputError",
    "KMeansState", "KernelLayer", "LayerParams", "PRECISIONS", "LayerConfig", "LayerReport", "TrainConfig", "atomic_path",
    "blur_matrix", "gaussian_blur",
    "central_gradient", "centering_matrix", "check_patches", "describe", "extract_patches",
    "fit_nips14", "gaussian_filter_1d", "gaussian_pool", "get_preset", "gradient_map", "kappa",
    "kernel_layer_apply", "kmeans", "kmeans_init", "kmeans_objective", "kmeans_step", "load",
    "load_patch_file", "normalize_patches", "nips14_loss", "nystrom_projection", "nystrom_residual", "pooling_matrix",
    "read_training_report", "refine_nystrom", "sample_subpatches", "save", "sigma_from_quantile",
    "train", "whitening_matrix",
]
