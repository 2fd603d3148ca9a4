"""Building an index and adding images to it: collecting, describing, whitening.

:func:`build_index` describes a collection and fits what the description needs
(PCA-whitening; the VLAD codebook and PCAs); :func:`add_to_index` appends images
described and whitened exactly as the indexed ones (:func:`describe_for_index`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckn import InputError
from retrieval._src.data import IMAGE_EXTENSIONS
from retrieval._src.data.io import read_image_any
from retrieval._src.image_folder import list_images, usable_images
from retrieval._src.index.core import Part, SavedIndex, _grow, _join, _make_searcher, _method
from retrieval._src.index.models import index_describer
from retrieval._src.index.settings import (
    EXACT_LIMIT,
    VLAD_WHITEN_DIM,
    WHITEN_MIN_RATIO,
    IndexSettings,
)
from retrieval._src.postprocess import apply_whitening, fit_pca_whitening

# --------------------------------------------------------------------------- images


def _collect(images, root) -> tuple[str, Path, list[Path], list[str]]:
    """(root as given, root absolute, absolute image paths, paths relative to root)."""
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        files = list_images(folder)
        given = os.fspath(images)
        return (
            given,
            folder.resolve(),
            [f.resolve() for f in files],
            [f.relative_to(folder).as_posix() for f in files],
        )
    if not isinstance(images, Sequence) or isinstance(images, (bytes, np.ndarray)):
        raise InputError(
            f"images must be a folder or a list of image paths, got {type(images).__name__}"
        )
    if len(images) == 0:
        raise InputError("images: empty list, nothing to index")
    base = Path(root) if root is not None else None
    out, rels = [], []
    for p in images:
        if not isinstance(p, (str, os.PathLike)):
            raise InputError(f"images must be image paths, got a {type(p).__name__}")
        p = Path(p)
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f"not an image file ({', '.join(IMAGE_EXTENSIONS)}): {p}")
        full = (base / p) if base is not None and not p.is_absolute() else p
        if not full.is_file():
            raise InputError(f"image not found: {full}")
        out.append(full.resolve())
        rels.append(p.as_posix())
    given = "" if root is None else os.fspath(root)
    return given, (base.resolve() if base is not None else Path.cwd()), out, rels


def _check_twice(files: list[Path]) -> None:
    seen = set()
    for f in files:
        if f in seen:
            raise InputError(f"image given twice: {f}")
        seen.add(f)


def _usable(given: str, files: list[Path], rels: list[str], strict: bool, *, needed=None):
    """(files, rels) of the usable images and a ``"PATH: reason"`` line per skipped one
    (:func:`retrieval.image.usable_images`: the bad-image policy of every command).

    ``needed``: where at least one usable image is required ("no usable image in NEEDED:
    reasons" otherwise); None: none is."""
    keep, skipped = usable_images(files, names=[_join(given, r) for r in rels], strict=strict)
    if needed is not None and not keep:
        raise InputError(f"no usable image in {needed}: {'; '.join(skipped)}")
    return [files[i] for i in keep], [rels[i] for i in keep], skipped


# --------------------------------------------------------------------------- describing


def _vectors(describer, images: list, progress: bool) -> np.ndarray:
    """(N, D) float32 vectors of images (paths or uint8 arrays) by the index's describer."""
    items = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else x for x in images]
    return np.asarray(describer.describe(items, progress=progress).vectors, np.float32)


