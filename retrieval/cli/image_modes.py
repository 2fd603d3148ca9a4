"""The modes of the image commands (``ckn eval-images``, ``ckn index build``): one table.

A mode is a way of turning images into vectors, i.e. one describer of
:data:`retrieval.image.DESCRIBERS`, selected by one flag:

==================  =====================================  ===========================
mode                flag                                   describer config
==================  =====================================  ===========================
``local``           ``--local sift|rootsift|pixels|DIR``   ``VladDescription``
``global``          ``--global mac|spoc|gem|rmac|crow|codes``  ``PoolingDescription``
``global-head``     ``--global-head HEAD_DIR``             ``LearnedHeadDescription``
``cam``             ``--global cam``                       ``CamDescription`` (+ scorers)
==================  =====================================  ===========================

Every mode may add spatial verification of its shortlist (``--verify``, options from
:class:`retrieval.image.VerifyConfig`: :func:`verify_config`), a scorer after the mode's own.

:data:`APPLIES` is THE table of which option applies to which mode; a command registers the
options it has (each from its config dataclass: :mod:`retrieval.cli.fields`), and
:func:`check_options` refuses, in one line, an option given in a mode it does not apply to.
:func:`describer_config` builds the mode's ONE frozen config from the given options (the
dataclasses supply every default and check; their messages name fields, translated to flags by
``flags.fields_as_flags`` with ``args.field_flags``). A new describer or scorer gets a mode (or
an option) here and nowhere else in the command line.
"""

from __future__ import annotations

import argparse
import dataclasses

from ckn import InputError
from retrieval.cli.fields import given
from retrieval.image import (
    CamConfig,
    CamDescription,
    GlobalConfig,
    LearnedHeadDescription,
    PoolingDescription,
    ScaleConfig,
    SpatialVerification,
    VerifyConfig,
    VladDescription,
    cam_scorers,
)
from retrieval.local import LocalConfig, VladConfig

#: mode -> how messages name it.
MODES = {
    "local": "--local",
    "global": "--global NAME",
    "global-head": "--global-head",
    "cam": "--global cam",
}
ALL = frozenset(MODES)
_NETS = frozenset({"global", "global-head", "cam"})
_LOCAL = frozenset({"local"})
_CAM = frozenset({"cam"})

#: option -> the modes where it applies (every image command reads this one table).
APPLIES: dict[str, frozenset] = {
    "--local": _LOCAL,
    "--global": _NETS,  # with --global-head: it must name the head's pooling
    "--global-head": frozenset({"global-head"}),
    "--backbone": _NETS,
    "--scales": _NETS,
    "--max-side": ALL,
    "--whiten": ALL,
    "--whiten-images": ALL,
    "--whiten-dim": ALL,
    "--qe": ALL,
    "--alpha": ALL,
    "--dba": ALL,
    "--gnd": ALL,
    "--search": ALL,
    "--figure": ALL,
    "--cam-variant": _CAM,
    "--top-classes": _CAM,
    "--rerank": _CAM,
    "--codebook-images": _LOCAL,
    "--k": _LOCAL,
    "--pca": _LOCAL,
    "--no-whiten": _LOCAL,
    "--local-dim": _LOCAL,
    "--max-regions": _LOCAL,
    "--seed": _LOCAL,
    "--verify": ALL,
    "--verify-top": ALL,
    "--verify-ratio": ALL,
    "--verify-model": ALL,
    "--min-inliers": ALL,
    "--verify-contrast": ALL,
}

#: The options of spatial verification (:class:`retrieval.image.VerifyConfig`'s fields).
VERIFY_FIELDS = ("descriptor", "top", "ratio", "model", "min_inliers", "contrast_threshold")


def mode_of(args: argparse.Namespace) -> str:
    """The mode the flags select: --local, --global-head, --global cam or --global NAME."""
    if getattr(args, "local", None) is not None:
        return "local"
    if getattr(args, "global_head", None) is not None:
        return "global-head"
    if args.head == "cam":
        return "cam"
    if args.head is not None:
        return "global"
    raise InputError("give one of --local, --global or --global-head")


def mode_label(mode: str, args: argparse.Namespace) -> str:
    """How a message names the mode: "--local", "--global gem", "--global-head", "--global cam"."""
    return f"--global {args.head}" if mode == "global" else MODES[mode]


def register_options(p: argparse.ArgumentParser) -> None:
    """Remembers which option sets which ``dest`` (= field name): for :func:`check_options`
    and for :func:`retrieval.cli.flags.fields_as_flags` (``args.field_flags``)."""
    options = [a for a in p._actions if a.option_strings]  # argparse's list of options
    p.set_defaults(
        mode_options={a.option_strings[0]: a.dest for a in options
                      if a.option_strings[0] in APPLIES},
        field_flags={a.dest: a.option_strings[0] for a in options},
    )  # fmt: skip


def check_options(args: argparse.Namespace, mode: str) -> None:
    """Refuses an option given in a mode it does not apply to (one line, from :data:`APPLIES`)."""
    for flag, dest in args.mode_options.items():
        if getattr(args, dest, None) is not None and mode not in APPLIES[flag]:
            where = ", ".join(MODES[m] for m in MODES if m in APPLIES[flag])
            raise InputError(
                f"{flag} does not apply to {mode_label(mode, args)} (it applies to {where})"
            )


def _scales(args, base: ScaleConfig) -> ScaleConfig:
    return dataclasses.replace(base, **given(args, ScaleConfig, ("scales", "max_side")))


def describer_config(args: argparse.Namespace, mode: str):
    """The mode's describer config from the given options (defaults: the dataclasses')."""
    backbone = given(args, PoolingDescription, ("backbone",))
    if mode == "local":
        return VladDescription(
            args.local,
            local_config=LocalConfig(**given(args, LocalConfig, ("max_regions", "max_side"))),
            vlad=VladConfig(
                **given(args, VladConfig, ("k", "local_dim", "pca_dim", "pca_whiten", "seed"))
            ),  # fmt: skip
        )
    if mode == "global":
        sizes = _scales(args, ScaleConfig())
        config = GlobalConfig(head=args.head, **dataclasses.asdict(sizes))
        return PoolingDescription(**backbone, global_config=config)
    if mode == "global-head":
        sizes = _scales(args, ScaleConfig())
        return LearnedHeadDescription(args.global_head, **backbone, scales=sizes)
    default = CamDescription()
    cam = CamConfig(**given(args, CamConfig, ("variant", "top_classes", "rerank")))
    return CamDescription(**backbone, scales=_scales(args, default.scales), cam=cam)


def verify_config(args: argparse.Namespace) -> VerifyConfig | None:
    """The spatial verification the options ask for (``--verify``), or None.

    Raises:
      InputError: a verification option without ``--verify``.
    """
    values = given(args, VerifyConfig, VERIFY_FIELDS)
    if "descriptor" not in values:
        if values:
            flags = ", ".join(args.field_flags[k] for k in values)
            raise InputError(f"{flags} needs --verify sift|rootsift|MODEL_DIR")
        return None
    return VerifyConfig(**values)


def scorers_of(config, verify: VerifyConfig | None = None) -> tuple:
    """The scorers a mode's config asks for (CAM: OnA, re-ranking), then spatial verification
    when ``verify`` is given (query expansion, last, is the pipeline's)."""
    out = cam_scorers(config.cam) if isinstance(config, CamDescription) else ()
    return out if verify is None else (*out, SpatialVerification(verify))
