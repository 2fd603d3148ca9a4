"""The registry of describers: name -> (constructor, config class).

Every way of turning an image into one vector is one entry; :func:`build_describer` builds the
describer of a config (the entry whose config class it is), so that an evaluation, an index
or a benchmark holds ONE frozen config and nothing else. A new describer: a class with the
:class:`retrieval.image.Describer` members (its own module), its frozen config dataclass, one
entry here, a test against a direct reference; the command line's table of modes
(``retrieval/cli/modes.py``) gives it a flag.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ckn import InputError
from retrieval._src.cam_search import CamDescriber, CamDescription
from retrieval._src.describer import (
    LearnedHeadDescriber,
    LearnedHeadDescription,
    PoolingDescriber,
    PoolingDescription,
)
from retrieval._src.vlad_describer import VladDescriber, VladDescription


class DescriberEntry(NamedTuple):
    """One registry entry: ``make(config, backbone=None)`` and the config class it takes."""

    make: Any
    config: type


#: name -> :class:`DescriberEntry`.
DESCRIBERS: dict[str, DescriberEntry] = {
    "pooling": DescriberEntry(PoolingDescriber, PoolingDescription),
    "learned-head": DescriberEntry(LearnedHeadDescriber, LearnedHeadDescription),
    "cam": DescriberEntry(CamDescriber, CamDescription),
    "vlad": DescriberEntry(VladDescriber, VladDescription),
}


def describer_name(config) -> str:
    """The registry name of a describer config (e.g. "pooling" for a PoolingDescription).

    Raises:
      InputError: a config of no registered describer.
    """
    for name, entry in DESCRIBERS.items():
        if type(config) is entry.config:
            return name
    known = ", ".join(e.config.__name__ for e in DESCRIBERS.values())
    raise InputError(f"no describer takes a {type(config).__name__}; known configs: {known}")


def build_describer(config, *, backbone=None):
    """The describer of a config (:data:`DESCRIBERS`).

    Args:
      config: a describer config (``PoolingDescription``, ``LearnedHeadDescription``,
        ``CamDescription``, ``VladDescription``).
      backbone: an already loaded network to use instead of loading ``config.backbone``
        (tests, a memo of feature maps); not for VLAD.

    Raises:
      InputError: an unknown config, and what the describer refuses.
    """
    entry = DESCRIBERS[describer_name(config)]
    if backbone is None:
        return entry.make(config)
    if entry.config is VladDescription:
        raise InputError("the VLAD describer takes no backbone")
    return entry.make(config, backbone=backbone)
