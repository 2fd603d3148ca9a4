"""Pure array math of convolutional kernel networks (stage: the kernel layer's building blocks).

Sub-patch extraction, patch normalization, the kernel kappa, the Nystrom projection,
Gaussian pooling, the input maps (raw / white / grad) and the descriptor projection:
jit-able functions on channels-last arrays, no state. The layer itself is
:func:`ckn.kernel_layer_apply`.
"""

from ckn._src.config import (
    CHANNELS,
    INPUTS,
    NORMALIZATIONS,
)
from ckn._src.ops import (
    NORM_EPS,
    POOLINGS,
    blur_matrix,
    centering_matrix,
    central_gradient,
    extract_patches,
    extract_patches_shifted,
    gaussian_blur,
    gaussian_filter_1d,
    gaussian_pool,
    gradient_map,
    kappa,
    normalize_patches,
    nystrom_projection,
    pooled_size,
    pooling_matrix,
    project_descriptors,
    select_channels,
    whitening_matrix,
)

__all__ = [
    "CHANNELS",
    "INPUTS",
    "NORMALIZATIONS",
    "NORM_EPS",
    "POOLINGS",
    "blur_matrix",
    "centering_matrix",
    "central_gradient",
    "extract_patches",
    "extract_patches_shifted",
    "gaussian_blur",
    "gaussian_filter_1d",
    "gaussian_pool",
    "gradient_map",
    "kappa",
    "normalize_patches",
    "nystrom_projection",
    "pooled_size",
    "pooling_matrix",
    "project_descriptors",
    "select_channels",
    "whitening_matrix",
]
