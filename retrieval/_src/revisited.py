"""The revisited Oxford / Paris protocol: ground-truth files and mAP / mP@k (revisitop).

Ground truth (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``): a pickled dict
with ``imlist`` (database image names), ``qimlist`` (query image names) and
``gnd``, one dict per query with ``bbx`` (query box x1, y1, x2, y2 in pixels;
queries are cropped to it), and ``easy``, ``hard``, ``junk``: database indices
(into ``imlist``). :func:`load_gnd` reads it without running arbitrary pickle
code.

Protocols, per query (GLOBAL_NOTES section 5):

=========  =================  ==================
protocol   positives          junk (ignored)
=========  =================  ==================
easy       easy               junk + hard
medium     easy + hard        junk
hard       hard               junk + easy
=========  =================  ==================

Junk images are removed from the ranking before anything is measured. A query
without positives under a protocol is skipped (and counted). AP is revisitop's
trapezoid rule: with the positives at 0-based ranks r_0 < r_1 < ... (after junk
removal) and n_pos positives in the ground truth,
``AP = (1 / n_pos) sum_j (j / r_j + (j + 1) / (r_j + 1)) / 2``, with
``j / r_j = 1`` when ``r_j = 0``; positives missing from a truncated ranking
count as never found. mP@k: for each query ``k_q = min(k, rank of its last
retrieved positive)`` (1-based) and ``P = (positives in the top k_q) / k_q``,
averaged over the evaluated queries (0 for a query that retrieves no positive,
where revisitop fails). Values are fractions in [0, 1]; revisitop prints
percentages (x 100).

References:
  F. Radenovic, A. Iscen, G. Tolias, Y. Avrithis, O. Chum, "Revisiting Oxford
  and Paris: large-scale image retrieval benchmarking", CVPR 2018, section 4;
  revisitop ``compute_map``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np

from ckn import InputError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

PROTOCOLS = ("easy", "medium", "hard")
_KEYS = ("easy", "hard", "junk")


# --------------------------------------------------------------------------- mAP


def _protocol_lists(g: Mapping, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    easy, hard, junk = (np.asarray(g[key], np.int64).ravel() for key in _KEYS)
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    return hard, np.concatenate([junk, easy])


def _check_gnd_entry(g, q: int) -> None:
    """Keys, int lists, no negative index, easy / hard / junk pairwise disjoint."""
    if not isinstance(g, Mapping):
        raise InputError(f"gnd[{q}] must be a dict with easy, hard, junk, got {type(g).__name__}")
    lists = {}
    for key in _KEYS:
        if key not in g:
            raise InputError(f"gnd[{q}] has no {key!r} list")
        a = np.asarray(g[key])
        if a.size == 0:
            a = np.zeros(0, np.int64)
        elif a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise InputError(
                f"gnd[{q}][{key!r}] must be a list of int indices, "
                f"got shape {a.shape} dtype {a.dtype}"
            )
        if a.size and a.min() < 0:
            raise InputError(f"query {q}: {key} index {int(a.min())} is negative")
        lists[key] = a
    for first, second in (("easy", "hard"), ("easy", "junk"), ("hard", "junk")):
        common = np.intersect1d(lists[first], lists[second])
        if common.size:
            raise InputError(f"query {q}: image {int(common[0])} is both in {first} and {second}")


def _check_ranks(ranks, n_queries: int) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 2:
        raise InputError(f"ranks must be (n_db, n_queries), got shape {r.shape}")
    if r.shape[1] != n_queries:
        raise InputError(
            f"ranks has {r.shape[1]} columns (queries) but gnd has {n_queries} queries; "
            "ranks is (n_db, n_queries), column q best first (transpose a (Q, N) array)"
        )
    if r.shape[0] == 0:
        raise InputError("ranks is empty (no database image ranked)")
    if not np.issubdtype(r.dtype, np.integer):
        raise InputError(f"ranks must hold int database indices, got dtype {r.dtype}")
    if r.min() < 0:
        raise InputError(f"ranks holds a negative index {int(r.min())}")
    s = np.sort(r, axis=0)
    dup = s[1:] == s[:-1]
    if dup.any():
        row, q = np.argwhere(dup)[0]
        raise InputError(f"ranks column {q} lists database image {int(s[row, q])} twice")
    return r.astype(np.int64, copy=False)


def _ap_and_precisions(order: np.ndarray, ok: np.ndarray, junk: np.ndarray, kappas):
    """AP and P@k of one query; order (n,) database indices best first."""
    kept = order[~np.isin(order, junk)]
    pos = np.flatnonzero(np.isin(kept, ok)).astype(np.float64)  # 0-based ranks, after junk
    n_pos = np.unique(ok).size
    j = np.arange(pos.size, dtype=np.float64)
    prec_before = np.where(pos == 0, 1.0, j / np.maximum(pos, 1.0))
    prec_at = (j + 1.0) / (pos + 1.0)
    ap = float(np.sum((prec_before + prec_at) / 2.0) / n_pos)
    if pos.size == 0:
        return ap, [0.0] * len(kappas)
    last = pos[-1] + 1.0
    prs = []
    for k in kappas:
        kq = min(float(k), last)
        prs.append(float(np.sum(pos + 1.0 <= kq) / kq))
    return ap, prs


def revisited_map(ranks, gnd: Sequence[Mapping], kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """mAP and mP@k of a ranking under the easy, medium and hard protocols.

    Args:
      ranks: (n_db, n_queries) int database indices, column q = query q's
        ranking, best first (revisitop's layout; ``np.argsort(-scores, axis=1).T``
        for a (Q, N) score matrix). May be truncated (n_db rows below the
        database size); no index twice in a column.
      gnd: n_queries dicts with ``easy``, ``hard``, ``junk`` index lists (e.g.
        ``load_gnd(path)["gnd"]``), pairwise disjoint per query.
      kappas: the k of mP@k, each >= 1.

    Returns:
      ``{"easy": r, "medium": r, "hard": r}``, each ``r`` a dict with
      ``"map"`` (float in [0, 1], None if every query was skipped),
      ``"mp@k"`` (list of floats aligned with ``"kappas"``, or None),
      ``"kappas"`` (list of int), ``"ap"`` (per-query list, None for a
      skipped query), ``"num_queries"`` (evaluated), ``"num_skipped"``
      (queries without positives). Fractions, not percentages. JSON-ready
      (no NaN).

    Raises:
      InputError: ranks not (n_db, n_queries) ints, a repeated or negative
        index, a gnd entry without its lists, overlapping lists, a bad k.

    Examples:
      >>> ranks = np.array([[0], [1], [2]])  # one query: images 0, 1, 2 in order
      >>> revisited_map(ranks, [{"easy": [1], "hard": [], "junk": [0]}])["easy"]["map"]
      1.0

    References:
      Radenovic et al., CVPR 2018, section 4; revisitop ``compute_map``.
    """
    if isinstance(gnd, Mapping) or not isinstance(gnd, Sequence):
        raise InputError(f"gnd must be a list of per-query dicts, got {type(gnd).__name__}")
    ks = [int(k) for k in kappas]
    if any(k < 1 for k in ks):
        raise InputError(f"kappas must be >= 1, got {list(kappas)}")
    r = _check_ranks(ranks, len(gnd))
    for q, g in enumerate(gnd):
        _check_gnd_entry(g, q)
    out = {}
    for protocol in PROTOCOLS:
        aps: list[float | None] = []
        prs = []
        for q, g in enumerate(gnd):
            ok, junk = _protocol_lists(g, protocol)
            if ok.size == 0:
                aps.append(None)
                continue
            ap, pr = _ap_and_precisions(r[:, q], ok, junk, ks)
            aps.append(ap)
            prs.append(pr)
        done = len(prs)
        out[protocol] = {
            "map": float(np.mean([a for a in aps if a is not None])) if done else None,
            "mp@k": [float(v) for v in np.mean(prs, axis=0)] if done else None,
            "kappas": ks,
            "ap": aps,
            "num_queries": done,
            "num_skipped": len(gnd) - done,
        }
    return out


# --------------------------------------------------------------------------- ground truth


# What a ground-truth pickle may name: NumPy array / scalar reconstruction
# (protocols 2-5, Python 2 or 3 writers) and the bytes helper of protocol 2.
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytes"): bytes,  # protocol 2 writes bytes under Python 2's name
}


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside _ALLOWED."""


