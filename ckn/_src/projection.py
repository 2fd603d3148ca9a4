"""A learned linear projection of CKN descriptors (``CKNConfig.projection``).

``ckn.finetune`` with ``FinetuneConfig.projection = k`` appends a (D, k) map to a
model's D-dim descriptor, then L2 (``ckn.ops.project_descriptors``), and trains
it with the metric-learning loss, alone on a fixed network (``trainable =
"projection"``: the network's descriptors are computed once) or with the filters
(``"filters+projection"``). It starts from the k leading principal directions
of the training descriptors (:func:`pca_projection`): the start is already a
PCA-reduced descriptor, not a random one. (A reconstruction: the CKN papers
have no projection; learned linear maps of SIFT-like descriptors are standard,
e.g. Simonyan et al., PAMI 2014.)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ckn._src.errors import InputError
from ckn._src.layers import CKN
from ckn._src.model import describe


def pca_projection(descriptors: np.ndarray, dim: int) -> np.ndarray:
    """The ``dim`` leading principal directions of descriptors, as a (D, dim) matrix.

    Directions of the centred rows (float64 SVD), largest variance first, each
    signed so that its largest-magnitude entry is positive (deterministic).

    Args:
      descriptors: (N, D) rows, N >= 1.
      dim: k, 1 <= k <= D.

    Returns:
      (D, k) float32 matrix with orthonormal columns.

    Raises:
      InputError: a bad shape or ``dim``.
    """
    x = np.asarray(descriptors, np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InputError(f"descriptors must be (N, D) with N >= 1, got {x.shape}")
    if not 1 <= dim <= x.shape[1]:
        raise InputError(f"projection dim must be in [1, {x.shape[1]}], got {dim}")
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    basis = vt[:dim]
    if basis.shape[0] < dim:  # fewer rows than dims: complete with orthonormal directions
        q, _ = np.linalg.qr(np.concatenate([basis.T, np.eye(x.shape[1])], axis=1))
        basis = q[:, :dim].T
    rows = np.arange(dim)
    signs = np.sign(basis[rows, np.argmax(np.abs(basis), axis=1)])
    return (basis * signs[:, None]).T.astype(np.float32)


def with_projection(model: CKN, matrix: np.ndarray | None) -> CKN:
    """A new model: ``model``'s network with the (D, k) ``matrix`` as its projection.

    ``matrix=None`` gives the network without projection (its descriptor is the
    normalized last map). ``model`` is not modified.

    Raises:
      InputError: ``matrix`` is not 2-D or not finite.
    """
    proj = None
    if matrix is not None:
        matrix = np.asarray(matrix, np.float32)
        if matrix.ndim != 2 or not np.isfinite(matrix).all():
            raise InputError(f"a projection must be a finite (D, k) matrix, got {matrix.shape}")
        proj = tuple(int(v) for v in matrix.shape)
    cfg = dataclasses.replace(model.config, projection=proj)
    new = nnx.eval_shape(lambda: CKN(cfg, rngs=nnx.Rngs(0), precision=model.precision))
    for old, layer in zip(model.layers, new.layers):
        for name in ("filters", "alpha", "bias", "linear", "preproc"):
            if getattr(old, name) is not None:
                getattr(layer, name).set_value(getattr(old, name).get_value())
    if matrix is not None:
        new.projection.set_value(jnp.asarray(matrix))
    new.patch_shape = getattr(model, "patch_shape", None)
    return new


#: Training descriptors the principal directions of a new projection are computed from.
PCA_ROWS = 20_000


def add_projection(model: CKN, patches, dim: int, trunk: np.ndarray | None) -> CKN:
    """``model`` with a (D, dim) projection from the PCA of (up to PCA_ROWS, evenly spaced)
    training descriptors (``trunk``: the network's descriptors of every row, if computed)."""
    if model.projection is not None:
        raise InputError(
            "the model already has a projection: train it with 'projection' in trainable "
            "and no new projection dim"
        )
    n = patches.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(PCA_ROWS, n)).astype(int))
    x = trunk[rows] if trunk is not None else describe(model, np.asarray(patches[rows]))
    return with_projection(model, pca_projection(x, dim))
