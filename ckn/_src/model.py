"""Batched description of patch files, and saving / loading trained models.

A model directory holds ``config.json`` (format tag, version, the CKNConfig,
the training patch shape, the training report) and ``arrays.npz`` (every
``Filters`` array, keyed ``layers.<i>.<name>``). It is written to a temporary
directory and renamed, so a failed save leaves nothing behind.

The training patch shape: ``ckn.train`` sets ``model.patch_shape = (H, W, C)``
(C = 1 for (N, H, W) patches) and ``save`` / ``load`` keep it; ``describe``
then refuses patches of another size or channel count (a network trained on
51 x 51 patches describes 16 x 16 ones as a smaller, meaningless descriptor)
unless ``any_size=True``. A model built by hand, or a folder saved before the
record existed, has ``patch_shape = None``: no check.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ckn._src import sharding
from ckn._src.config import CKNConfig
from ckn._src.errors import CORRUPT_FILE_ERRORS, InputError
from ckn._src.fileio import atomic_path, check_patches, progress_bar
from ckn._src.layers import CKN, apply_describe, check_precision

FORMAT = "ckn-model"
VERSION = 1
_ARRAYS = ("filters", "alpha", "bias", "linear", "preproc")


def patch_shape_of(patches: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of a batch (N, H, W) (C = 1) or (N, H, W, C)."""
    c = patches.shape[3] if patches.ndim == 4 else 1
    return int(patches.shape[1]), int(patches.shape[2]), int(c)


def trained_patch_shape(model: CKN) -> tuple[int, int, int] | None:
    """(H, W, C) of the patches the model was trained on; None when unknown."""
    shape = getattr(model, "patch_shape", None)
    return None if shape is None else tuple(int(v) for v in shape)


def _fmt(shape: tuple[int, int, int]) -> str:
    h, w, c = shape
    return f"{h}x{w}" + ("" if c == 1 else f"x{c}")


def _check_input(model: CKN, patches, *, any_size: bool = False) -> np.ndarray:
    """The checked batch: (H, W) becomes (1, H, W); an empty batch is allowed."""
    if not isinstance(patches, np.ndarray):
        try:
            patches = np.asarray(patches)
        except (ValueError, TypeError) as e:
            raise InputError(f"patches is not an array ({type(e).__name__})") from None
    if patches.ndim == 2:
        patches = patches[None]  # one gray patch (H, W)
    patches = check_patches(patches, allow_empty=True)
    cfg = model.config
    if cfg.channels == "rgb" and (patches.ndim != 4 or patches.shape[3] != 3):
        hint = " (one colour patch: pass patch[None])" if patches.ndim == 3 else ""
        raise InputError(
            f"this model needs (N, H, W, 3) colour patches, got shape {patches.shape}{hint}"
        )
    cfg.output_shape(patches.shape[1], patches.shape[2])  # "too small" first
    trained = trained_patch_shape(model)
    got = patch_shape_of(patches)
    if trained is not None and not any_size:
        if got[2] != trained[2]:
            raise InputError(
                f"this model was trained on {trained[2]}-channel patches ({_fmt(trained)}), got "
                f"{got[2]}-channel patches ({_fmt(got)}); convert them, or pass any_size to "
                "describe them anyway"
            )
        if got[:2] != trained[:2]:
            raise InputError(
                f"this model was trained on {_fmt(trained[:2] + (1,))} patches, got "
                f"{_fmt(got[:2] + (1,))} patches; pass any_size to describe them anyway"
            )
    return patches


def _batch_shape(n: int, batch_size: int) -> int:
    # Small inputs use the next power of two, so varied small N share compilations.
    return min(batch_size, 1 << max(0, (n - 1).bit_length()))


