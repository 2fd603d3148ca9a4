"""The settings of an image index (fixed at build) and the check of claimed settings.

:class:`IndexSettings` says how an index describes, whitens and searches images;
:func:`check_index_settings` refuses a query or an add that would describe images
otherwise, naming the difference. The limits below are documented in
:mod:`retrieval._src.index`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckn import InputError
from retrieval._src.global_desc import GlobalConfig
from retrieval._src.index.models import DEFAULT_BACKBONE, LOCAL_BASELINES, _sha256_any
from retrieval._src.local import LocalConfig
from retrieval._src.vlad_fit import VladConfig

if TYPE_CHECKING:
    from retrieval._src.index.core import SavedIndex

#: Format tag and version of ``index.json``; an index of another version is refused.
FORMAT = "ckn-image-index"
VERSION = 1
#: Collections of at least this many vectors are searched with IVF-PQ under ``search="auto"``.
EXACT_LIMIT = 50_000
#: IVF-PQ candidates per requested neighbour, re-scored exactly (benchmarks/bench_index.py:
#: recall@10 0.90 with 4, 1.00 with 10 at 100,000 vectors; latency about the same).
RERANK = 10
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

    Exactly one of ``global_config`` and ``local`` is set.

    Attributes:
      global_config: global CNN descriptors with this :class:`retrieval.GlobalConfig`.
      backbone: the CNN, "NAME" or "NAME:FILE" (``ckn eval-images --backbone``);
        global descriptors only.
      local: VLAD of local descriptors: "sift", "rootsift", "pixels" or a model
        directory (``ckn train``).
      local_config: interest regions of the local descriptors.
      vlad: codebook and VLAD normalizations (its ``pca_dim`` is set by ``whiten``).
      whiten: "auto", "pca" or "none" (see the module docstring).
      whiten_dim: whitened dimension (None: see the module docstring).
      search: "auto", "exact" or "ivfpq".
    """

    global_config: GlobalConfig | None = None
    backbone: str = DEFAULT_BACKBONE
    local: str | None = None
    local_config: LocalConfig = LocalConfig()
    vlad: VladConfig = VladConfig(pca_dim=None)
    whiten: str = "auto"
    whiten_dim: int | None = None
    search: str = "auto"

    def __post_init__(self):
        if (self.global_config is None) == (self.local is None):
            raise InputError("index settings need exactly one of global_config and local")
        if self.global_config is not None and not isinstance(self.global_config, GlobalConfig):
            raise InputError(
                f"global_config must be a GlobalConfig, got {type(self.global_config).__name__}"
            )
        if self.local is not None:
            object.__setattr__(self, "local", os.fspath(self.local))
        if self.whiten not in WHITEN_MODES:
            raise InputError(
                f"whiten must be one of {', '.join(WHITEN_MODES)}, got {self.whiten!r}"
            )
        if self.search not in SEARCH_MODES:
            raise InputError(
                f"search must be one of {', '.join(SEARCH_MODES)}, got {self.search!r}"
            )
        d = self.whiten_dim
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise InputError(f"whiten_dim must be None or an int >= 1, got {d!r}")
        if self.whiten == "none" and d is not None:
            raise InputError("whiten_dim needs whiten 'pca' or 'auto'")

    @property
    def kind(self) -> str:
        """The kind of descriptors: "global" or "local"."""
        return "global" if self.global_config is not None else "local"

    def to_json(self) -> dict:
        out = {
            "kind": self.kind,
            "whiten": self.whiten,
            "whiten_dim": self.whiten_dim,
            "search": self.search,
        }
        if self.kind == "global":
            gc = dataclasses.asdict(self.global_config)
            out["global"] = {k: gc[k] for k in _GLOBAL_FIELDS}
            out["backbone"] = self.backbone
        else:
            out["local"] = self.local
            out["local_config"] = dataclasses.asdict(self.local_config)
            out["vlad"] = dataclasses.asdict(self.vlad)
        return out

    @classmethod
    def from_json(cls, doc: dict) -> IndexSettings:
        try:
            common = {k: doc[k] for k in ("whiten", "whiten_dim", "search")}
            if doc["kind"] == "global":
                g = dict(doc["global"])
                g["scales"] = tuple(g["scales"])
                return cls(global_config=GlobalConfig(**g), backbone=doc["backbone"], **common)
            if doc["kind"] == "local":
                return cls(
                    local=doc["local"],
                    local_config=LocalConfig(**doc["local_config"]),
                    vlad=VladConfig(**doc["vlad"]),
                    **common,
                )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"index settings do not parse ({type(e).__name__}: {e})") from None
        raise InputError(f"index settings of unknown kind {doc.get('kind')!r}")


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _flat(settings: IndexSettings) -> dict[str, Any]:
    """The command-line view of the settings: {flag: value}."""
    if settings.kind == "global":
        gc = settings.global_config
        return {
            "--global": gc.head,
            "--backbone": settings.backbone.partition(":")[0],
            "--scales": tuple(gc.scales),
            "--max-side": gc.max_side,
            "--p": gc.p,
            "--levels": gc.levels,
            "--bucket": gc.bucket,
        }
    return {
        "--local": settings.local,
        "--max-regions": settings.local_config.max_regions,
        "--k": settings.vlad.k,
        "--local-dim": settings.vlad.local_dim,
    }


def check_index_settings(index: SavedIndex, **claimed) -> None:
    """Refuses settings that differ from the index's.

    Args:
      index: a :class:`SavedIndex`.
      claimed: any of ``global_head``, ``backbone`` ("NAME" or "NAME:FILE"), ``local``,
        ``scales``, ``max_side`` (None values are not checked).

    Raises:
      InputError: naming the first difference, e.g. "the index was built with --global
        rmac, not --global gem".
    """
    have = _flat(index.settings)
    built = "the index was built with"
    names = {"global_head": "--global", "local": "--local", "scales": "--scales",
             "max_side": "--max-side", "backbone": "--backbone"}  # fmt: skip
    for key, value in claimed.items():
        if key not in names:
            raise TypeError(f"check_settings: unknown setting {key!r}")
        if value is None:
            continue
        flag = names[key]
        if flag in ("--global", "--local") and flag not in have:
            other = "--local" if flag == "--global" else "--global"
            raise InputError(
                f"{built} {other} {have[other]}, not {flag} {value}: its descriptors are "
                f"{index.settings.kind} ones"
            )
        if flag == "--backbone":
            name, _, path = str(value).partition(":")
            if name != have["--backbone"]:
                raise InputError(f"{built} --backbone {have['--backbone']}, not {name}")
            if path:
                want = index.description.get("weights_sha256")
                if _sha256_any(path) != want:
                    raise InputError(
                        f"{path} holds other weights than the index was built with "
                        f"(SHA-256 {want[:12]}...)"
                    )
            continue
        if flag == "--local":
            same = _local_key(value) == _local_key(index.settings.local)
        elif flag == "--scales":
            same = tuple(float(s) for s in value) == tuple(have[flag])
        else:
            same = value == have[flag]
        if not same:
            raise InputError(f"{built} {flag} {_fmt(have[flag])}, not {flag} {_fmt(value)}")


def _local_key(spec: str) -> str:
    return spec if spec in LOCAL_BASELINES else str(Path(spec).resolve())
