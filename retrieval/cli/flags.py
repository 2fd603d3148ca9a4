"""Command-line flags shared by several commands: architecture overrides, precision."""

from __future__ import annotations

import argparse
import dataclasses

import ckn
from ckn import INPUTS, METHODS, NORMALIZATIONS, POOLINGS, PRECISIONS, CKNConfig, InputError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
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
                raise argparse.ArgumentTypeError(f"{what} must be numbers or {keyword!r}, got {text!r}") from None
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
    g.add_argument("--sigma", type=_sigma_list, help="sigma per layer (number or auto), e.g. 0.6 or auto")
    g.add_argument("--pooling", type=_pooling_list, help="pooling geometry per layer: strided (papers') or centered")
    g.add_argument("--pool-std", type=_pool_std_list, help="pooling std per layer in map pixels, or 'default' (s/sqrt2)")
    g.add_argument("--normalize", choices=NORMALIZATIONS, help="descriptor normalization: global or position")
    g.add_argument("--orientations", type=int, help="orientations K of the grad map")
    t = p.add_argument_group("training overrides")
    t.add_argument("--num-patches", type=int, help="sub-patches sampled per layer (default 100000)")
    t.add_argument("--method", choices=METHODS, help="filter learning method (default kmeans)")
    t.add_argument("--kmeans-iters", type=int, help="k-means iterations")


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision", choices=PRECISIONS, default="highest",
        help="matrix-product precision of describe: highest (fp32, default) or default "
        "(the backend's fastest: TF32/bf16 passes on GPUs; the same as highest on CPU)",
    )


def config_from_args(args: argparse.Namespace) -> CKNConfig:
    """The preset with the command line's overrides applied.

    Per-layer lists all have the number of layers (one value applies to
    every layer); a list longer than the preset's adds layers that copy the
    preset's last one before overrides.
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
    n = max([len(v) for v in given.values() if len(v) > 1] or [len(cfg.layers)])
    for k, v in given.items():
        if len(v) not in (1, n):
            raise InputError(f"--{k} has {len(v)} values for a {n}-layer network")
    layers = []
    for i in range(n):
        base = cfg.layers[min(i, len(cfg.layers) - 1)]
        layers.append(
            dataclasses.replace(base, **{k: (v[0] if len(v) == 1 else v[i]) for k, v in given.items()})
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
    for flag, field in (("num_patches", "num_patches"), ("method", "method"), ("kmeans_iters", "kmeans_iters")):
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


