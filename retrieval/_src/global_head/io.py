"""A head folder on disk: :func:`save_global_head`, :func:`load_global_head`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import ckn
from ckn import InputError
from retrieval._src.global_head.config import (
    GlobalHeadConfig,
)
from retrieval._src.global_head.forward import (
    HeadParams,
)
from retrieval._src.global_head.model import (
    GlobalHead,
)

FORMAT, VERSION = "ckn-global-head", 1
_CONFIG_FILE, _ARRAYS_FILE = "config.json", "arrays.npz"


def save_global_head(head: GlobalHead, folder: str | os.PathLike, *, training=None) -> Path:
    """Writes a head folder atomically: ``config.json`` + ``arrays.npz``.

    Args:
      head: the head.
      folder: the folder (replaced as a whole if it exists; parents created).
      training: a JSON-ready dict stored as ``training`` (default: ``head.training``).

    Returns:
      The folder.
    """
    folder = Path(folder)
    prm = head.params()
    arrays = {
        k: np.asarray(getattr(prm, k)) for k in HeadParams._fields if getattr(prm, k) is not None
    }
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "kind": head.head,  # the file format keeps its key
        "channels": head.channels,
        "levels": head.levels,
        "dim": head.dim,
        "whitened": head.whitened,
        "p": None if head.p is None else float(head.p.get_value()),
        "backbone": head.backbone,
        "config": None if head.config is None else head.config.to_dict(),
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "training": head.training if training is None else training,
    }
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise InputError(f"the head's record is not valid JSON ({e})") from None
    with ckn.files.atomic_path(folder, is_dir=True) as tmp:
        (tmp / _CONFIG_FILE).write_text(text)
        with open(tmp / _ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
    return folder


def load_global_head(folder: str | os.PathLike) -> GlobalHead:
    """Reads a head folder written by :func:`save_global_head` (``ckn train-global``).

    Returns:
      A :class:`GlobalHead`: ``head.describe(maps, mask)`` on backbone maps,
      ``head.describe_images(backbone, images, global_config)`` on images,
      ``head.check_backbone(backbone)``.

    Raises:
      InputError: a missing folder or file, another format or version, arrays that do
        not match the record.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"global head folder not found: {folder}")
    cfg_path, arr_path = folder / _CONFIG_FILE, folder / _ARRAYS_FILE
    for p in (cfg_path, arr_path):
        if not p.is_file():
            raise InputError(f"{folder} is not a global head folder (missing {p.name})")
    try:
        doc = json.loads(cfg_path.read_text())
    except (ValueError, OSError) as e:
        raise InputError(f"{cfg_path}: unreadable ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: not a global head (format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise InputError(f"{cfg_path}: version {doc.get('version')!r}, this code reads {VERSION}")
    try:
        with np.load(arr_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ckn.files.CORRUPT_FILE_ERRORS as e:
        raise InputError(f"{arr_path}: corrupt ({type(e).__name__})") from None
    if set(arrays) - set(HeadParams._fields) or {
        k: list(v.shape) for k, v in arrays.items()
    } != doc.get("arrays"):
        raise InputError(f"{arr_path}: arrays do not match {cfg_path.name}")
    for k, v in arrays.items():
        if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
            raise InputError(f"{arr_path}: {k} is not a finite float array")
    config = None
    if doc.get("config") is not None:
        try:
            config = GlobalHeadConfig(**doc["config"])
        except TypeError as e:
            raise InputError(f"{cfg_path}: bad config ({e})") from None
    params = HeadParams(**{k: jnp.asarray(v) for k, v in arrays.items()})
    return GlobalHead(
        params,
        head=doc.get("kind"),
        channels=doc.get("channels"),
        levels=int(doc.get("levels", 3)),
        backbone=doc.get("backbone") or {},
        config=config,
        training=doc.get("training") or {},
    )