class _GndUnpickler(pickle.Unpickler):
    """Plain containers, strings, numbers and numeric NumPy arrays; nothing else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"it refers to {module}.{name}, which a ground-truth file does not need"
            ) from None


def _index_list(v, where: str) -> np.ndarray:
    a = np.asarray(v)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.integer)
        or (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a)))
    ):
        raise InputError(f"{where} must be a list of int indices, got dtype {a.dtype}")
    return a.astype(np.int64).ravel()


def _name_list(v, key: str, path) -> list[str]:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise InputError(f"{path}: {key!r} must be a list of image names")
    return list(v)


def load_gnd(path: str | os.PathLike, n_images: int | None = None) -> dict:
    """Reads and checks a revisited Oxford / Paris ground-truth pickle.

    The pickle is read with a restricted unpickler: only dicts, lists, strings,
    numbers and numeric NumPy arrays (some writers store the index lists as
    arrays); a file naming any other class or function is refused, never run.

    Args:
      path: ``gnd_roxford5k.pkl`` or any file of the same layout.
      n_images: the number of database images the rankings will cover, if
        known (e.g. the rows of a descriptor matrix); it must be at least
        ``len(imlist)`` (more: distractors appended, as R1M).

    Returns:
      ``{"imlist": [str], "qimlist": [str], "gnd": [{"bbx": (4,) float64
      (x1, y1, x2, y2), "easy": (n,) int64, "hard": ..., "junk": ...}],
      "n_images": int}``; pass ``["gnd"]`` to :func:`revisited_map`.

    Raises:
      InputError: a missing or unreadable file, a refused pickle, missing keys,
        a query count that differs from ``qimlist``, an index outside
        ``imlist`` (the message names the query and the index), overlapping
        easy / hard / junk lists, a box that is not 4 finite ordered numbers.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read the ground truth {path}: {e.strerror or e}") from None
    try:
        cfg = _GndUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as e:
        raise InputError(f"{path}: refusing the ground-truth pickle: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise InputError(
            f"{path} is not a readable ground-truth pickle ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(cfg, Mapping):
        raise InputError(f"{path}: the ground truth must be a dict, got {type(cfg).__name__}")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in cfg:
            raise InputError(f"{path}: the ground truth has no {key!r}")
    imlist = _name_list(cfg["imlist"], "imlist", path)
    qimlist = _name_list(cfg["qimlist"], "qimlist", path)
    raw_gnd = cfg["gnd"]
    if not isinstance(raw_gnd, (list, tuple)):
        raise InputError(f"{path}: 'gnd' must be a list of per-query dicts")
    if len(raw_gnd) != len(qimlist):
        raise InputError(f"{path}: {len(raw_gnd)} gnd entries for {len(qimlist)} query names")
    n_db = len(imlist)
    if n_images is not None and int(n_images) < n_db:
        raise InputError(
            f"{path}: the ground truth lists {n_db} database images, n_images is only {n_images}"
        )
    gnd = []
    for q, g in enumerate(raw_gnd):
        who = f"query {q} ({qimlist[q]})"
        if not isinstance(g, Mapping):
            raise InputError(f"{path}: {who} is not a dict")
        entry = {}
        for key in _KEYS:
            if key not in g:
                raise InputError(f"{path}: {who} has no {key!r} list")
            entry[key] = _index_list(g[key], f"{who} {key}")
            bad = entry[key][(entry[key] < 0) | (entry[key] >= n_db)]
            if bad.size:
                raise InputError(
                    f"{path}: {who}: {key} index {int(bad[0])} is outside "
                    f"the {n_db} images of imlist"
                )
        if "bbx" not in g:
            raise InputError(f"{path}: {who} has no 'bbx' box")
        try:
            bbx = np.asarray(g["bbx"], np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: {who}: bbx is not numeric") from None
        if bbx.shape != (4,) or not np.isfinite(bbx).all() or bbx[2] < bbx[0] or bbx[3] < bbx[1]:
            raise InputError(
                f"{path}: {who}: bbx must be 4 finite numbers x1 <= x2, y1 <= y2, "
                f"got {bbx.tolist()}"
            )
        entry["bbx"] = bbx
        try:
            _check_gnd_entry(entry, q)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        gnd.append(
            {"bbx": bbx, "easy": entry["easy"], "hard": entry["hard"], "junk": entry["junk"]}
        )
    return {
        "imlist": imlist,
        "qimlist": qimlist,
        "gnd": gnd,
        "n_images": n_db if n_images is None else int(n_images),
    }
