"""Jitted calls in flight from host threads on the CPU (:func:`run_in_order`), and a backbone's
batch as calls of a few rows (:func:`run_rows`).

One jitted call of a CNN keeps the CPU's cores busy only in its convolutions and products:
XLA runs the elementwise loops (depthwise sums of shifted slices, activations) of a call on
one thread, and a large batch makes them leave the caches. So on the CPU a batch of N images
runs as calls of :func:`rows_per_call` rows (about ``CALL_PIXELS`` pixels each, at least one
image), ``ckn.sharding.host_streams`` of them at once, each from its own host thread; the
results are the same values (the same program per row). Accelerators run the batch as one call.

Measured (EfficientNet-Lite0, the 2-core AMD EPYC host, medians of 5 interleaved rounds,
images/s of one batch, whole -> in calls of r rows on 2 threads): 224 px batch 16 97 -> 141
(r = 2; r = 1 120, r = 4 107); 352 px batch 8 39 -> 54 (r = 1; r = 2 42); 512 px batch 4
19.1 -> 27.1 (r = 1; r = 2 20.7); 1024 px batch 4 5.06 -> 5.51 (r = 1; r = 2 5.59).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

import ckn

#: Pixels per jitted call on the CPU (rows = max(1, CALL_PIXELS // (H * W))): 2 rows at
#: 224 px, 1 from about 256 px up (see the module docstring).
CALL_PIXELS = 2**17


def rows_per_call(n: int, height: int, width: int, platform: str) -> int:
    """Rows of each jitted call for a batch of n height x width images on ``platform``.

    n where ``ckn.sharding.host_streams(platform)`` is 1 (accelerators), else
    ``min(n, max(1, CALL_PIXELS // (height * width)))``.
    """
    if ckn.sharding.host_streams(platform) == 1:
        return n
    return min(n, max(1, CALL_PIXELS // max(1, height * width)))


def run_in_order(fn, batches, platform: str | None = None):
    """Yields ``(tag, fn(x))`` for each ``(tag, x)`` of ``batches``, in order.

    On the CPU ``ckn.sharding.host_streams`` calls run at once, each from its own host
    thread (each result is ready when yielded), and one more batch is read meanwhile: at
    most that many + 2 batches are in memory. Elsewhere each call is dispatched as its
    batch comes (an accelerator queues them itself). A consumer that stops early, or a call
    that raises, waits for the calls running, cancels the others and leaves no thread.

    Args:
      fn: x -> jax.Array (or a pytree of them).
      batches: iterable of ``(tag, x)``.
      platform: the backend the calls run on (default: JAX's default backend).
    """
    streams = ckn.sharding.host_streams(platform or jax.default_backend())
    if streams == 1:
        for tag, x in batches:
            yield tag, fn(x)
        return
    pool = ThreadPoolExecutor(streams)
    window: collections.deque = collections.deque()  # (tag, future of fn(x))
    try:
        for tag, x in batches:
            window.append((tag, pool.submit(_ready, fn, x)))
            if len(window) > streams:
                tag, done = window.popleft()
                yield tag, done.result()
        while window:
            tag, done = window.popleft()
            yield tag, done.result()
    finally:
        pool.shutdown(cancel_futures=True)


def _ready(fn, x):
    return jax.block_until_ready(fn(x))


def run_rows(fn: Callable[[np.ndarray], jax.Array], x, rows: int, platform: str) -> jax.Array:
    """``fn(x)`` as calls on ``rows`` rows of x at a time (:func:`run_in_order`).

    The last call's rows are completed by repeating x's last row (every call has one
    shape: one compilation) and the extra outputs dropped. ``fn`` must treat rows
    independently (a network's forward pass does).

    Args:
      fn: (rows, ...) -> (rows, ...) jax.Array.
      x: (N, ...) array (NumPy or JAX; the calls get NumPy slices).
      rows: rows per call (>= 1); rows >= N calls ``fn(x)`` once.
      platform: the backend the calls run on (``host_streams`` of them in flight).

    Returns:
      (N, ...) ``fn``'s outputs in row order.
    """
    n = x.shape[0]
    if rows >= n:
        return fn(x)
    x = np.asarray(x)  # host slices (a device array's would each dispatch a program)

    def chunks():
        for start in range(0, n, rows):
            chunk = x[start : start + rows]
            if chunk.shape[0] < rows:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], rows - len(chunk), axis=0)])
            yield start, chunk

    outs = [np.asarray(y) for _, y in run_in_order(fn, chunks(), platform)]
    return jnp.asarray(np.concatenate(outs)[:n])
