"""Data parallelism: a 1-D device mesh whose one axis, "batch", splits the rows.

``describe`` and ``kmeans`` put their batch on ``batch_sharding(mesh)`` (rows
split evenly over the devices, the row count padded to a multiple of the
device count) and the model or centres on ``replicated(mesh)``. Every device
then runs the same program on its rows, so the results do not depend on the
number of devices (tests/test_sharding.py).

Multi-host: after ``jax.distributed.initialize()`` each process sees its own
``jax.local_devices()``; ``describe`` shards over those (each process
describes its own share of the patches), see the README.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH = "batch"

# Calls in flight at once on CPU, each from its own host thread: one per CPU
# this process may use, at least 2 and at most MAX_CPU_STREAMS: each call holds
# its own temporaries (XLA's memory analysis: describe's groups 19-23 MB for
# ckn-ref64 and ckn-grad, EfficientNet-Lite0 on one 1024 px image 112 MB).
# One jitted call keeps the cores busy only in its convolutions and products:
# XLA's elementwise loops (CKN's kappa, pooling, norms and input maps; the
# backbones' depthwise sums of shifted slices) run on one thread, and the calls
# that one thread dispatches run one after the other. Measured on the 2-core
# CPU (medians of interleaved rounds, the same bits): ckn.describe of ckn-grad
# 2,842 -> 4,377 patches/s (1.24 -> 1.8 cores busy; 3 or 4 threads as fast as
# 2), ckn-raw 1,338 -> 2,002, ckn-white 1,406 -> 2,090; ckn-ref64, mostly its
# layer-2 convolution on both cores already, unchanged. More cores: not measured.
MAX_CPU_STREAMS = 8
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
CPU_STREAMS = min(MAX_CPU_STREAMS, max(2, _CPUS or 1))


def host_streams(platform: str) -> int:
    """Calls to keep in flight from as many host threads on ``platform``: ``CPU_STREAMS``
    on "cpu", 1 elsewhere (an accelerator's queue already runs one call after another
    without the host)."""
    return CPU_STREAMS if platform == "cpu" else 1


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: ``jax.local_devices()``).

    Raises:
      ValueError: an empty device list.
    """
    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device, got none")
    return Mesh(np.asarray(devices, dtype=object), (BATCH,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over the mesh's ``"batch"`` axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= n."""
    return -(-n // multiple) * multiple
