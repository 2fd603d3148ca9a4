"""What the ``ckn index`` commands share: the settings from the flags, the description flags,
an index's one-line label, how a sub-command is declared (:mod:`retrieval.cli.index` and
:mod:`retrieval.cli.index_shards`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.cli.fields import add_settings, given
from retrieval.cli.flags import fields_as_flags
from retrieval.cli.image_modes import check_options, describer_config, mode_of, register_options
from retrieval.cli.outputs import declare_paths
from retrieval.image import (
    HEADS,
    CamConfig,
    CamDescription,
    GlobalConfig,
    LearnedHeadDescription,
    PoolingDescription,
    ScaleConfig,
    VladDescription,
)
from retrieval.index import IndexSettings
from retrieval.local import LocalConfig, VladConfig


def index_settings(args: argparse.Namespace) -> IndexSettings:
    """The index's settings: the mode's describer config (one table of modes and options,
    :mod:`retrieval.cli.image_modes`) and the whitening / search settings."""
    mode = mode_of(args)
    check_options(args, mode)
    with fields_as_flags(args.field_flags):
        config = describer_config(args, mode)
        return IndexSettings(config, **given(args, IndexSettings))


def index_label(idx) -> str:
    d, desc = idx.settings.describer, idx.description
    if idx.settings.kind == "local":
        what = f"VLAD k={d.vlad.k} of {d.local} local descriptors"
    else:
        sizes = d.global_config if isinstance(d, PoolingDescription) else d.scales
        name = (d.global_config.head if isinstance(d, PoolingDescription) else
                d.cam.label if isinstance(d, CamDescription) else
                f"learned head {d.global_head}")  # fmt: skip
        what = (
            f"global {name} of {desc['backbone']}, scales "
            f"{','.join(f'{v:g}' for v in sizes.scales)}, max side {sizes.max_side}"
        )
    w = idx.whitening_info
    white = "not whitened" if w["kind"] == "none" else f"PCA-whitened to {w['dim']}-D"
    return f"{what}, {idx.dim}-D, {white}, {idx.search_info['method']} search"


def local_input(spec: str | None) -> str | None:
    """--local MODEL_DIR (an input folder), not a baseline name."""
    return spec if spec is not None and Path(spec).exists() else None


def description_flags(p: argparse.ArgumentParser, *, query: bool) -> None:
    """The mode and description options (each from its config dataclass; which mode each
    applies to: :data:`retrieval.cli.image_modes.APPLIES`)."""
    g = p.add_argument_group(
        "description" + (" (optional: checked against the index's)" if query else "")
    )
    add_settings(g, VladDescription, ["local"], show_default=False)
    add_settings(g, GlobalConfig, ["head"], choices={"head": (*HEADS, "cam")},
                 metavar={"head": "NAME"}, show_default=False, help={
        "head": "global CNN descriptor: the pooling head, or cam (CAM OfA: class-weighted "
        "pooling with each image's own classes)"})  # fmt: skip
    add_settings(g, LearnedHeadDescription, ["global_head"], show_default=False,
                 metavar={"global_head": "HEAD_DIR"},
                 help={"global_head": "a learned head (ckn train-global) over the backbone its "
                       "folder records"})  # fmt: skip
    add_settings(g, PoolingDescription, ["backbone"], show_default=not query)
    add_settings(g, ScaleConfig, ["scales", "max_side"], show_default=not query)
    if query:
        return
    add_settings(g, CamConfig, ["top_classes"])
    add_settings(g, VladConfig, ["k", "local_dim"])
    add_settings(g, LocalConfig, ["max_regions"])


#: Where ``index build`` / ``add`` count a skipped bad image (--strict's help).
COUNTED = " line, counted in index.json"


def index_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder (ckn index build)")


def runs(p: argparse.ArgumentParser, func, paths, *, options: bool = False) -> None:
    """``p`` runs ``func`` after the check of ``paths`` (``outputs.declare_paths``); with
    ``options``, ``p``'s options are remembered for ``image_modes.check_options`` and
    ``args.field_flags`` (``image_modes.register_options``, once every option is added)."""
    p.set_defaults(func=func)
    if options:
        register_options(p)
    declare_paths(p, paths)
