"""Data parallelism over devices and processes (stage: running a model on many images).

The 1-D batch mesh and its shardings, padding a batch to the device count, the
sharded describe step :func:`apply_describe`, the host group size of
:func:`ckn.describe` and the calls it keeps in flight from host threads
(:func:`host_streams`); several processes (hosts) joined by ``jax.distributed``
(:class:`Distributed`), each describing its :func:`process_rows` into one file
(:func:`write_descriptors`).
"""

from ckn._src.layers import (
    apply_describe,
)
from ckn._src.model import (
    group_size,
)
from ckn._src.multihost import (
    Distributed,
    process_rows,
    write_descriptors,
)
from ckn._src.sharding import (
    batch_mesh,
    batch_sharding,
    host_streams,
    padded_size,
    replicated,
)

__all__ = [
    "Distributed",
    "apply_describe",
    "batch_mesh",
    "batch_sharding",
    "group_size",
    "host_streams",
    "padded_size",
    "process_rows",
    "replicated",
    "write_descriptors",
]
