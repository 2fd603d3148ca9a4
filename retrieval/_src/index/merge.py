"""Merging index parts into one saved index, streamed part by part.

:func:`merge_parts` checks the parts before writing anything: each is complete
(:func:`read_part_header`), all were written by the same part format and ckn version,
with the same settings, description (backbone and weights, or local describer), fitted
file and image list, and their shards are exactly 0..N-1 of one N (no overlap, none
missing). A problem is one :class:`ckn.InputError` line naming the part.

Then it writes one index folder (the format of :func:`save_index`, read by
:func:`load_index`), atomically (a temporary sibling, renamed):

* exact search (the fitted state chose it: fewer than ``EXACT_LIMIT`` images under
  ``search="auto"``): the parts' vectors concatenated in memory, as
  :func:`build_index` would have held them, and saved by :func:`save_index`;
* IVF-PQ: nothing holds all vectors. The vectors are streamed into one ``part-<id>.npy``
  (:func:`~retrieval._src.index.ondisk.concat_npy`, checking each part's SHA-256), the
  parts' inverted lists merged into ``ivfpq-1.ivfdata`` (faiss ``OnDiskInvertedLists``)
  beside ``ivfpq-1.faiss``; ``index.json`` says ``"storage": "ondisk"``, and
  :func:`load_index` maps both files instead of reading them (a query re-scores its
  ``RERANK`` x k IVF-PQ candidates with the mapped vectors).

Examples:
  >>> merge_parts([f"parts/{i}" for i in range(8)], "photos.index")
  >>> scores, ids = load_index("photos.index").search(vectors, 10)
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import atomic_path
from retrieval._src.index import (
    _JSON,
    _VLAD_FILE,
    _WHITENING_FILE,
    _header,
    _is_index,
    _npz_vlad,
    _npz_whitening,
    _part_meta,
    _write_json,
    _write_npz,
    save_index,
)
from retrieval._src.index.core import Part, SavedIndex, _make_searcher
from retrieval._src.index.fitted import load_fitted
from retrieval._src.index.ondisk import concat_npy, merge_invlists
from retrieval._src.index.parts import (
    CODES,
    FITTED,
    PATHS,
    VECTORS,
    list_sha256,
    read_part_header,
    shard_bounds,
    slice_paths,
)

_IVFDATA = "ivfpq-1.ivfdata"


def _describe_settings(a: dict, b: dict) -> str:
    """The first setting that differs, as ``key: a vs b``."""
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
    return "?"


def _check_same(folders: list[Path], heads: list[dict]) -> None:
    """Versions, settings, description, fitted file, image list and N agree with part 0."""
    ref, r = folders[0], heads[0]
    for f, h in zip(folders[1:], heads[1:]):
        if h["ckn_version"] != r["ckn_version"]:
            raise InputError(
                f"{f} was written by ckn {h['ckn_version']}, {ref} by ckn {r['ckn_version']}: "
                "build every part with one version"
            )
        if h["settings"] != r["settings"]:
            why = _describe_settings(h["settings"], r["settings"])
            raise InputError(f"{f} has other index settings than {ref} ({why})")
        if h["description"] != r["description"]:
            why = _describe_settings(h["description"], r["description"])
            raise InputError(f"{f} was described otherwise than {ref} ({why})")
        if h["fitted_sha256"] != r["fitted_sha256"]:
            raise InputError(
                f"{f} was built with another fitted file than {ref} (SHA-256 "
                f"{h['fitted_sha256'][:12]}... vs {r['fitted_sha256'][:12]}...)"
            )
        if (h["list_sha256"], h["total"]) != (r["list_sha256"], r["total"]):
            raise InputError(
                f"{f} sliced another image list than {ref} ({h['total']} vs {r['total']} "
                "images, or other paths)"
            )
        if h["shard"][1] != r["shard"][1]:
            raise InputError(
                f"{f} is shard {h['shard'][0]}/{h['shard'][1]} but {ref} is shard "
                f"{r['shard'][0]}/{r['shard'][1]}: parts of different splits"
            )


def _shard_order(folders: list[Path], heads: list[dict]) -> list[int]:
    """Positions of the parts in shard order, after checking 0..N-1 are each given once."""
    n = heads[0]["shard"][1]
    seen: dict[int, Path] = {}
    for f, h in zip(folders, heads):
        i = h["shard"][0]
        if i in seen:
            raise InputError(f"{f} is shard {i}/{n}, as {seen[i]} is: overlapping parts")
        start, stop = shard_bounds(h["total"], i, n)
        rows = h["count"] + len(h["left_out"])  # described + bad images left out
        if (h["start"], rows) != (start, stop - start):
            raise InputError(f"{f}: rows {h['start']}+{rows} are not those of shard {i}/{n}")
        seen[i] = f
    missing = [i for i in range(n) if i not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"shard {missing[0]}/{n}{more} is missing: {len(folders)} of {n} parts given"
        )
    where = {h["shard"][0]: k for k, h in enumerate(heads)}
    return [where[i] for i in range(n)]


def _check_out(out: Path, folders: list[Path], overwrite: bool) -> None:
    resolved = out.resolve()
    for f in folders:
        fr = f.resolve()
        if resolved == fr or fr in resolved.parents:
            raise InputError(f"the merged index {out} would be written inside the part {f}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not an index folder")
    if out.is_dir() and any(out.iterdir()):
        if _is_index(out) is None:
            raise InputError(f"{out} exists and is not an index folder: choose another path")
        if not overwrite:
            raise InputError(f"{out} holds another index: overwrite it explicitly")


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def merge_parts(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    record: dict | None = None,
) -> Path:
    """Merges the part folders of every shard into one index folder (module docstring).

    Args:
      parts: the part folders (:func:`save_part`), in any order, every shard once.
      out: the index folder to write.
      overwrite: replace an index already at ``out``.
      record: extra JSON-ready facts for the history entry (e.g. the command's provenance).

    Returns:
      ``out``.

    Raises:
      InputError: one line naming the part: incomplete, another version, other settings,
        backbone, fitted file or image list, overlapping or missing shards; ``out``
        inside a part or holding something else. Nothing is written then.
    """
    t0 = time.perf_counter()
    folders = [Path(p) for p in parts]
    if not folders:
        raise InputError("no part to merge")
    heads = [read_part_header(f) for f in folders]
    _check_same(folders, heads)
    order = _shard_order(folders, heads)
    folders, heads = [folders[k] for k in order], [heads[k] for k in order]
    out = Path(out)
    _check_out(out, folders, overwrite)
    fitted = load_fitted(folders[0] / FITTED)
    if fitted.sha256 != heads[0]["fitted_sha256"]:
        raise InputError(f"{folders[0] / FITTED} differs from the part's record: damaged part")
    meta = [_read_paths(f, h["count"]) for f, h in zip(folders, heads)]
    paths = tuple(p for m in meta for p in m["paths"])
    # Each part's slice is its paths and the bad images it left out, sorted.
    every = [p for m, h in zip(meta, heads) for p in slice_paths(m["paths"], h["left_out"])]
    if list_sha256(every) != heads[0]["list_sha256"]:
        raise InputError(
            f"the paths of the parts ({', '.join(f.name for f in folders)}) are not the sorted "
            "image list they record: a damaged part"
        )
    part = Part(uuid.uuid4().hex[:16], meta[0]["root"], meta[0]["root_abs"], paths)
    entry = {
        "op": "merge",
        "parts": [
            {
                "shard": f"{h['shard'][0]}/{h['shard'][1]}",
                "count": h["count"],
                "host": h["host"],
                "utc": h["utc"],
                "add_seconds": h["add_seconds"],
            }
            for h in heads
        ],
        "fitted_sha256": fitted.sha256,
        "fit": fitted.info,
        "count": len(paths),
        "skipped": [line for h in heads for line in h["record"].get("skipped", [])],
        "utc": _utc(),
        **(record or {}),
    }
    search = {k: v for k, v in fitted.search_info.items() if k != "count"}

    def saved(vectors, searcher, search_info):
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        return SavedIndex(
            settings=fitted.settings,
            description=fitted.description,
            vectors=vectors,
            parts=(part,),
            whitening=fitted.whitening,
            whitening_info=fitted.whitening_info,
            vlad=fitted.vlad,
            search_info=search_info,
            uid=uuid.uuid4().hex,
            generation=1,
            history=(entry,),
            searcher=searcher,
        )

    if fitted.method == "exact":
        chunks = [np.load(f / VECTORS, allow_pickle=False) for f in folders]
        vectors = np.ascontiguousarray(np.concatenate(chunks), np.float32)
        searcher, _ = _make_searcher(vectors, "exact")
        return save_index(saved(vectors, searcher, search), out, overwrite=overwrite)
    with atomic_path(out, is_dir=True) as tmp:
        tmp = Path(tmp)
        name = f"part-{part.id}.npy"
        concat_npy(
            [(f / VECTORS, h["vectors_sha256"]) for f, h in zip(folders, heads)],
            tmp / name,
            fitted.dim,
        )
        _write_json(tmp / f"part-{part.id}.json", _part_meta(part, Path(out)))
        if fitted.whitening is not None:
            _write_npz(tmp / _WHITENING_FILE, _npz_whitening(fitted.whitening))
        if fitted.vlad is not None:
            _write_npz(tmp / _VLAD_FILE, _npz_vlad(fitted.vlad))
        search.update(storage="ondisk", ivfdata=_IVFDATA)
        index = saved(np.load(tmp / name, mmap_mode="r"), None, search)
        head = _header(index)
        merge_invlists(
            fitted.faiss_index(),
            [f / CODES for f in folders],
            tmp / _IVFDATA,
            tmp / head["search"]["file"],
            len(paths),
            _renumbering(every, [p for h in heads for p in h["left_out"]]),
        )
        head["history"][0]["seconds"] = round(time.perf_counter() - t0, 3)
        _write_json(tmp / _JSON, head)
    return out


def _renumbering(every: list[str], left_out: list[str]) -> np.ndarray | None:
    """The parts' ids (rows of the whole sorted list ``every``) -> rows of the merged index,
    which holds ``every`` but ``left_out`` in the same order; None when none was left out."""
    if not left_out:
        return None
    gone = set(left_out)
    kept = np.fromiter((p not in gone for p in every), bool, len(every))
    return np.where(kept, np.cumsum(kept) - 1, -1).astype(np.int64)


def _read_paths(folder: Path, count: int) -> dict:
    try:
        meta = json.loads((folder / PATHS).read_text())
        out = {
            "root": str(meta["root"]),
            "root_abs": str(meta["root_abs"]),
            "paths": [str(p) for p in meta["paths"]],
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder / PATHS}: damaged part ({type(e).__name__})") from None
    if len(out["paths"]) != count:
        raise InputError(
            f"{folder / PATHS}: {len(out['paths'])} paths for {count} vectors: damaged"
        )
    return out
