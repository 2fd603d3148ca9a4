"""HPatches train / test splits: the official a, b, c, full, illum, view, and ``all``.

The official sequence lists are ``splits.json`` of the HPatches benchmark code, shipped
unmodified beside this file (BSD-2, notice and origin in ``COPYING`` there): ``a`` (the ECCV
2016 DESCRW split), ``b``, ``c`` (40 test and 76 train sequences each), ``full`` (all 116
sequences as test), ``illum`` (the 57 ``i_*`` as test), ``view`` (the 59 ``v_*`` as test); the
last three have no train list in that file. ``all`` is every sequence of the folder at hand as
test: the split for a partial release or for HPatches-style data of one's own.

A named split is evaluated only on a folder that holds all of its sequences (train and test),
as the official code requires: a partial folder would give figures that look comparable to the
published ones and are not. ``all`` covers partial folders explicitly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ckn import InputError

#: Split names, official first.
SPLIT_NAMES = ("a", "b", "c", "full", "illum", "view", "all")

_SPLITS_FILE = Path(__file__).with_name("splits.json")


class Split(NamedTuple):
    """A split: its name and its train and test sequence names (sorted)."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


@functools.cache
def official_splits() -> dict[str, Split]:
    """The official splits of ``splits.json``, by name (``all`` is not among them)."""
    doc = json.loads(_SPLITS_FILE.read_text())
    return {
        name: Split(name, tuple(sorted(s.get("train", ()))), tuple(sorted(s["test"])))
        for name, s in doc.items()
    }


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def resolve_split(name: str, available: Iterable[str], *, where: str = "the folder") -> Split:
    """The split ``name`` over the sequences ``available`` in a folder.

    Args:
      name: one of :data:`SPLIT_NAMES`.
      available: the sequence names present.
      where: how messages name the folder.

    Returns:
      The split; for ``all``, every available sequence as test.

    Raises:
      InputError: an unknown split name, or a named split with sequences (train or test)
        absent from the folder (the message names them).
    """
    available = sorted(set(available))
    if name == "all":
        return Split("all", (), tuple(available))
    splits = official_splits()
    if name not in splits:
        raise InputError(f"unknown HPatches split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
    split = splits[name]
    missing = sorted(set(split.train + split.test) - set(available))
    if missing:
        raise InputError(
            f"split {name!r} needs {len(missing)} sequences absent from {where}: "
            f"{_listing(missing)} (use split 'all' to evaluate the sequences present)"
        )
    return split
