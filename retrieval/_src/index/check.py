"""Settings a query or an add claims, checked against the index's (fields, not flags).

:func:`settings_mismatch` says which claimed setting differs from the index's describer
config (``head``, ``local``, ``global_head``, ``backbone``, ``scales``, ``max_side``);
:func:`check_index_settings` raises it as an ``InputError`` naming the fields (the command
line names its flags instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ckn import InputError
from retrieval._src.cam_search import CamDescription
from retrieval._src.describer import LearnedHeadDescription, PoolingDescription
from retrieval._src.index.core import SavedIndex
from retrieval._src.index.models import LOCAL_BASELINES, _sha256_any
from retrieval._src.vlad_describer import VladDescription

#: The settings a claim may name.
CLAIMS = ("head", "local", "global_head", "backbone", "scales", "max_side")


class Mismatch(NamedTuple):
    """A claimed setting that differs from the index's.

    Attributes:
      field: the index's setting (``head``, ``local``, ...; the claimed one's counterpart when
        the claim names a setting of another kind of descriptor).
      have: its value in the index.
      claimed_field: the claimed setting; claimed: its claimed value.
      note: why it matters ("its descriptors are global ones"), or "".
    """

    field: str
    have: object
    claimed_field: str
    claimed: object
    note: str = ""


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _have(settings) -> dict:
    """{setting: value} of an index's describer config (what a claim is compared with)."""
    d = settings.describer
    if isinstance(d, VladDescription):
        return {"local": d.local, "max_regions": d.local_config.max_regions,
                "k": d.vlad.k, "local_dim": d.vlad.local_dim,
                "max_side": d.local_config.max_side}  # fmt: skip
    sizes = d.global_config if isinstance(d, PoolingDescription) else d.scales
    out = {"scales": tuple(sizes.scales), "max_side": sizes.max_side, "bucket": sizes.bucket}
    if isinstance(d, PoolingDescription):
        out.update(head=d.global_config.head, p=d.global_config.p, levels=d.global_config.levels)
    elif isinstance(d, CamDescription):
        out.update(head="cam", top_classes=d.cam.top_classes)
    elif isinstance(d, LearnedHeadDescription):
        out.update(global_head=d.global_head)
    if d.backbone is not None:
        out["backbone"] = d.backbone.partition(":")[0]
    return out


def _key(field: str, v):
    if field == "local":
        return v if v in LOCAL_BASELINES else str(Path(v).resolve())
    if field == "global_head":
        return str(Path(v).resolve())
    if field == "scales":
        return tuple(float(s) for s in v)
    return v


def settings_mismatch(index: SavedIndex, **claimed) -> Mismatch | None:
    """The first claimed setting that differs from the index's, or None.

    Args:
      index: a :class:`SavedIndex`.
      claimed: any of ``CLAIMS``; ``backbone`` as "NAME" or "NAME:FILE" (a file is compared
        by content); None values are not checked.

    Raises:
      TypeError: an unknown setting name.
    """
    have = _have(index.settings)
    kind = index.settings.kind
    for field, value in claimed.items():
        if field not in CLAIMS:
            raise TypeError(f"settings_mismatch: unknown setting {field!r}")
        if value is None:
            continue
        if field not in have:
            other = "local" if kind == "local" else ("head" if "head" in have else "global_head")
            return Mismatch(other, have[other], field, value,
                            f"its descriptors are {kind} ones")  # fmt: skip
        if field == "backbone":
            name, _, path = str(value).partition(":")
            if name != have["backbone"]:
                return Mismatch("backbone", have["backbone"], "backbone", name)
            want = index.description.get("weights_sha256")
            if path and _sha256_any(path) != want:
                return Mismatch("backbone", have["backbone"], "backbone", value,
                                f"{path} holds other weights (SHA-256 {want[:12]}...)")  # fmt: skip
            continue
        if _key(field, value) != _key(field, have[field]):
            return Mismatch(field, have[field], field, value)
    return None


def mismatch_text(m: Mismatch, names=None) -> str:
    """One line: "the index was built with NAME HAVE, not NAME CLAIMED[: note]".

    Args:
      m: a :class:`Mismatch`.
      names: {setting: how to name it} (the command line: its flags); default the fields.
    """
    n = names or {}
    have, claimed = n.get(m.field, m.field), n.get(m.claimed_field, m.claimed_field)
    text = f"the index was built with {have} {_fmt(m.have)}, not {claimed} {_fmt(m.claimed)}"
    return text + (f": {m.note}" if m.note else "")


def check_index_settings(index: SavedIndex, **claimed) -> None:
    """Refuses settings that differ from the index's (:func:`settings_mismatch`).

    Raises:
      InputError: naming the first difference by its fields, e.g. "the index was built with
        head rmac, not head gem".
    """
    m = settings_mismatch(index, **claimed)
    if m is not None:
        raise InputError(mismatch_text(m))
