"""The settings of an image index, fixed at build: its describer, whitening and search.

:class:`IndexSettings` holds ONE describer config (:data:`retrieval.image.DESCRIBERS`: a
pooling head, a learned head, CAM OfA or VLAD of local descriptors) and how the index whitens
and searches. The limits below are documented in :mod:`retrieval._src.index`; the check of
settings a query claims is :mod:`retrieval._src.index.check`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ckn import InputError
from retrieval._src.cam_search import CamDescription
from retrieval._src.describer import PoolingDescription
from retrieval._src.describers import DESCRIBERS, describer_name
from retrieval._src.global_desc import GlobalConfig
from retrieval._src.local import LocalConfig
from retrieval._src.settings import check_settings, setting, whiten_dim_setting
from retrieval._src.vlad_describer import VladDescription
from retrieval._src.vlad_fit import VladConfig

#: Format tag and version of ``index.json``; an index of another version is refused.
FORMAT = "ckn-image-index"
VERSION = 1
#: Collections of at least this many vectors are searched with IVF-PQ under ``search="auto"``.
EXACT_LIMIT = 50_000
#: IVF-PQ candidates per requested neighbour, re-scored exactly (benchmarks/bench_index.py:
#: recall@10 0.90 with 4, 1.00 with 10 at 100,000 vectors; latency about the same).
RERANK = 10
#: IVF-PQ cells (inverted lists) visited per query, at most nlist. benchmarks/bench_scale.py at
#: 1e6 clustered 512-D vectors (nlist 1282, RERANK x 10 re-scored): recall@10 0.77 / 0.82 /
#: 0.87 / 0.92 / 0.957 / 0.988 at nprobe 16 / 32 / 64 / 128 / 256 / 512 (the same in every
#: run): 256 is the smallest that meets the goal recall@10 >= 0.95 (the cells visited, not the
#: PQ codes, miss the neighbours). Single-query latency 2.2 / 4.6 / 6.3 / 9.4 / 11.8 / 51.7 ms
#: in a quiet run (load 4-6, 8aa3347), 3.6 / 3.8 / 6.0 / 17.8 / 56.1 / 83.1 ms in the committed
#: bench_scale_cpu.json (load ~20). Smaller indexes have fewer cells: nprobe is capped at nlist.
NPROBE = 256
#: ``whiten="auto"`` whitens when fitting images >= this times the whitened dimension.
WHITEN_MIN_RATIO = 2
#: Whitened dimension of VLADs when ``whiten_dim`` is None.
VLAD_WHITEN_DIM = 256
WHITEN_MODES = ("auto", "none", "pca")
SEARCH_MODES = ("auto", "exact", "ivfpq")

# GlobalConfig fields that change the descriptors (batch_size does not).
_GLOBAL_FIELDS = ("head", "p", "levels", "scales", "max_side", "bucket")


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """How an index describes, whitens and searches images (fixed at build).

    Attributes:
      describer: the describer config (``PoolingDescription``, ``LearnedHeadDescription``,
        ``CamDescription`` with variant "ofa" and no re-ranking, or ``VladDescription`` whose
        ``vlad.pca_dim`` is left None: ``whiten`` sets it).
      whiten: "auto", "pca" or "none" (see :mod:`retrieval._src.index`).
      whiten_dim: whitened dimension (None: see :mod:`retrieval._src.index`).
      search: "auto", "exact" or "ivfpq".
      nprobe: IVF-PQ cells visited per query (``NPROBE``; capped at nlist; exact search
        ignores it). The only setting a query may change (:meth:`SavedIndex.with_nprobe`).
    """

    describer: Any = PoolingDescription()
    whiten: str = setting(
        "auto", choices=WHITEN_MODES,
        help="PCA-whitening: auto = only when the fitting images number at least twice the "
        "whitened dimension (index.json says what was done and why)",
    )  # fmt: skip
    whiten_dim: int | None = whiten_dim_setting(
        "the descriptor's, or n/2 with whiten pca; VLAD: 256"
    )
    search: str = setting(
        "auto",
        choices=SEARCH_MODES,
        help=f"auto = exact below {EXACT_LIMIT:,} images, faiss IVF-PQ from there on",
    )
    nprobe: int = setting(
        NPROBE,
        kind="int",
        minimum=1,
        help="IVF-PQ cells visited per query: more finds more true neighbours, slower "
        "(capped at the index's cell count; exact search ignores it)",
    )

    def __post_init__(self):
        describer_name(self.describer)  # one of the registered describer configs
        check_settings(self)
        d = self.describer
        if isinstance(d, CamDescription) and (d.cam.variant != "ofa" or d.cam.rerank):
            raise InputError(
                "an index keeps CAM OfA vectors: describer.cam needs variant 'ofa' and rerank 0"
            )
        if isinstance(d, VladDescription) and d.vlad.pca_dim is not None:
            raise InputError("describer.vlad.pca_dim is set by whiten: leave it None")
        if self.whiten == "none" and self.whiten_dim is not None:
            raise InputError("whiten_dim needs whiten 'pca' or 'auto'")

    @property
    def kind(self) -> str:
        """The kind of descriptors: "global" (a backbone's) or "local" (VLAD)."""
        return "local" if isinstance(self.describer, VladDescription) else "global"

    def to_json(self) -> dict:
        """The settings as saved in ``index.json`` (the describer's name and config; the
        fields of the first format version beside them for a pooling head or VLAD)."""
        d = self.describer
        out = {
            "kind": self.kind,
            "whiten": self.whiten,
            "whiten_dim": self.whiten_dim,
            "search": self.search,
            "nprobe": self.nprobe,
            "describer": {"name": describer_name(d), "config": dataclasses.asdict(d)},
        }
        if isinstance(d, PoolingDescription):
            gc = dataclasses.asdict(d.global_config)
            out["global"] = {k: gc[k] for k in _GLOBAL_FIELDS}
            out["backbone"] = d.backbone
        elif isinstance(d, VladDescription):
            out["local"] = d.local
            out["local_config"] = dataclasses.asdict(d.local_config)
            out["vlad"] = dataclasses.asdict(d.vlad)
        return out

    @classmethod
    def from_json(cls, doc: dict) -> IndexSettings:
        try:
            common = {k: doc[k] for k in ("whiten", "whiten_dim", "search")}
            if "nprobe" in doc:  # absent in indexes saved before the setting existed
                common["nprobe"] = doc["nprobe"]
            if "describer" in doc:
                entry = DESCRIBERS[doc["describer"]["name"]]
                return cls(_from_dict(entry.config, doc["describer"]["config"]), **common)
            if doc["kind"] == "global":  # the first format: a pooling head
                g = dict(doc["global"])
                g["scales"] = tuple(g["scales"])
                return cls(PoolingDescription(doc["backbone"], GlobalConfig(**g)), **common)
            if doc["kind"] == "local":
                config = VladDescription(doc["local"], LocalConfig(**doc["local_config"]),
                                         VladConfig(**doc["vlad"]))  # fmt: skip
                return cls(config, **common)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"index settings do not parse ({type(e).__name__}: {e})") from None
        raise InputError(f"index settings of unknown kind {doc.get('kind')!r}")


def _from_dict(cls, doc: dict):
    """A (nested) config dataclass from its ``dataclasses.asdict`` (lists back to tuples)."""
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        v = doc[f.name]
        if dataclasses.is_dataclass(f.default) and isinstance(v, dict):
            v = _from_dict(type(f.default), v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


def check_format(doc, where, fmt: str, version: int, remedy: str) -> dict:
    """``doc`` if it is a dict of format ``fmt`` and version ``version``.

    Raises:
      InputError: "WHERE is not a FMT file (format F)", or "WHERE is a FMT of version V; this
        ckn reads version W: REMEDY".
    """
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        got = f" (format {doc.get('format')!r})" if isinstance(doc, dict) else ""
        raise InputError(f"{where} is not a {fmt} file{got}")
    if doc.get("version") != version:
        raise InputError(
            f"{where} is a {fmt} of version {doc.get('version')!r}; this ckn reads "
            f"version {version}: {remedy}"
        )
    return doc