# Rows per device in one jitted call on CPU: the largest power of two up to
# MAX_GROUP whose call keeps the network's largest map within CPU_CALL_BYTES.
# Smaller calls keep the maps in the caches; a call of 256 ckn-grad patches
# (170 KiB each) wrote 44 MB maps and ran slower than 32 or 64 rows.
# Measured on the 2-core CPU (process CPU time per patch, one process,
# interleaved, load 13-15): ckn-grad 32 rows 496-651 us, 64 rows 471-605 us,
# 256 rows 628-749 us; ckn-ref64 (1 MiB per patch) 8 rows 4.0 ms, 16 rows 5.2 ms;
# ckn-raw (670 KiB) 8 and 16 rows within 7% of each other, 256 rows 1.5x.
# The group never depends on the batch size: every call then runs the same
# compiled code on the same shape, so a patch gets the same bits whatever the
# batch size, N and the number of devices (XLA's code for 32 rows and for 64
# rows may round differently). The cost: a small N is padded to one group.
MAX_GROUP = 256
CPU_CALL_BYTES = 12 << 20


def _largest_map_bytes(config: CKNConfig, height: int, width: int) -> int:
    """Bytes per patch of the largest float32 map the network computes."""
    sizes = [height * width * config.grad_orientations] if config.input == "grad" else []
    for layer, geo in zip(config.layers, config.layer_geometry(height, width)):
        sizes.append(geo.positions[0] * geo.positions[1] * layer.filters)
    return 4 * max(sizes)


