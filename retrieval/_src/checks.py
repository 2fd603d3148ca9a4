"""The shared input check of the retrieval code: a (rows, D) finite numeric matrix."""

from __future__ import annotations

import numpy as np

from ckn import InputError


def check_matrix(
    x,
    name: str,
    *,
    rows: str = "N",
    dim: int | None = None,
    dim_name: str | None = None,
    empty: bool = False,
    dtype=np.float32,
) -> np.ndarray:
    """Validates a (rows, D) numeric matrix and returns it as ``dtype`` (float32).

    The one input check of the retrieval code's matrices (metrics, search, whitening, VLAD,
    query expansion).

    Args:
      x: array-like, expected (rows, D) with rows >= 1 and D >= 1.
      name: the argument's name, for messages.
      rows: the docstring name of the first dimension ("N", "Q").
      dim: the required D, if any.
      dim_name: what fixes ``dim`` ("the codebook"): the message then says "NAME have
        dimension d but DIM_NAME has dimension D".
      empty: accept rows = 0 (the caller says what an empty set means).
      dtype: float32, or float64 (converted once, no float32 round trip).

    Raises:
      InputError: wrong rank, empty, non-numeric dtype, wrong D, NaN or inf.
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be ({rows}, D), got shape {a.shape}")
    if dim is not None and dim_name is not None and a.shape[1] != dim:
        raise InputError(f"{name} have dimension {a.shape[1]} but {dim_name} has dimension {dim}")
    if empty and a.shape[0] == 0:
        return a.astype(dtype)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} is empty, shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be a float array, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise InputError(f"{name} must have D = {dim} columns, got shape {a.shape}")
    a = a.astype(dtype, copy=False)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or inf values")
    return a
