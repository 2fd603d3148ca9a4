"""The fitted state of a sharded index: fitted once on a sample, given to every shard.

A collection described in shards (:mod:`~retrieval._src.index.parts`) must be
post-processed and quantized the same way in every shard, or the merged index would
depend on how many shards there were. :func:`fit_images` (or :func:`fit_vectors` on
descriptors already computed) fits, once, on a sample of the collection:

* what the index post-processes descriptors with today (:func:`build_index`): the
  PCA-whitening of global descriptors, or the VLAD codebook and PCAs of local ones,
  under the same ``whiten`` rules (``WHITEN_MIN_RATIO``), fitted on the sample;
* when the collection is searched with IVF-PQ (``search="auto"`` and at least
  ``EXACT_LIMIT`` images, or ``search="ivfpq"``), the IVF-PQ coarse quantizer and PQ
  codebooks (:func:`retrieval.train_ivfpq`, sizes for the whole collection), trained on
  the sample's searchable vectors.

The result, a :class:`FittedState`, is saved as one ``.npz`` file
(:func:`save_fitted`): a JSON header (format tag, version, settings, description,
whitening and search facts) and the arrays, the trained empty faiss index serialized
as bytes. Its SHA-256 names it: every part records the SHA-256 of the fitted file it
was built with, and a merge refuses parts that disagree.

Examples:
  >>> fitted = fit_images("photos/", IndexSettings(global_config=GlobalConfig()), sample=10_000)
  >>> save_fitted(fitted, "photos.fitted.npz")
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import ckn
from ckn import InputError
from ckn.files import atomic_path
from retrieval._src.index import _npz_vlad, _npz_whitening, _vlad_from, _whitening_from
from retrieval._src.index.build import (
    _collect,
    _train_vlad,
    _usable,
    _vectors,
    _whiten_plan,
    _whitening_info,
)
from retrieval._src.index.core import _method
from retrieval._src.index.models import index_describer
from retrieval._src.index.settings import EXACT_LIMIT, RERANK, IndexSettings, check_format
from retrieval._src.ivfpq import train_ivfpq
from retrieval._src.postprocess import PCAWhitening, Whitening, apply_whitening, fit_pca_whitening
from retrieval._src.vlad_fit import VladModel

#: Format tag and version of a fitted file; another version is refused.
FITTED_FORMAT = "ckn-index-fitted"
FITTED_VERSION = 1
#: Images (or vectors) a fit samples from the collection when not told otherwise.
FIT_SAMPLE = 50_000


@dataclasses.dataclass(frozen=True, eq=False)
class FittedState:
    """Post-processing and IVF-PQ quantizer fitted once, shared by every shard.

    Has the attributes of :class:`SavedIndex` that describing needs (``settings``,
    ``description``, ``whitening``, ``vlad``), so :func:`describe_for_index` describes
    images with it exactly as an index would.

    Attributes:
      settings: the :class:`IndexSettings`.
      description: the resolved description (backbone and weights SHA-256, or the local
        descriptor and model SHA-256; ``dim`` the searchable dimension).
      whitening: the fitted global whitening, or None.
      whitening_info: what was fitted on what, and why.
      vlad: the fitted VLAD model (local descriptors), else None.
      search_info: ``method`` ("exact" / "ivfpq"), ``count`` (the collection size it was
        chosen for), ``exact_limit``, and for IVF-PQ the sizes and ``rerank``.
      ivfpq: the trained, empty faiss IVF-PQ index serialized as (B,) uint8, or None.
      info: the sample (size, seed) and the caller's record; no timings, so that one fit
        on one sample gives the same file, byte for byte.
      sha256: SHA-256 of the file it was saved to or read from (None before saving).
      source: the bytes of that file (a part keeps an exact copy), or None.
    """

    settings: IndexSettings
    description: dict
    whitening: PCAWhitening | Whitening | None
    whitening_info: dict
    vlad: VladModel | None
    search_info: dict
    ivfpq: np.ndarray | None
    info: dict
    sha256: str | None = None
    source: bytes | None = dataclasses.field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """The searchable dimension."""
        return int(self.description["dim"])

    @property
    def method(self) -> str:
        """How the merged index searches: "exact" or "ivfpq"."""
        return str(self.search_info["method"])

    def faiss_index(self) -> Any:
        """A fresh copy of the trained, empty faiss IVF-PQ index (None for exact search)."""
        if self.ivfpq is None:
            return None
        import faiss

        return faiss.deserialize_index(self.ivfpq)

    def postprocess(self, raw) -> np.ndarray:
        """Searchable (N, dim) float32 vectors of raw (N, D) global descriptors."""
        if self.settings.kind != "global":
            raise InputError(
                "postprocess takes global descriptors; VLADs are encoded from features"
            )
        x = np.asarray(raw, np.float32)
        if self.whitening is not None:
            return apply_whitening(self.whitening, x)
        return x


def _sample_rows(count: int, sample: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded sample of ``sample`` of ``count`` rows (all if fewer)."""
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 2:
        raise InputError(f"sample must be an integer >= 2, got {sample!r}")
    if sample >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, int(sample), replace=False))


