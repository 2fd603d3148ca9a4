"""What several commands share: architecture overrides, precision, training flags, help layout
(output checks: ``retrieval.cli.outputs``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import ckn
from ckn import PRECISIONS, PRESETS, CKNConfig, InputError
from ckn.ops import INPUTS, NORMALIZATIONS, POOLINGS
from ckn.unsupervised import METHODS
from retrieval.cli.fields import option
from retrieval.cli.outputs import resume_note

# --- Help layout ---------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, keeping the line breaks of a text that has any (the examples)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_command(
    sub: argparse._SubParsersAction, name: str, *, help: str, description: str, example: str
) -> argparse.ArgumentParser:
    """A sub-command parser with the shared layout: description, options, then an example."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="example:\n" + "".join(f"  {line}\n" for line in example.strip().splitlines()),
        formatter_class=HelpFormatter,
    )


def arguments(args: argparse.Namespace) -> dict:
    """The parsed flags, for a JSON record (without the functions the parser carries)."""
    skip = ("cli_prog", "mode_options", "field_flags")  # the parser's own bookkeeping
    return {k: v for k, v in vars(args).items() if not callable(v) and k not in skip}


# --- Words -------------------------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    """``1 image``, ``3 images``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def warn(args: argparse.Namespace, message: str) -> None:
    """One ``ckn CMD: warning: ...`` line on stderr (shown with --quiet too: it hides only
    progress bars)."""
    print(f"{getattr(args, 'cli_prog', 'ckn')}: warning: {message}", file=sys.stderr)


def warn_skipped(args: argparse.Namespace, lines) -> None:
    """``ckn CMD: warning: skipped PATH: reason``, one line per skipped image."""
    for line in lines:
        warn(args, f"skipped {line}")


def shown_path(path: str | os.PathLike) -> str:
    """A path as printed: relative to the working folder when inside it, else absolute
    (either way it opens from here)."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _as_flags(message: str, fields: Mapping[str, str]) -> str:
    words = re.split(r"(\W+)", message)
    for i, w in enumerate(words):
        # The first word if it is a field, or the first of a bracketed "(field: ...)"; later
        # words only when unambiguous (``whiten_images``).
        opens = 0 < i < len(words) - 1 and words[i - 1].endswith("(") and words[i + 1][0] == ":"
        if w in fields and (i == 0 or opens or "_" in w):
            words[i] = fields[w]
    return "".join(words)


#: The bad-image policy's setting (``strict``, :func:`retrieval.image.usable_images`) as a flag.
STRICT = {"strict": "--strict"}


@contextlib.contextmanager
def fields_as_flags(fields: Mapping[str, str]):
    """Re-raises a library ``InputError`` naming settings' fields (``dim 256: ...``, ``... needs
    whiten_images``) with the command's flags instead (``--dim 256: ...``): the library names its
    dataclass fields, the command line its flags. A field is translated where it is the
    message's first word or opens a bracket (``(strict: ...)``), or anywhere when its name has
    an underscore."""
    try:
        yield
    except InputError as e:
        text = _as_flags(str(e), fields)
        if text == str(e):
            raise
        raise InputError(text) from None


# --- Architecture and training flags ------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def _positive_floats_or(keyword: str, value, what: str):
    """An argparse type: comma-separated numbers > 0, or ``keyword`` (replaced by ``value``)."""

    def parse(text: str) -> list:
        out = []
        for v in text.split(","):
            if v == keyword:
                out.append(value)
                continue
            try:
                f = float(v)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{what} must be numbers or {keyword!r}, got {text!r}"
                ) from None
            if not f > 0:
                raise argparse.ArgumentTypeError(f"{what} must be > 0, got {v}")
            out.append(f)
        return out

    return parse


_sigma_list = _positive_floats_or("auto", "auto", "sigma")
_pool_std_list = _positive_floats_or("default", None, "pool std")


def _pooling_list(text: str) -> list[str]:
    values = text.split(",")
    bad = [v for v in values if v not in POOLINGS]
    if bad:
        raise argparse.ArgumentTypeError(f"pooling must be {' or '.join(POOLINGS)}, got {text!r}")
    return values


def add_architecture_flags(p: argparse.ArgumentParser) -> None:
    """Flags that override a preset's architecture (shared by train and reproduce)."""
    g = p.add_argument_group("architecture overrides (default: the preset's)")
    g.add_argument("--input", choices=INPUTS, help="input map")
    g.add_argument("--channels", choices=("gray", "green", "rgb"), help="input channels")
    g.add_argument("--filters", type=_int_list, help="filters per layer, e.g. 64,256")
    g.add_argument("--subpatch", type=_int_list, help="sub-patch side per layer, e.g. 3,3")
    g.add_argument("--subsampling", type=_int_list, help="pooling factor per layer, e.g. 2,6")
    g.add_argument(
        "--sigma", type=_sigma_list, help="sigma per layer (number or auto), e.g. 0.6 or auto"
    )
    g.add_argument(
        "--pooling",
        type=_pooling_list,
        help="pooling geometry per layer: strided (papers') or centered",
    )
    g.add_argument(
        "--pool-std",
        type=_pool_std_list,
        help="pooling std per layer in map pixels, or 'default' (s/sqrt2)",
    )
    g.add_argument(
        "--normalize", choices=NORMALIZATIONS, help="descriptor normalization: global or position"
    )
    g.add_argument("--orientations", type=int, help="orientations K of the grad map")
    t = p.add_argument_group("training overrides")
    t.add_argument(
        "--num-patches",
        type=int,
        help="sub-patches sampled per layer "
        f"(default: the preset's: {_preset_defaults('num_patches')})",
    )
    t.add_argument("--method", choices=METHODS, help="filter learning method (default kmeans)")
    t.add_argument(
        "--kmeans-iters",
        type=int,
        help=f"k-means iterations (default: the preset's: {_preset_defaults('kmeans_iters')})",
    )


