"""Batched description of patch files, and saving / loading trained models.

A model directory holds ``config.json`` (format tag, version, the CKNConfig,
the sigmas found at training and the training report) and ``arrays.npz``
(every ``Filters`` array, keyed ``layers.<i>.<name>``). It is written to a
temporary directory and renamed, so a failed save leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from ckn._src.config import CKNConfig
from ckn._src.errors import InputError
from ckn._src.fileio import atomic_path, check_patches
from ckn._src.layers import CKN, apply_describe

FORMAT = "ckn-model"
VERSION = 1
_ARRAYS = ("filters", "alpha", "bias", "linear", "preproc")


def _check_input(model: CKN, patches: np.ndarray) -> None:
    check_patches(patches)
    cfg = model.config
    if cfg.channels == "rgb" and (patches.ndim != 4 or patches.shape[3] != 3):
        raise InputError(f"this model needs (N, H, W, 3) colour patches, got shape {patches.shape}")
    cfg.output_shape(patches.shape[1], patches.shape[2])


def _batch_shape(n: int, batch_size: int) -> int:
    # Small inputs use the next power of two, so varied small N share compilations.
    return min(batch_size, 1 << max(0, (n - 1).bit_length()))


def describe(
    model: CKN,
    patches: np.ndarray,
    *,
    batch_size: int = 256,
    progress: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Descriptors of many patches, in fixed-size jitted batches.

    The input is read batch by batch (a memory-mapped .npy streams); the last
    batch is zero-padded so every call with the same batch size reuses one
    compiled function.

    Args:
      model: a (trained) CKN.
      patches: (N, H, W) or (N, H, W, C), uint8 or float.
      batch_size: patches per jitted call.
      progress: show a progress bar (stderr) when there is more than one batch.
      out: optional (N, D) float32 array to fill (e.g. a memory-mapped .npy),
        so that neither input nor output has to fit in memory.

    Returns:
      (N, D) float32, L2-normalized rows (zero rows for flat patches); ``out``
      when given.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    _check_input(model, patches)
    n = patches.shape[0]
    bs = _batch_shape(n, batch_size)
    graphdef, state = nnx.split(model)
    h, w, c = model.config.output_shape(patches.shape[1], patches.shape[2])
    if out is None:
        out = np.empty((n, h * w * c), np.float32)
    elif out.shape != (n, h * w * c) or out.dtype != np.float32:
        raise InputError(f"out must be float32 of shape {(n, h * w * c)}, got {out.dtype} {out.shape}")
    starts = range(0, n, bs)
    for start in tqdm(starts, desc="describing", unit="batch", disable=not progress or len(starts) < 3):
        x = np.asarray(patches[start : start + bs])
        m = x.shape[0]
        if m < bs:
            x = np.concatenate([x, np.zeros((bs - m, *x.shape[1:]), x.dtype)])
        y = apply_describe(graphdef, state, jnp.asarray(x))
        out[start : start + m] = np.asarray(y[:m])
    return out


def save(model: CKN, path: str | os.PathLike, *, training: dict | None = None) -> Path:
    """Writes a model directory (replacing an existing one only on success)."""
    path = Path(path)
    arrays = {}
    for i, layer in enumerate(model.layers):
        for name in _ARRAYS:
            var = getattr(layer, name)
            if var is not None:
                arrays[f"layers.{i}.{name}"] = np.asarray(var.get_value())
    meta = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "training": training or {}}
    with atomic_path(path, is_dir=True) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def load(path: str | os.PathLike) -> CKN:
    """Reads a model directory written by ``save``.

    Raises:
      InputError: missing directory, files, arrays, or a corrupt file.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model directory not found: {path}")
    cfg_file, arr_file = path / "config.json", path / "arrays.npz"
    for f in (cfg_file, arr_file):
        if not f.is_file():
            raise InputError(f"{path}: not a CKN model directory (missing {f.name})")
    try:
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"{cfg_file}: not a CKN model config (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise InputError(f"{cfg_file}: unsupported model version {meta.get('version')!r}")
        config = CKNConfig.from_dict(meta["config"])
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{cfg_file}: corrupt model config ({type(e).__name__}: {e})") from None
    model = CKN(config, rngs=nnx.Rngs(0))
    try:
        with np.load(arr_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{arr_file}: corrupt model arrays ({type(e).__name__})") from None
    for i, layer in enumerate(model.layers):
        for name in _ARRAYS:
            var = getattr(layer, name)
            if var is None:
                continue
            key = f"layers.{i}.{name}"
            if key not in arrays:
                raise InputError(f"{arr_file}: missing array {key}")
            a = arrays[key]
            if a.shape != var.get_value().shape or not np.isfinite(a).all():
                raise InputError(
                    f"{arr_file}: array {key} has shape {a.shape} (expected {var.get_value().shape}) or non-finite values"
                )
            var.set_value(jnp.asarray(a, jnp.float32))
    return model


def read_training_report(path: str | os.PathLike) -> dict:
    """The training report stored beside a saved model ({} if none)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("training", {})
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read model config ({type(e).__name__})") from None
