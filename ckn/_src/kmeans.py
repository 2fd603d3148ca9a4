"""k-means in JAX: spherical (CKN filters) and Euclidean (VLAD codebooks).

Pure ``kmeans_init`` / ``kmeans_step`` over a ``KMeansState`` NamedTuple, as
optax writes its transformations; ``kmeans`` drives them with ``lax.scan`` so
a whole fit compiles once.

Objective, evaluated at each assignment step with the current centres:
  spherical: J = mean_i (1 - max_j <c_j, x_i>)  (x_i, c_j unit vectors)
  euclidean: J = mean_i min_j ||x_i - c_j||^2
Lloyd iterations never increase J. An empty cluster is re-seeded with the
worst-fitted point (the r-th empty cluster with the r-th worst), which cannot
increase J either.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class KMeansState(NamedTuple):
    centers: jax.Array  # (k, d)
    objective: jax.Array  # () objective of `centers` before the last update; inf at init
    num_empty: jax.Array  # () int32, clusters re-seeded at the last step


def _assign(x, centers, spherical, precision):
    """Returns (index of best centre (n,), cost of that assignment (n,))."""
    dots = jnp.matmul(x, centers.T, precision=precision)
    if spherical:
        best = jnp.argmax(dots, axis=1)
        cost = 1.0 - jnp.max(dots, axis=1)
    else:
        # ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin.
        c2 = jnp.sum(centers * centers, axis=1)
        d = c2[None, :] - 2.0 * dots
        best = jnp.argmin(d, axis=1)
        cost = jnp.maximum(jnp.min(d, axis=1) + jnp.sum(x * x, axis=1), 0.0)
    return best, cost


def kmeans_init(key: jax.Array, x: jax.Array, k: int) -> KMeansState:
    """Centres = k distinct points of x drawn at random.

    Args:
      key: PRNG key.
      x: (n, d) data, n >= k (unit-norm rows for spherical k-means).
      k: number of clusters.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k-means needs at least k={k} points, got n={n}")
    idx = jax.random.choice(key, n, (k,), replace=False)
    return KMeansState(
        centers=x[idx], objective=jnp.asarray(jnp.inf, x.dtype), num_empty=jnp.asarray(0, jnp.int32)
    )


def kmeans_step(
    state: KMeansState, x: jax.Array, *, spherical: bool = True, precision=None
) -> KMeansState:
    """One Lloyd iteration: assign, update, re-seed empty clusters.

    Args:
      state: current centres.
      x: (n, d) data.
      spherical: unit-norm centres and cosine similarity if True, else Euclidean.

    Returns:
      The new state; its ``objective`` is J of the *previous* centres.
    """
    k, d = state.centers.shape
    best, cost = _assign(x, state.centers, spherical, precision)
    sums = jax.ops.segment_sum(x, best, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(cost), best, num_segments=k)
    if spherical:
        norms = jnp.linalg.norm(sums, axis=1, keepdims=True)
        new = sums / jnp.maximum(norms, 1e-12)
    else:
        new = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    # The r-th empty cluster takes the r-th worst-fitted point.
    _, worst = lax.top_k(cost, k)
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
    reseed = x[worst[jnp.clip(rank, 0, k - 1)]]
    new = jnp.where(empty[:, None], reseed, new)
    return KMeansState(new, jnp.mean(cost), jnp.sum(empty.astype(jnp.int32)))


def kmeans_objective(x: jax.Array, centers: jax.Array, *, spherical: bool = True, precision=None):
    """J of the given centres on x (see module docstring)."""
    return jnp.mean(_assign(x, centers, spherical, precision)[1])


@functools.partial(jax.jit, static_argnames=("k", "iters", "spherical", "precision"))
def _kmeans_fit(key, x, k, iters, spherical, precision):
    state = kmeans_init(key, x, k)

    def body(s, _):
        s = kmeans_step(s, x, spherical=spherical, precision=precision)
        return s, s.objective

    state, history = lax.scan(body, state, None, length=iters)
    final = kmeans_objective(x, state.centers, spherical=spherical, precision=precision)
    return state.centers, jnp.concatenate([history, final[None]])


def kmeans(
    x,
    k: int,
    *,
    key: jax.Array | int = 0,
    iters: int = 30,
    spherical: bool = True,
    precision=None,
) -> tuple[jax.Array, jax.Array]:
    """Fits k centres to x by Lloyd's algorithm, compiled once.

    Args:
      x: (n, d) float data; for spherical k-means the rows must be unit-norm.
      k: number of centres, k <= n.
      key: PRNG key or integer seed (same key, same centres).
      iters: number of Lloyd iterations.
      spherical: spherical (cosine) k-means if True, else Euclidean.
      precision: matmul precision (None: the backend default).

    Returns:
      (centres (k, d), objective history (iters + 1,)): J before each update
      and J of the returned centres last; non-increasing.

    Examples:
      >>> x = jax.random.normal(jax.random.key(0), (1000, 16))
      >>> x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
      >>> centers, history = kmeans(x, 8, key=0, iters=10)
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be (n, d), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float array, got dtype {x.dtype}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, n={x.shape[0]}], got {k}")
    if isinstance(key, int):
        key = jax.random.key(key)
    return _kmeans_fit(key, x, k, iters, spherical, precision)