def _preset_defaults(field: str) -> str:
    """A training default per preset, e.g. ``100000 (ckn-tiny 2000)``: the common value first."""
    values = {name: getattr(cfg.train, field) for name, cfg in PRESETS.items()}
    common = max(set(values.values()), key=list(values.values()).count)
    others = ", ".join(f"{name} {v}" for name, v in values.items() if v != common)
    return f"{common}" + (f"; {others}" if others else "")


def add_with_default(p, flag: str, default, text: str, **kw) -> None:
    """An option whose help ends with its default: ``text (default DEFAULT)``.

    Args:
      p: a parser or argument group.
      flag: the option (``--batch-size``).
      default: its default (a config's field), shown in the help.
      text: the help before the default.
      **kw: passed to ``add_argument`` (``type``, ``choices``, ...).
    """
    p.add_argument(flag, default=default, help=f"{text} (default {default})", **kw)


def add_strict_flag(p, skipped: str, *, quiet: bool = False) -> None:
    """--strict (fail on the first bad image; by default it is skipped with a warning, and then
    ``skipped``), and with ``quiet`` --quiet (no progress bars).

    Args:
      p: a parser or argument group.
      skipped: what follows "skip it with a warning" in the help (where the skip is counted).
      quiet: also add --quiet.
    """
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first unreadable, truncated or too small image (default: skip it "
        f"with a warning{skipped})",
    )
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars (warnings are shown)")


class TrainingDefaults(Protocol):
    """The settings whose defaults :func:`add_training_flags` shows (a training config)."""

    loss: str
    epochs: int
    lr: float
    patience: int | None


def add_training_flags(
    p: argparse.ArgumentParser,
    defaults: TrainingDefaults,
    *,
    margins: Mapping[str, float],
    out: str,
    help: Mapping[str, str] | None = None,
) -> None:
    """The flags of a supervised training command (``ckn finetune``, ``ckn train-global``).

    --loss, --margin, --epochs, --lr, --patience (0 = never), --seed, --resume (from the
    checkpoint folder ``OUT.ckpt/``), --overwrite, --quiet.

    Args:
      p: the command's parser.
      defaults: its config's defaults (``loss``, ``epochs``, ``lr``, ``patience``).
      margins: {loss: default margin}; its keys are the --loss choices.
      out: how the help names the output folder (``OUT``, ``HEAD_DIR``).
      help: {dest: help text} for a flag whose text differs from the one given here.
    """
    texts = {
        "patience": "stop after this many epochs without a better validation mAP, 0 = never "
        f"(default {defaults.patience})",
        "resume": f"continue from {out}.ckpt/",
        "overwrite": f"replace {out} and {out}.ckpt/",
        "quiet": "no progress bar",
        **(help or {}),
    }
    add_with_default(p, "--loss", defaults.loss, "loss", choices=tuple(margins))
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help=f"loss margin (default: triplet {margins['triplet']} in squared distance, "
        f"contrastive {margins['contrastive']} in distance)",
    )
    add_with_default(p, "--epochs", defaults.epochs, "epochs", type=int)
    add_with_default(p, "--lr", defaults.lr, "peak learning rate", type=float)
    p.add_argument("--patience", type=int, default=defaults.patience, help=texts["patience"])
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help=texts["resume"])
    p.add_argument("--overwrite", action="store_true", help=texts["overwrite"])
    p.add_argument("--quiet", action="store_true", help=texts["quiet"])
    p.set_defaults(interrupt_note=resume_note)


