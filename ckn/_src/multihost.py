"""Several processes (hosts) describing one patch file into one ``.npy`` file.

After ``jax.distributed.initialize()`` (:meth:`Distributed.initialize`) every
process runs the same program: process ``i`` of ``P`` describes rows
``[i*N//P, (i+1)*N//P)`` (:func:`process_rows`) on its own
``jax.local_devices()`` and writes them into one output file that process 0
created (:func:`write_descriptors`). The file must be on a folder that every
process sees (a cluster's shared file system). Rows are written with
``os.pwrite`` at their byte offsets, never through a memory map: a map writes
whole pages back, and two hosts sharing the page across a slice boundary
(an NFS client each) would overwrite each other's rows.

Descriptors do not depend on how the rows are split (``describe`` runs every
row in the same fixed-size compiled call), so P processes write the file
that one process writes, bit for bit (tests/test_multihost.py).

The output appears only once complete: process 0 writes into a temporary
file beside it (``atomic_path``), the processes agree that every one of them
wrote its rows (``process_allgather`` of a flag), and only then process 0
renames it; a process that fails makes every process fail and nothing is
written.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from ckn._src.errors import InputError
from ckn._src.fileio import atomic_path, progress_bar
from ckn._src.layers import CKN
from ckn._src.model import describe

# Output rows described per call of ``describe`` (and written per pwrite): bounds the
# memory a process holds beside the streaming input, whatever N.
BLOCK_BYTES = 32 << 20
# Longest temporary file name process 0 can hand to the others (bytes, UTF-8).
_NAME_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class Distributed:
    """How this process joins the others (the arguments of ``jax.distributed.initialize``).

    A field left None is read from the cluster environment, as
    ``jax.distributed.initialize`` does (SLURM, Open MPI, Cloud TPU, Kubernetes);
    outside a cluster all three are needed (e.g. two processes on one machine).

    Attributes:
      coordinator: "host:port" of process 0, where the others connect.
      num_processes: the number of processes, >= 1.
      process_id: this process's index, 0 <= process_id < num_processes.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if self.coordinator is not None:
            host, sep, port = self.coordinator.rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
                raise InputError(
                    f"coordinator must be host:port with a port in 1..65535, "
                    f"got {self.coordinator!r}"
                )
        if self.num_processes is not None and self.num_processes < 1:
            raise InputError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and self.process_id < 0:
            raise InputError(f"process_id must be >= 0, got {self.process_id}")
        if (
            self.process_id is not None
            and self.num_processes is not None
            and self.process_id >= self.num_processes
        ):
            raise InputError(
                f"process_id {self.process_id} is out of range for {self.num_processes} processes"
            )

    def initialize(self) -> tuple[int, int]:
        """Joins the other processes; returns (this process's index, process count).

        Call it before any other JAX work (JAX refuses to join once its
        backend has started).

        Raises:
          InputError: the cluster environment and the fields do not say how to
            join, or the coordinator cannot be reached.
        """
        try:
            jax.distributed.initialize(self.coordinator, self.num_processes, self.process_id)
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"cannot join the other processes ({first})") from None
        return jax.process_index(), jax.process_count()


def process_rows(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of N that process ``index`` of ``count`` takes.

    Defaults: ``jax.process_index()`` and ``jax.process_count()``. Slices are
    contiguous, in process order, and differ in length by at most one.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return index * n // count, (index + 1) * n // count


def write_descriptors(
    model: CKN,
    patches: np.ndarray,
    path: str | os.PathLike,
    *,
    batch_size: int = 256,
    precision: str | None = None,
    any_size: bool = False,
    progress: bool = False,
) -> tuple[int, int]:
    """Describes ``patches`` into one ``.npy`` file, split over every process.

    Every process calls it with the same arguments (one process: all rows).
    Each describes its :func:`process_rows` on its local devices in blocks of
    at most ``BLOCK_BYTES`` of output (a memory-mapped input streams) and
    writes them at their place in the file.

    Args:
      model: a (trained) CKN.
      patches: (N, H, W) or (N, H, W, C), as for ``ckn.describe``.
      path: the output ``.npy``: (N, D) float32, the rows of ``ckn.describe``.
      batch_size, precision, any_size: as for ``ckn.describe``.
      progress: a progress bar (stderr) over this process's blocks.

    Returns:
      (lo, hi): the rows this process described.

    Raises:
      InputError: bad patches or settings (every process raises it, nothing
        is written), or another process failed.
    """
    kw = {"batch_size": batch_size, "precision": precision, "any_size": any_size}
    dim = []
    # Every check of describe() before anything is created, on every process.
    _agree(lambda: dim.append(describe(model, patches[:0], **kw).shape[1]), path)
    d = dim[0]
    n = int(patches.shape[0])
    lo, hi = process_rows(n)
    path = Path(path)
    if jax.process_index() == 0:
        with atomic_path(path) as tmp:
            try:
                np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
            except OSError as e:
                _share_name("")  # the others stop too
                raise InputError(f"cannot create {path} ({type(e).__name__})") from None
            _share_name(tmp.name)
            _agree(lambda: _fill(model, patches, tmp, lo, hi, d, kw, progress), path)
    else:
        name = _share_name(None)
        if not name:
            raise InputError(f"process 0 could not create {path}")
        _agree(lambda: _fill(model, patches, path.parent / name, lo, hi, d, kw, progress), path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"ckn write_descriptors {path.name}: renamed")
    return lo, hi


def _fill(model, patches, tmp: Path, lo: int, hi: int, d: int, kw: dict, progress: bool) -> None:
    """Describes rows [lo, hi) and writes them at their offsets in the .npy ``tmp``."""
    row_bytes = 4 * d
    block = max(1, BLOCK_BYTES // max(row_bytes, 1))
    block = max(kw["batch_size"], block // kw["batch_size"] * kw["batch_size"])
    starts = range(lo, hi, block)
    with open(tmp, "r+b") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        read_header(f)
        offset = f.tell()
        fd = f.fileno()
        bar = progress and len(starts) > 1
        for a in progress_bar(starts, desc="describing", unit="block", disable=not bar):
            b = min(hi, a + block)
            y = describe(model, patches[a:b], progress=progress and not bar, **kw)
            _pwrite_all(fd, memoryview(np.ascontiguousarray(y)).cast("B"), offset + a * row_bytes)
        os.fsync(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        k = os.pwrite(fd, data, offset)
        data, offset = data[k:], offset + k


def _share_name(name: str | None) -> str:
    """Process 0's temporary file name, given to every process."""
    if jax.process_count() == 1:
        return name
    buf = np.zeros(_NAME_BYTES, np.uint8)
    if name is not None:
        raw = name.encode()
        if len(raw) > _NAME_BYTES:
            raise InputError(f"output file name too long ({len(raw)} bytes)")
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(got[got != 0]).decode()


def _agree(step, path: Path) -> None:
    """Runs ``step`` here; raises if it, or the same step on another process, failed."""
    try:
        step()
        mine = None
    except Exception as e:  # noqa: BLE001 - told to the other processes, then re-raised
        mine = e
    if jax.process_count() > 1:
        ok = np.asarray(multihost_utils.process_allgather(np.int32(mine is None))).reshape(-1)
    else:
        ok = np.asarray([mine is None])
    if mine is not None:
        raise mine
    failed = [str(i) for i in np.flatnonzero(ok == 0)]
    if failed:
        raise InputError(
            f"process {', '.join(failed)} failed (see its message); {path} not written"
        )
