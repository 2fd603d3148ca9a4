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

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH = "batch"


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
