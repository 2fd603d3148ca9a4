"""The pooling heads of global descriptors: one registry, name -> pure function + its settings.

Every head of :func:`retrieval.extract_global` (``GlobalConfig.head``, ``ckn eval-images
--global NAME``) is one :class:`PoolingHead` entry of :data:`POOLING_HEADS`: a pure, jitted
function on channels-last maps ``(N, h, w, C)`` with a validity mask ``(N, h, w)`` (from
:mod:`retrieval._src.pooling`), the exponent of its multi-scale power mean, the
:class:`retrieval.GlobalConfig` fields it reads (their defaults are that dataclass's), and, for
a head that sees the whole image at one square size instead of the multi-scale buckets (the
neural codes), that size. Nothing outside this file tests a head's name: adding a head is one
entry here (and a NumPy reference test in ``tests/test_pooling.py``); the command line's
``--global`` choices, the index's and the learned heads' multi-scale exponents follow.

References: see :mod:`retrieval._src.pooling` (MAC, SPoC, GeM, R-MAC, CroW) and
:mod:`retrieval._src.global_desc` (neural codes, Babenko et al. ECCV 2014).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from ckn import InputError
from retrieval._src import pooling
from retrieval._src.programs import call_compiled

#: Side of the square input of the ``codes`` head (Babenko et al.).
CODES_SIZE = 224


def _one(p: float) -> float:
    return 1.0


def _same(p: float) -> float:
    return float(p)


class PoolingHead(NamedTuple):
    """One pooling head.

    Attributes:
      pool: ``pool(x (N, h, w, C), mask (N, h, w) bool or None, config) -> (N, C)`` raw pooled
        vectors (jitted; ``config`` a :class:`retrieval.GlobalConfig`, read for ``uses``).
      multiscale_p: the head's p -> the power of its multi-scale mean (cirtorch: the GeM p
        for GeM, 1 for the others).
      uses: the ``GlobalConfig`` fields ``pool`` reads (their defaults are the dataclass's).
      image_size: None: multi-scale, bucketed maps (the usual path); an int: the whole image
        resized to this square, one scale (``pool`` then runs on its map, or the backbone's
        own ``codes`` when it has them).
      summary: one line for ``--help`` and the docs.
    """

    pool: Callable[[jax.Array, jax.Array | None, Any], jax.Array]
    multiscale_p: Callable[[float], float]
    uses: tuple[str, ...]
    image_size: int | None
    summary: str


#: name -> :class:`PoolingHead`; the names are ``GlobalConfig.head``'s choices.
POOLING_HEADS: dict[str, PoolingHead] = {
    "mac": PoolingHead(lambda x, m, c: pooling.mac(x, m), _one, (), None, "max pooling"),
    "spoc": PoolingHead(lambda x, m, c: pooling.spoc(x, m), _one, (), None, "average pooling"),
    "gem": PoolingHead(
        lambda x, m, c: pooling.gem(x, c.p, mask=m), _same, ("p",), None,
        "generalized mean with exponent p (also the power of the multi-scale mean)",
    ),
    "rmac": PoolingHead(
        lambda x, m, c: pooling.rmac(x, c.levels, mask=m), _one, ("levels",), None,
        "regional MAC over `levels` scales of regions",
    ),
    "crow": PoolingHead(
        lambda x, m, c: pooling.crow(x, mask=m), _one, (), None,
        "cross-dimensional weighting",
    ),
    "codes": PoolingHead(
        lambda x, m, c: pooling.neural_codes(x, m), _one, (), CODES_SIZE,
        "neural codes at 224 x 224 (VGG16 fc6, else the average of the last map)",
    ),
}  # fmt: skip
#: The head names, in registry order.
HEADS = tuple(POOLING_HEADS)


def pooling_head(name: str) -> PoolingHead:
    """The registry entry of ``name``.

    Raises:
      InputError: an unknown name (the known ones listed).
    """
    try:
        return POOLING_HEADS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown head {name!r}; known: {', '.join(HEADS)}") from None


#: The code a pooled program is made from (the key of its file kept on disk).
_SOURCES = tuple(sorted((__file__, pooling.__file__)))


@functools.partial(jax.jit, static_argnames=("name", "fixed"))
def _pool_normalized(feats, mask, floats: dict, *, name: str, fixed: tuple) -> jax.Array:
    """The head ``name`` pooled and L2-normalized, in one program.

    ``floats`` (traced) and ``fixed`` ((field, value) pairs, static) are the settings it reads.
    """
    config = types.SimpleNamespace(**floats, **dict(fixed))
    return pooling.l2_normalize(POOLING_HEADS[name].pool(feats, mask, config))


def pool_maps(name: str, feats: jax.Array, mask, config) -> jax.Array:
    """(B, h, w, C) maps + (B, h, w) mask -> (B, C) float32 L2-normalized (zeros: no valid cell).

    Returns the device array at once (JAX dispatches asynchronously): a caller reads it
    (``np.asarray``) once it has dispatched the next batch.

    One program per head, shape and structural setting (R-MAC's levels); float settings (GeM's
    p) are traced. Kept on disk as the backbone's are (``call_compiled``), so that a new query
    process neither traces nor compiles its pooling.
    """
    head = pooling_head(name)
    values = {f: getattr(config, f) for f in head.uses}
    floats = {f: np.float32(v) for f, v in values.items() if isinstance(v, float)}
    fixed = tuple(sorted((f, v) for f, v in values.items() if f not in floats))
    return call_compiled(
        _pool_normalized,
        ("pool", name, fixed),
        (feats, mask, floats),
        {"name": name, "fixed": fixed},
        sources=_SOURCES,
    )
