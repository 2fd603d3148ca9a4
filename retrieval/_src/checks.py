"""The shared input check of the retrieval code: a (rows, D) finite numeric matrix."""

from __future__ import annotations

import numpy as np

from ckn import InputError


def check_matrix(x, name: str, *, rows: str = "N", dim: int | None = None) -> np.ndarray:
    """Validates a (rows, D) numeric matrix and returns it as float32.

    The shared input check of the retrieval code (metrics, search, evaluation).

    Args:
      x: array-like, expected (rows, D) with rows >= 1 and D >= 1.
      name: the argument's name, for messages.
      rows: the docstring name of the first dimension ("N", "Q").
      dim: the required D, if any.

    Raises:
      InputError: wrong rank, empty, non-numeric dtype, wrong D, NaN or inf.
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be ({rows}, D), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} is empty, shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be a float array, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise InputError(f"{name} must have D = {dim} columns, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or inf values")
    return a