def group_size(config: CKNConfig, height: int, width: int, platform: str = "cpu") -> int | None:
    """Rows per device in one jitted call on CPU (None elsewhere: the whole batch)."""
    if platform != "cpu":
        return None
    per_patch = max(_largest_map_bytes(config, height, width), 1)
    fit = max(1, min(MAX_GROUP, CPU_CALL_BYTES // per_patch))
    return 1 << (fit.bit_length() - 1)


def describe(
    model: CKN,
    patches: np.ndarray,
    *,
    batch_size: int = 256,
    progress: bool = False,
    out: np.ndarray | None = None,
    devices: Sequence[jax.Device] | None = None,
    precision: str | None = None,
    any_size: bool = False,
) -> np.ndarray:
    """Descriptors of many patches, in fixed-size jitted batches split over devices.

    The input is read ``batch_size`` patches at a time (a memory-mapped .npy
    streams; the next batch is read while the devices work on the current
    one) and the last batch is zero-padded, so every call has the same shape
    and reuses one compiled function. Each call is split evenly over
    ``devices`` (a 1-D ``"batch"`` mesh; the rows padded to a multiple of the
    device count) and every device runs the same program on its rows, so the
    descriptors do not depend on the number of devices. On CPU a call gives
    each device a fixed group of rows (``group_size``), and
    ``sharding.host_streams`` calls run at once, each from its own host thread.

    Args:
      model: a (trained) CKN.
      patches: (N, H, W) or (N, H, W, C), uint8 or float (a NumPy array or
        anything ``np.asarray`` takes). A 2-D array (H, W) is one gray patch
        and gives (1, D). A 3-D array is always N gray patches (N, H, W),
        never one colour patch (H, W, C) (N = 3 would be ambiguous): pass one
        colour patch as ``patch[None]``. N = 0 gives an empty (0, D) array.
      batch_size: patches read per step (on accelerators: per jitted call).
      progress: show a progress bar (stderr) when there is more than one batch.
      out: optional (N, D) float32 array to fill (e.g. a memory-mapped .npy),
        so that neither input nor output has to fit in memory.
      devices: the devices to split the work over (default
        ``jax.local_devices()``: all devices of this process).
      precision: matrix-product precision for this call, "highest" (fp32) or
        "default" (the backend's fastest, e.g. TF32 on GPUs); None: the model's.
      any_size: describe patches of another size or channel count than the
        model's training patches (``model.patch_shape``); refused otherwise.

    Returns:
      (N, D) float32, L2-normalized rows (zero rows for flat patches); ``out``
      when given.

    Raises:
      InputError: bad patches (not an array, wrong rank, NaN, too small for the
        network), another size or channel count than the training patches, a
        wrong ``out``, ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if precision is not None:
        check_precision(precision)
    patches = _check_input(model, patches, any_size=any_size)
    n = patches.shape[0]
    dim = model.config.descriptor_dim(patches.shape[1], patches.shape[2])
    if out is None:
        out = np.empty((n, dim), np.float32)
    elif out.shape != (n, dim) or out.dtype != np.float32:
        raise InputError(f"out must be float32 of shape {(n, dim)}, got {out.dtype} {out.shape}")
    if n == 0:
        return out
    mesh = sharding.batch_mesh(devices)
    ndev = mesh.size
    group = group_size(
        model.config, patches.shape[1], patches.shape[2], mesh.devices.flat[0].platform
    )
    bs = _batch_shape(n, batch_size)
    call = ndev * (group if group is not None else -(-bs // ndev))  # rows per jitted call
    bs = sharding.padded_size(bs, call)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.replicated(mesh))
    if ndev == 1:
        target, kw = mesh.devices.flat[0], {}
    else:
        target, kw = sharding.batch_sharding(mesh), {"mesh": mesh}
    kw["precision"] = precision or model.precision

    # Memory-mapped input and output: the pages of rows done are dropped from
    # this process's resident set (they stay in the page cache), so the peak
    # RSS does not grow with N (benchmarks/bench_memory.py).
    read_pages, written_pages = _MappedRows(patches), _MappedRows(out, writable=True)

    def run(rows: np.ndarray) -> jax.Array:
        return apply_describe(graphdef, state, jax.device_put(rows, target), **kw)

    def run_to_host(rows: np.ndarray) -> np.ndarray:
        return np.asarray(run(rows))

    # On CPU the calls run from host_streams threads, each waiting for its own
    # result; the first call is made here, so that it compiles once.
    streams = sharding.host_streams(mesh.devices.flat[0].platform)
    pool = ThreadPoolExecutor(streams) if streams > 1 and n > call else None
    try:
        starts = range(0, n, bs)
        pending = None  # (start, rows, results) of the batch in flight
        for start in progress_bar(
            starts, desc="describing", unit="batch", disable=not progress or len(starts) < 3
        ):
            x = np.array(patches[start : start + bs])
            m = x.shape[0]
            read_pages.release(start + m)
            if m < bs:
                x = np.concatenate([x, np.zeros((bs - m, *x.shape[1:]), x.dtype)])
            # Dispatched asynchronously: the devices work while the host reads on.
            rows = [x[j : j + call] for j in range(0, bs, call)]
            ys = [
                run(r) if pool is None or (start == 0 and j == 0) else pool.submit(run_to_host, r)
                for j, r in enumerate(rows)
            ]
            if pending is not None:
                _store(out, *pending)
                written_pages.release(pending[0] + pending[1])
            pending = (start, m, ys)
        if pending is not None:
            _store(out, *pending)
            written_pages.release(n)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out


def _store(out: np.ndarray, start: int, m: int, ys: list) -> None:
    """Copies a batch's results (jax.Arrays or futures of NumPy arrays) into ``out``."""
    for y in ys:
        if isinstance(y, Future):
            y = y.result()
        k = min(m, y.shape[0])
        if k <= 0:
            break
        out[start : start + k] = np.asarray(y)[:k]  # (slicing the jax.Array would dispatch an op)
        start, m = start + k, m - k


class _MappedRows:
    """Drops the pages of the first rows of a memory-mapped array from the resident set.

    ``madvise(MADV_DONTNEED)`` on a shared file mapping only unmaps the pages
    from this process: read-only data is read again from the file if touched,
    written data stays in the page cache and reaches the file. Does nothing
    for arrays that are not C-contiguous ``np.memmap`` views in mode r, r+ or
    w+ (copy-on-write "c" pages would lose their changes), or where the
    platform has no madvise.
    """

    def __init__(self, a: np.ndarray, *, writable: bool = False):
        self.mm = None
        if not (
            isinstance(a, np.memmap) and hasattr(mmap, "MADV_DONTNEED") and a.flags.c_contiguous
        ):
            return
        mm = getattr(a, "_mmap", None)
        if mm is None or a.mode not in (("r+", "w+") if writable else ("r", "r+", "w+")):
            return
        base = np.frombuffer(mm, np.uint8)  # the mapping's address; released at once
        self.offset = a.ctypes.data - base.ctypes.data
        del base
        self.mm, self.row, self.done = mm, a.strides[0] if a.ndim else a.itemsize, 0

    def release(self, rows: int) -> None:
        """Rows [0, rows) are done: drop every whole page below the end of row ``rows``."""
        if self.mm is None:
            return
        page = mmap.PAGESIZE
        lo = self.done // page * page
        hi = (self.offset + rows * self.row) // page * page
        if hi > lo:
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                self.mm = None
                return
            self.done = hi


def save(model: CKN, path: str | os.PathLike, *, training: dict | None = None) -> Path:
    """Writes a model directory (replacing an existing one only on success).

    Missing parent folders are created; ``model.patch_shape`` (the training
    patch shape, when known) is recorded in ``config.json``.
    """
    path = Path(path)
    arrays = {}
    for i, layer in enumerate(model.layers):
        for name in _ARRAYS:
            var = getattr(layer, name)
            if var is not None:
                arrays[f"layers.{i}.{name}"] = np.asarray(var.get_value())
    if model.projection is not None:
        arrays["projection"] = np.asarray(model.projection.get_value())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "patch_shape": None if (shape := trained_patch_shape(model)) is None else list(shape),
        "training": training or {},
    }
    with atomic_path(path, is_dir=True) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def load(path: str | os.PathLike, *, precision: str = "highest") -> CKN:
    """Reads a model directory written by ``save``.

    Args:
      path: the model directory.
      precision: matrix-product precision of the model ("highest" or "default").

    Raises:
      InputError: missing directory, files, arrays, or a corrupt file.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model directory not found: {path}")
    cfg_file, arr_file = path / "config.json", path / "arrays.npz"
    for f in (cfg_file, arr_file):
        if not f.is_file():
            raise InputError(f"{path}: not a CKN model directory (missing {f.name})")
    try:
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != FORMAT:
            raise InputError(f"{cfg_file}: not a CKN model config (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise InputError(f"{cfg_file}: unsupported model version {meta.get('version')!r}")
        config = CKNConfig.from_dict(meta["config"])
        patch_shape = meta.get("patch_shape")  # absent in folders saved before it existed
        if patch_shape is not None:
            patch_shape = tuple(int(v) for v in patch_shape)
            if len(patch_shape) != 3 or min(patch_shape) < 1:
                raise ValueError(f"patch_shape {patch_shape}")
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{cfg_file}: corrupt model config ({type(e).__name__}: {e})") from None
    check_precision(precision)
    # The model's structure only (no random filters, no Nystrom eigh): every
    # array is then set from the file.
    model = nnx.eval_shape(lambda: CKN(config, rngs=nnx.Rngs(0), precision=precision))
    try:
        with np.load(arr_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except CORRUPT_FILE_ERRORS as e:
        raise InputError(f"{arr_file}: corrupt model arrays ({type(e).__name__})") from None
    for i, layer in enumerate(model.layers):
        for name in _ARRAYS:
            var = getattr(layer, name)
            if var is None:
                continue
            key = f"layers.{i}.{name}"
            if key not in arrays:
                raise InputError(f"{arr_file}: missing array {key}")
            a, expected = arrays[key], tuple(var.get_value().shape)
            if a.shape != expected or not np.isfinite(a).all():
                raise InputError(
                    f"{arr_file}: array {key} has shape {a.shape} (expected {expected}) "
                    "or non-finite values"
                )
            var.set_value(jnp.asarray(a, jnp.float32))
    if model.projection is not None:
        a = arrays.get("projection")
        if a is None or a.shape != config.projection or not np.isfinite(a).all():
            raise InputError(
                f"{arr_file}: array projection missing, not of shape {config.projection} "
                "or non-finite"
            )
        model.projection.set_value(jnp.asarray(a, jnp.float32))
    model.patch_shape = patch_shape
    return model


def read_training_report(path: str | os.PathLike) -> dict:
    """The training report stored beside a saved model ({} if none)."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("training", {})
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read model config ({type(e).__name__})") from None