def _finish(settings, description, whitening, whitening_info, vlad, searchable, count, info):
    """The FittedState: the search method for ``count`` vectors, IVF-PQ trained if needed."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count must be a positive integer, got {count!r}")
    method = _method(settings, int(count))
    search = {
        "method": method,
        "requested": settings.search,
        "count": int(count),
        "exact_limit": EXACT_LIMIT,
    }
    blob = None
    if method == "ivfpq":
        import faiss

        trained = train_ivfpq(searchable, int(count), nprobe=settings.nprobe)
        search.update(ivfpq=dict(trained.options), rerank=RERANK)
        blob = faiss.serialize_index(trained._index)
    description = dict(description, dim=int(searchable.shape[1]))
    return FittedState(settings, description, whitening, whitening_info, vlad, search, blob, info)


def fit_vectors(
    sample,
    settings: IndexSettings,
    *,
    count: int,
    description: dict | None = None,
    record: dict | None = None,
) -> FittedState:
    """Fits the whitening and the IVF-PQ quantizer on raw global descriptors of a sample.

    Args:
      sample: (K, D) raw global descriptors of a sample of the collection.
      settings: global :class:`IndexSettings`.
      count: the size of the whole collection (chooses exact or IVF-PQ and its sizes).
      description: the description of the descriptors (backbone, weights SHA-256).
      record: extra JSON-ready facts kept in ``info``.

    Returns:
      A :class:`FittedState` (not written: :func:`save_fitted` it).

    Raises:
      InputError: local settings, bad vectors, too few vectors to whiten or to train.
    """
    if not isinstance(settings, IndexSettings) or settings.kind != "global":
        raise InputError("fit_vectors needs global IndexSettings (local ones: fit_images)")
    x = np.asarray(sample, np.float32)
    if x.ndim != 2 or x.shape[0] < 2 or not np.all(np.isfinite(x)):
        raise InputError(f"sample must be finite (K >= 2, D) vectors, got shape {x.shape}")
    where = f"a sample of {x.shape[0]}"
    wdim, reason = _whiten_plan(settings, x.shape[0], x.shape[1], where)
    whitening = fit_pca_whitening(x, min(wdim, x.shape[1])) if wdim is not None else None
    searchable = apply_whitening(whitening, x) if whitening is not None else x
    winfo = _whitening_info(settings, wdim, where, x.shape[0], reason)
    desc = dict(description or {"kind": "global"}, raw_dim=int(x.shape[1]))
    info = {"sample": int(x.shape[0]), **(record or {})}
    return _finish(settings, desc, whitening, winfo, None, searchable, count, info)


def fit_images(
    images,
    settings: IndexSettings,
    *,
    sample: int = FIT_SAMPLE,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    progress: bool = False,
    record: dict | None = None,
    strict: bool = False,
) -> FittedState:
    """Describes a seeded sample of a collection and fits what every shard will share.

    Bad images of the sample (unreadable, truncated, too small) are left out, as
    :func:`build_index` leaves them out (:func:`retrieval.image.usable_images`, the one
    policy); ``info["skipped"]`` names them and ``info["sample"]`` counts the images used.

    Args:
      images: a folder or a list of image paths (relative to ``root`` when given).
      settings: the :class:`IndexSettings` of the index.
      sample: images to sample (all of them when the collection is smaller).
      seed: seed of the sample.
      root, progress: as :func:`build_index`.
      record: extra JSON-ready facts (e.g. the command's provenance).
      strict: raise on the first bad image of the sample instead of leaving it out.

    Raises:
      InputError: no image, no usable image in the sample, a bad image with ``strict``,
        bad settings, too few images.
    """
    if not isinstance(settings, IndexSettings):
        raise InputError(f"settings must be IndexSettings, got {type(settings).__name__}")
    given, _, files, rels = _collect(images, root)
    order = sorted(range(len(rels)), key=rels.__getitem__)
    rows = _sample_rows(len(order), sample, seed)
    chosen, _, skipped = _usable(
        given, [files[order[i]] for i in rows], [rels[order[i]] for i in rows], strict,
        needed=f"the sample of {given or 'the list'}",
    )  # fmt: skip
    info = {"sample": len(chosen), "seed": int(seed), "skipped": skipped, **(record or {})}
    describer, desc = index_describer(settings.describer)
    if settings.kind == "global":
        raw = _vectors(describer, chosen, progress)
        return fit_vectors(raw, settings, count=len(files), description=desc, record=info)
    # VLAD: the codebook and PCAs (the PCA-whitening, its pca_dim) fitted on the sample.
    where = f"a sample of {len(chosen)}"
    trained, wdim, reason = _train_vlad(describer, settings, chosen, where, progress)
    vlad = trained.model
    searchable = _vectors(trained, chosen, progress)
    desc["vlad_dim"] = int(vlad.centers.size)
    winfo = _whitening_info(settings, wdim, where, len(chosen), reason)
    return _finish(settings, desc, None, winfo, vlad, searchable, len(files), info)


# --------------------------------------------------------------------------- the file


def save_fitted(fitted: FittedState, path: str | os.PathLike) -> FittedState:
    """Writes the fitted state to one ``.npz`` file, atomically.

    Returns:
      The state with ``sha256`` set to the written file's.
    """
    if not isinstance(fitted, FittedState):
        raise InputError(f"save_fitted needs a FittedState, got {type(fitted).__name__}")
    head = {
        "format": FITTED_FORMAT,
        "version": FITTED_VERSION,
        "settings": fitted.settings.to_json(),
        "description": fitted.description,
        "whitening": fitted.whitening_info,
        "vlad": None
        if fitted.vlad is None
        else {"config": dataclasses.asdict(fitted.vlad.config), "info": fitted.vlad.info},
        "search": fitted.search_info,
        "info": fitted.info,
    }
    arrays = {"header": np.array(json.dumps(head, allow_nan=False))}
    if fitted.whitening is not None:
        arrays.update({f"whitening.{k}": v for k, v in _npz_whitening(fitted.whitening).items()})
    if fitted.vlad is not None:
        arrays.update({f"vlad.{k}": v for k, v in _npz_vlad(fitted.vlad).items()})
    if fitted.ivfpq is not None:
        arrays["ivfpq"] = np.asarray(fitted.ivfpq, np.uint8)
    data = _npz_bytes(arrays)
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_bytes(data)
    return dataclasses.replace(fitted, sha256=hashlib.sha256(data).hexdigest(), source=data)


def _npz_bytes(arrays: dict) -> bytes:
    """The bytes of an ``.npz`` of ``arrays`` (``np.load`` reads it), the same on every run.

    ``np.savez`` stamps each member with the current time, so one fit saved twice
    would get two SHA-256s; here every member has the zip format's first date.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


def load_fitted(path: str | os.PathLike) -> FittedState:
    """Reads a fitted state written by :func:`save_fitted`.

    Raises:
      InputError: missing file, another format or version, a damaged file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"fitted file not found: {path}")
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            head = check_format(json.loads(str(z["header"])), path, FITTED_FORMAT,
                                FITTED_VERSION, "fit again")  # fmt: skip
            has_w = "whitening.type" in z.files
            whitening = _whitening_from(z, "whitening.") if has_w else None
            vlad = None
            if head["vlad"] is not None:
                vz = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("vlad.")}
                vlad = _vlad_from(_Files(vz), head["vlad"]["config"], head["vlad"]["info"])
            blob = np.array(z["ivfpq"]) if "ivfpq" in z.files else None
        settings = IndexSettings.from_json(head["settings"])
        return FittedState(
            settings,
            head["description"],
            whitening,
            head["whitening"],
            vlad,
            head["search"],
            blob,
            head["info"],
            hashlib.sha256(data).hexdigest(),
            data,
        )
    except InputError:
        raise
    except (TypeError, *ckn.files.CORRUPT_FILE_ERRORS) as e:
        raise InputError(
            f"{path}: damaged fitted file ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
        ) from None


class _Files(dict):
    """A dict that answers ``.files`` like an open ``.npz`` (for ``_vlad_from``)."""

    @property
    def files(self) -> list[str]:
        return list(self)