def _whiten_plan(settings: IndexSettings, n_fit: int, d: int, where: str) -> tuple[int | None, str]:
    """(whitened dimension or None, reason) for ``n_fit`` fitting images."""
    if settings.whiten == "none":
        return None, "whiten none"
    if settings.whiten == "auto":
        dim = settings.whiten_dim or (VLAD_WHITEN_DIM if settings.kind == "local" else d)
        need = WHITEN_MIN_RATIO * dim
        if n_fit < need:
            return None, (
                f"whiten auto: {n_fit} images ({where}) < {need} = {WHITEN_MIN_RATIO} x {dim} "
                "dimensions: not whitened"
            )
        return dim, (
            f"whiten auto: {n_fit} images ({where}) >= {need} = {WHITEN_MIN_RATIO} x {dim} "
            f"dimensions: PCA-whitened to {dim}-D"
        )
    if n_fit < 2:
        raise InputError(f"PCA-whitening needs at least 2 images ({where}), got {n_fit}")
    if settings.kind == "local":
        dim = settings.whiten_dim or VLAD_WHITEN_DIM
    else:
        dim = settings.whiten_dim or min(d, max(1, n_fit // WHITEN_MIN_RATIO))
    return dim, f"whiten pca: PCA-whitened to {dim}-D, fitted on {n_fit} images ({where})"


def _whitening_info(settings: IndexSettings, wdim, where: str, n_fit: int, reason: str) -> dict:
    """What the whitening was fitted on, and why (``index.json``'s ``whitening``)."""
    return {
        "kind": "none" if wdim is None else "pca",
        "requested": settings.whiten,
        "dim": wdim,
        "fitted_on": where if wdim is not None else None,
        "fit_images": int(n_fit),
        "reason": reason,
    }


def _train_vlad(describer, settings: IndexSettings, train: list, where: str, progress: bool):
    """VLAD's codebook and PCAs trained on ``train`` (the PCA-whitening as its ``pca_dim``).

    Returns:
      (the trained describer, whitened dimension or None, the whitening reason).
    """
    wdim, reason = _whiten_plan(settings, len(train), 0, where)
    d = settings.describer
    trained = describer.with_config(
        dataclasses.replace(d, vlad=dataclasses.replace(d.vlad, pca_dim=wdim))
    ).train([str(f) for f in train], progress=progress)
    return trained, wdim, reason


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_index(
    images,
    settings: IndexSettings,
    *,
    root: str | os.PathLike | None = None,
    whiten_images=None,
    progress: bool = False,
    record: dict | None = None,
    strict: bool = False,
    info: dict | None = None,
) -> SavedIndex:
    """Describes a collection, fits whitening / VLAD, and returns a searchable index.

    Unreadable, truncated and too small images (:func:`retrieval.image.usable_images`)
    are skipped, listed in the history entry's ``skipped`` and in ``info``; ``strict``
    raises on the first instead.

    Args:
      images: a folder (every image under it, recursively) or a list of image paths
        (relative to ``root`` when given).
      settings: an :class:`IndexSettings`.
      root: base folder of a list of paths.
      whiten_images: a folder (or list of paths) of other images to fit the whitening
        (and for VLAD the codebook) on; default: the indexed images.
      progress: progress bars.
      record: extra JSON-ready facts for the history entry (e.g. the command's provenance).
      strict: raise on the first bad image instead of skipping it.
      info: if given, filled with ``count`` (images indexed) and ``skipped`` (one
        ``"PATH: reason"`` line per skipped image, whitening images too).

    Returns:
      A :class:`SavedIndex` (not written: :func:`save_index` it).

    Raises:
      InputError: no usable image, a bad image with ``strict``, bad settings, too few
        images to whiten.
    """
    if not isinstance(settings, IndexSettings):
        raise InputError(f"settings must be IndexSettings, got {type(settings).__name__}")
    t0 = time.perf_counter()
    given, root_abs, files, rels = _collect(images, root)
    _check_twice(files)
    files, rels, skipped = _usable(given, files, rels, strict, needed=given or "the list")
    fit_files = None
    where = "the indexed images"
    if whiten_images is not None:
        w_given, _, fit_files, w_rels = _collect(whiten_images, None)
        fit_files, _, w_skipped = _usable(w_given, fit_files, w_rels, strict)
        skipped += w_skipped
        where = os.fspath(whiten_images) if isinstance(whiten_images, (str, os.PathLike)) else (
            f"{len(fit_files)} other images")  # fmt: skip
        if not fit_files:
            raise InputError(f"no usable whitening image in {where}")
    whitening, vlad = None, None
    describer, description = index_describer(settings.describer)
    if settings.kind == "global":
        raw = _vectors(describer, files, progress)
        fit = raw if fit_files is None else _vectors(describer, fit_files, progress)
        wdim, reason = _whiten_plan(settings, fit.shape[0], raw.shape[1], where)
        if wdim is not None:
            whitening = fit_pca_whitening(fit, min(wdim, raw.shape[1]))
            vectors = apply_whitening(whitening, raw)
        else:
            vectors = np.asarray(raw, np.float32)
        description["raw_dim"] = int(raw.shape[1])
    else:  # VLAD: the codebook (and PCA-whitening, its pca_dim) fitted on the fitting images
        train = files if fit_files is None else fit_files
        fitted, wdim, reason = _train_vlad(describer, settings, train, where, progress)
        vlad = fitted.model
        vectors = _vectors(fitted, files, progress)
        description["vlad_dim"] = int(vlad.centers.size)
    n_fit = len(fit_files) if fit_files is not None else len(files)
    whitening_info = _whitening_info(settings, wdim, where, n_fit, reason)
    vectors = np.ascontiguousarray(vectors, np.float32)
    description["dim"] = int(vectors.shape[1])
    method = _method(settings, vectors.shape[0])
    searcher, search_info = _make_searcher(vectors, method, nprobe=settings.nprobe)
    search_info.update(requested=settings.search, exact_limit=EXACT_LIMIT)
    part = Part(uuid.uuid4().hex[:16], given, str(root_abs), tuple(rels))
    entry = {
        "op": "build",
        "images": given or f"{len(files)} paths",
        "count": len(files),
        "skipped": skipped,
        "utc": _utc(),
        "seconds": round(time.perf_counter() - t0, 3),
        **(record or {}),
    }
    if info is not None:
        info.update(count=len(files), skipped=list(skipped))
    return SavedIndex(
        settings=settings,
        description=description,
        vectors=vectors,
        parts=(part,),
        whitening=whitening,
        whitening_info=whitening_info,
        vlad=vlad,
        search_info=search_info,
        uid=uuid.uuid4().hex,
        generation=1,
        history=(entry,),
        searcher=searcher,
    )


def describe_for_index(index: SavedIndex, images, *, progress: bool = False) -> np.ndarray:
    """Searchable (N, dim) vectors of images (paths or uint8 arrays), as the index describes.

    Raises:
      InputError: an unreadable image, a backbone weights file or CKN model that changed.
    """
    items = list(images)
    if not items:
        raise InputError("images: empty list, nothing to describe")
    describer, _ = index_describer(index.settings.describer, index.description)
    if index.settings.kind == "local":  # VLAD: the index's fitted model; images read as RGB
        describer = describer.with_model(index.vlad)
        items = [read_image_any(x) if isinstance(x, (str, os.PathLike)) else x for x in items]
    raw = _vectors(describer, items, progress)
    if index.whitening is not None:
        return apply_whitening(index.whitening, raw)
    return raw


def add_to_index(
    index: SavedIndex,
    images,
    *,
    root: str | os.PathLike | None = None,
    progress: bool = False,
    record: dict | None = None,
    strict: bool = False,
    info: dict | None = None,
) -> SavedIndex:
    """A new index with more images, described and whitened as the indexed ones.

    Images already in the index (the same file) are left out, so adding a growing
    folder again adds only its new images; bad images are skipped as by
    :func:`build_index`. The fitted whitening / VLAD models are kept (never
    refitted); an IVF-PQ index keeps its trained quantizer and gets the new vectors;
    under ``search="auto"`` an exact index that reaches ``EXACT_LIMIT`` vectors
    becomes IVF-PQ, trained on all of them. ``index`` itself is unchanged, and is
    what comes back when no new usable image is left.

    Args:
      index: a :class:`SavedIndex`.
      images: a folder or a list of image paths (relative to ``root`` when given).
      root, progress, record, strict: as :func:`build_index`.
      info: if given, filled with ``count`` (images added), ``already_indexed`` and
        ``skipped`` (one ``"PATH: reason"`` line per skipped bad image).

    Raises:
      InputError: no image, an image given twice, a bad image with ``strict``, a changed
        weights file / model.
    """
    if index.search_info.get("storage") == "ondisk":
        raise InputError(
            "this index was merged from parts and is mapped from disk: build parts of the "
            "new images with the same fitted file and merge again"
        )
    t0 = time.perf_counter()
    given, root_abs, files, rels = _collect(images, root)
    _check_twice(files)
    have = set(index.resolved_paths())
    fresh = [i for i, f in enumerate(files) if f not in have]
    already = len(files) - len(fresh)
    files, rels = [files[i] for i in fresh], [rels[i] for i in fresh]
    files, rels, skipped = _usable(given, files, rels, strict)
    if info is not None:
        info.update(count=len(files), already_indexed=already, skipped=list(skipped))
    if not files:
        return index
    new = describe_for_index(index, files, progress=progress)
    vectors = np.ascontiguousarray(np.concatenate([index.vectors, new]), np.float32)
    method = _method(index.settings, vectors.shape[0])
    search_info = dict(index.search_info)
    if method == "exact":
        searcher, search = _make_searcher(vectors, "exact")
    elif index.search_info["method"] == "ivfpq":
        searcher, search = _grow(index, new, vectors, index.search_info["ivfpq"])
    else:
        searcher, search = _make_searcher(vectors, "ivfpq", nprobe=index.settings.nprobe)
    search_info.update(search)
    part = Part(uuid.uuid4().hex[:16], given, str(root_abs), tuple(rels))
    entry = {
        "op": "add",
        "images": given or f"{len(files)} paths",
        "count": len(files),
        "already_indexed": already,
        "skipped": skipped,
        "utc": _utc(),
        "seconds": round(time.perf_counter() - t0, 3),
        **(record or {}),
    }
    return dataclasses.replace(
        index,
        vectors=vectors,
        parts=(*index.parts, part),
        search_info=search_info,
        generation=index.generation + 1,
        history=(*index.history, entry),
        searcher=searcher,
    )