def validation_summary(report, start: str) -> str:
    """What validation kept and why training stopped, for a training command's last line.

    Args:
      report: a training report (``history`` from epoch 0, ``best_epoch``,
        ``best_val_map``, ``epochs_done``, ``stopped_early``).
      start: what epoch 0 is (``the input model``), named when no epoch beat it.
    """
    hist, best, e, n = report.history, report.best_val_map, report.best_epoch, report.epochs_done
    if best is None:
        return f"no validation: the last of {n} epoch{'s' * (n != 1)} is kept"
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    if e == 0:
        text = (
            f"validation mAP {pct(best)} at the start, not beaten in {n} epoch{'s' * (n != 1)}: "
            f"{start} is kept"
        )
    else:
        text = f"validation mAP {pct(hist[0]['val_map'])} -> {pct(best)}, epoch {e} of {n} kept"
    ties = [str(h["epoch"]) for h in hist if h["epoch"] > e and h["val_map"] == best]
    if ties:
        text += f" (epoch{'s' * (len(ties) > 1)} {', '.join(ties)} tied: the first best is kept)"
    if report.stopped_early:
        text += f"; stopped early after {n - e} epochs without a better validation mAP"
    return text


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="highest",
        help="matrix-product precision of describe: highest (fp32, default) or default "
        "(the backend's fastest: TF32/bf16 passes on GPUs; the same as highest on CPU)",
    )


def config_from_args(args: argparse.Namespace) -> CKNConfig:
    """The preset with the command line's overrides applied.

    A per-layer list has one value (for every layer) or one per layer. The
    number of layers is the preset's unless a list is longer; changing it
    needs every per-layer list (--filters, --subpatch, --subsampling,
    --sigma, --pooling, --pool-std), each with one value or one per layer:
    no layer is made up by copying another.
    """
    cfg = ckn.get_preset(args.preset)
    lists = {
        "filters": args.filters,
        "subpatch": args.subpatch,
        "subsampling": args.subsampling,
        "sigma": args.sigma,
        "pooling": args.pooling,
        "pool_std": args.pool_std,
    }
    given = {k: v for k, v in lists.items() if v is not None}
    opt = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    n = max([len(v) for v in given.values() if len(v) > 1] or [len(cfg.layers)])
    for k, v in given.items():
        if len(v) not in (1, n):
            raise InputError(f"{opt(k)} has {len(v)} values for a {n}-layer network")
    if n != len(cfg.layers):
        missing = [opt(k) for k in lists if k not in given]
        if missing:
            longest = next(opt(k) for k, v in given.items() if len(v) == n)
            raise InputError(
                f"{longest} asks for {n} layers, the preset {cfg.name} has {len(cfg.layers)}: "
                f"changing the number of layers needs every per-layer list "
                f"(missing: {', '.join(missing)}; one value or {n} each)"
            )
    layers = []
    for i in range(n):
        base = cfg.layers[min(i, len(cfg.layers) - 1)]
        layers.append(
            dataclasses.replace(
                base, **{k: (v[0] if len(v) == 1 else v[i]) for k, v in given.items()}
            )
        )
    top = {}
    if args.input is not None:
        top["input"] = args.input
    if args.channels is not None:
        top["channels"] = args.channels
    if args.normalize is not None:
        top["normalize"] = args.normalize
    if args.orientations is not None:
        top["grad_orientations"] = args.orientations
    train_over = {}
    for flag, field in (
        ("num_patches", "num_patches"),
        ("method", "method"),
        ("kmeans_iters", "kmeans_iters"),
    ):
        if getattr(args, flag) is not None:
            train_over[field] = getattr(args, flag)
    changed = bool(given or top or train_over)
    return dataclasses.replace(
        cfg,
        name=cfg.name + ("+custom" if changed else ""),
        layers=tuple(layers),
        train=dataclasses.replace(cfg.train, **train_over),
        **top,
    )


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """``--scales 1,0.707,0.5`` as a tuple of numbers > 0 (None when not given)."""
    if text is None:
        return None
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"--scales must be comma-separated numbers, e.g. 1,0.707,0.5, got {text!r}"
        ) from None
    if not all(math.isfinite(v) and v > 0 for v in scales):
        raise InputError(f"--scales must be numbers > 0, got {text!r}")
    return scales


# --- Flags generated from a config dataclass -----------------------------------------------------


def config_from_flags(args: argparse.Namespace, cls, names: tuple[str, ...], **given):
    """``cls`` with the fields whose flag was given (see ``fields.add_settings``) and
    ``given``; the dataclass checks the values (InputError, a field's name shown as its flag)."""
    values = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    with fields_as_flags({n: option(n) for n in names}):
        return cls(**values, **given)


def given_flags(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The flags of ``names`` given on the command line (not None), as ``--flag`` strings."""
    return [option(n) for n in names if getattr(args, n, None) not in (None, False)]
