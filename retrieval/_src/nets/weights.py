"""Weight files without torch: PyTorch state dicts (legacy and zip formats), .npz, .safetensors.

``read_state_dict`` reads, told apart by their first bytes:
  - PyTorch's legacy format (torch < 1.6): pickles of the magic number, the protocol version and
    the system info, the state dict whose tensors name storages by key (persistent ids), the list
    of storage keys, then each storage as an int64 element count and its raw bytes;
  - PyTorch's zip format (torch >= 1.6): ``<name>/data.pkl`` (the same pickle), one
    ``<name>/data/<key>`` file of raw bytes per storage, and ``<name>/byteorder``;
  - ``.npz`` (no pickled objects) and ``.safetensors`` (8-byte header length, JSON header, data).
The pickles go through a restricted ``pickle.Unpickler``: ``find_class`` hands out harmless
stand-ins for the tensor rebuild functions, the storage types and ``OrderedDict``, and refuses any
other global with ``InputError`` before anything runs. Tensors are ``as_strided`` views (storage
offset, size, stride; bounds checked) copied out of their storages.

``write_state_dict`` writes the same formats (its own few pickle opcodes name the torch globals),
for converting weights and for tests. ``load_params`` checks a state dict against the keys and
shapes that a network expects.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import NamedTuple

import ml_dtypes
import numpy as np

import ckn
from ckn import InputError
from ckn.files import atomic_path

# Torch storage type name <-> NumPy dtype (little-endian in the files).
_STORAGES = {
    name: np.dtype(t)
    for name, t in (
        ("DoubleStorage", np.float64), ("FloatStorage", np.float32), ("HalfStorage", np.float16),
        ("BFloat16Storage", ml_dtypes.bfloat16), ("LongStorage", np.int64),
        ("IntStorage", np.int32), ("ShortStorage", np.int16), ("CharStorage", np.int8),
        ("ByteStorage", np.uint8), ("BoolStorage", np.bool_),
    )
}  # fmt: skip
_STORAGE_OF = {dtype: name for name, dtype in _STORAGES.items()}
_SAFETENSORS = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
_SAFETENSORS_OF = {np.dtype(dtype): name for name, dtype in _SAFETENSORS.items()}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
FORMATS = ("zip", "legacy", "safetensors", "npz")
# What a truncated or corrupt file raises somewhere in the parsers (reported as one InputError).
_CORRUPT = (
    *ckn.files.CORRUPT_FILE_ERRORS, TypeError, AttributeError, RecursionError,
    pickle.UnpicklingError, json.JSONDecodeError,
)  # fmt: skip


class _Bounded:
    """A binary file whose reads never ask for more than the bytes left in it.

    A corrupt pickle's length fields (a FRAME or BINBYTES8 of 2^40 bytes in a 64-byte file)
    would otherwise make the read allocate that much (MemoryError) before finding the file
    short; capped, the unpickler sees a truncated file.
    """

    def __init__(self, f):
        self._f = f
        self._size = os.fstat(f.fileno()).st_size

    def _left(self, n: int | None) -> int:
        left = max(0, self._size - self._f.tell())
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self._f.read(self._left(n))

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        return self._f.readinto(view[: self._left(len(view))])

    def readline(self, n: int | None = -1) -> bytes:
        return self._f.readline(self._left(n))


# The stand-ins that find_class hands out, and what they build, are immutable tuples: a pickle's
# BUILD opcode cannot alter them (nor the next file's load).
class _StorageType(NamedTuple):
    dtype: np.dtype  # torch.FloatStorage & co


# A storage named by a persistent id (its bytes are read after the pickle), and a tensor waiting
# for its storage (offset, size and stride in elements).
class _StorageRef(NamedTuple):
    key: str
    dtype: np.dtype
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


class _Rebuild(NamedTuple):
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)`` (tensor_arg=0) and
    ``_rebuild_parameter`` (tensor_arg=None: an nn.Parameter saved with keep_vars, its tensor)."""

    tensor_arg: int | None

    def __call__(self, *args):
        if self.tensor_arg is None:
            return args[0]
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _StorageRef):
            raise ValueError("tensor without a storage")
        return _TensorRef(storage, int(offset), tuple(map(int, size)), tuple(map(int, stride)))


_ALLOWED: dict[tuple[str, str], Callable | _StorageType] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Rebuild(0),
    ("torch._utils", "_rebuild_tensor"): _Rebuild(0),
    ("torch._utils", "_rebuild_parameter"): _Rebuild(None),
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Unpickles plain data, tensors and storages; refuses every other global."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise InputError(
            f"{self.source}: refused to load the global '{module}.{name}' "
            "(only tensors, storages and OrderedDict are allowed)"
        )

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata (legacy)])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unknown persistent id {pid!r:.80}")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(kind, _StorageType) or (len(pid) == 6 and pid[5] is not None):
            raise ValueError("unsupported storage (a storage view of torch < 0.4?)")
        ref = self.storages.setdefault(key, _StorageRef(key, kind.dtype, numel))
        if ref.dtype != kind.dtype:
            raise ValueError(f"storage {key} with two dtypes")
        return ref


def _strided(storage: np.ndarray, t: _TensorRef) -> np.ndarray:
    """The tensor's elements copied out of its storage (1-D), bounds checked first."""
    if len(t.size) != len(t.stride) or t.offset < 0 or min(t.stride, default=0) < 0:
        raise ValueError("bad tensor geometry")
    if 0 in t.size:
        return np.zeros(t.size, storage.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if any(n < 0 for n in t.size) or last >= storage.size:
        raise ValueError("tensor outside its storage")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[t.offset :], t.size, tuple(s * item for s in t.stride), writeable=False
    )
    return view.copy()


def _storage_array(data: bytes, ref: _StorageRef, little_endian: bool) -> np.ndarray:
    need = ref.numel * ref.dtype.itemsize
    if len(data) < need:
        raise ValueError(f"storage {ref.key} has {len(data)} bytes, expected {need}")
    arr = np.frombuffer(data, ref.dtype, ref.numel)
    if not little_endian and ref.dtype.itemsize > 1:
        arr = arr.view(f"u{ref.dtype.itemsize}").byteswap().view(ref.dtype)
    return arr


def _tensors(obj, storages: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The unpickled state dict (or {'state_dict': ...} checkpoint) with its tensors filled in."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"holds a {type(obj).__name__}, not a state dict")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise InputError(f"entry {key!r} of the state dict is not a tensor")
        out[str(key)] = _strided(storages[value.storage.key], value)
    return out


def _read_legacy(f, source: str) -> dict[str, np.ndarray]:
    load = lambda: _Unpickler(f, source).load()
    if load() != _LEGACY_MAGIC:
        raise InputError("not a PyTorch, .npz or .safetensors file")
    if load() != _LEGACY_PROTOCOL:
        raise ValueError("unsupported PyTorch protocol version")
    little = bool(load().get("little_endian", True))
    unpickler = _Unpickler(f, source)
    obj = unpickler.load()
    keys = _Unpickler(f, source).load()
    storages = {}
    for key in keys:
        ref = unpickler.storages[str(key)]
        (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
        if numel < 0:
            raise ValueError(f"storage {key} of {numel} elements")
        ref = ref._replace(numel=numel)
        storages[ref.key] = _storage_array(f.read(numel * ref.dtype.itemsize), ref, little)
    return _tensors(obj, storages)


def _read_zip(zf: zipfile.ZipFile, source: str) -> dict[str, np.ndarray]:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
        if names and all(n.endswith(".npy") for n in names):
            return None  # an .npz
        raise InputError("a zip file that is neither a PyTorch file nor an .npz")
    prefix = pkl[0][: -len("data.pkl")]
    little = True
    if prefix + "byteorder" in names:
        little = zf.read(prefix + "byteorder").decode().strip() != "big"
    unpickler = _Unpickler(io.BytesIO(zf.read(pkl[0])), source)
    obj = unpickler.load()
    storages = {
        key: _storage_array(zf.read(f"{prefix}data/{key}"), ref, little)
        for key, ref in unpickler.storages.items()
    }
    return _tensors(obj, storages)


def _read_safetensors(path) -> dict[str, np.ndarray]:
    raw = np.memmap(path, np.uint8, mode="r")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    if n > raw.size - 8:
        raise ValueError("header longer than the file")
    header = json.loads(raw[8 : 8 + n].tobytes())
    data = raw[8 + n :]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = np.dtype(_SAFETENSORS[info["dtype"]])
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        nbytes = dtype.itemsize * int(np.prod(shape))
        if not 0 <= begin <= end <= data.size or end - begin != nbytes:
            raise ValueError(f"bad data offsets for {key!r}")
        out[key] = data[begin:end].view(dtype).reshape(shape).copy()
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the arrays of a weights file, without torch.

    Args:
      path: a PyTorch state dict (legacy or zip format; a checkpoint dict whose ``"state_dict"``
        entry is the state dict is accepted too), an ``.npz`` or a ``.safetensors`` file.

    Returns:
      ``{name: array}`` in the file's order; each array a C-contiguous copy in native byte order,
      of the stored dtype (bfloat16 as ``ml_dtypes.bfloat16``).

    Raises:
      InputError: a missing, truncated or corrupt file, or a pickle that names any global other
        than the tensor rebuild functions, storage types and ``OrderedDict`` (nothing is run).

    Examples:
      >>> state = read_state_dict("efficientnet-lite0-57934424.pth")
      >>> state["_fc.weight"].shape
      (1000, 1280)
    """
    source = f"weights file {os.fspath(path)}"
    if not os.path.isfile(path):
        raise InputError(f"{source}: not found")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            if head[:4] == b"PK\x03\x04":
                with zipfile.ZipFile(path) as zf:
                    out = _read_zip(zf, source)
                if out is None:
                    with np.load(path, allow_pickle=False) as npz:
                        out = {key: _native(npz[key]) for key in npz.files}
            elif head[8:9] == b"{":
                out = _read_safetensors(path)
            else:
                f.seek(0)
                out = _read_legacy(_Bounded(f), source)
    except InputError as e:
        raise e if str(e).startswith(source) else InputError(f"{source}: {e}") from None
    except _CORRUPT as e:
        raise InputError(f"{source}: truncated or corrupt ({type(e).__name__}: {e})") from None
    return out


def _native(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array in native byte order (a itself when it already is one)."""
    return a.astype(a.dtype.newbyteorder("="), order="C", copy=False)


def _storage_view(a: np.ndarray):
    """(1-D base array, offset, strides) of a, both in elements, when a is a plain view of it."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    item = a.dtype.itemsize
    delta = a.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    ok = root.dtype == a.dtype and root.flags.c_contiguous and a.size > 0
    if not ok or delta % item or any(s < 0 or s % item for s in a.strides):
        return None
    return root, delta // item, tuple(s // item for s in a.strides)


def _pickle_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b  # LONG1


def _torch_pickle(entries, legacy: bool) -> bytes:
    """Protocol-2 opcodes of the state dict [(name, storage key, dtype, numel, offset, shape,
    strides)], as torch pickles it (the torch globals are written by name: no torch needed)."""
    glob = lambda module, name: f"c{module}\n{name}\n".encode()
    text = lambda s: b"X" + struct.pack("<I", len(s.encode())) + s.encode()
    ints = lambda values: b"(" + b"".join(map(_pickle_int, values)) + b"t"
    ordered_dict = glob("collections", "OrderedDict") + b")R"  # OrderedDict()
    out = [b"\x80\x02", ordered_dict, b"("]
    for name, key, dtype, numel, offset, shape, strides in entries:
        storage = [text("storage"), glob("torch", _STORAGE_OF[dtype]), text(key), text("cpu")]
        pid = b"(" + b"".join(storage) + _pickle_int(numel) + (b"Nt" if legacy else b"t") + b"Q"
        args = [pid, _pickle_int(offset), ints(shape), ints(strides), b"\x89", ordered_dict]
        # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks={})
        out += [text(name), glob("torch._utils", "_rebuild_tensor_v2"), b"(", *args, b"tR"]
    return b"".join(out + [b"u."])  # SETITEMS, STOP


def _torch_entries(arrays: Mapping[str, np.ndarray]):
    """Tensors sharing a base array share one storage (with offsets and strides, as in torch)."""
    entries, storages, roots = [], {}, {}
    for name, a in arrays.items():
        view = _storage_view(a)
        if view is None:
            a = a if a.flags.c_contiguous else a.copy(order="C")
            view = (a, 0, tuple(s // a.dtype.itemsize for s in a.strides))
        root, offset, strides = view
        if id(root) not in roots:
            roots[id(root)] = key = str(len(roots))
            storages[key] = root
        key = roots[id(root)]
        entries.append((name, key, a.dtype, root.size, offset, a.shape, strides))
    return entries, storages


def _check_arrays(arrays: Mapping[str, np.ndarray], format: str) -> dict[str, np.ndarray]:
    if format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    known = _STORAGE_OF if format in ("zip", "legacy") else _SAFETENSORS_OF
    out = {}
    for key, a in arrays.items():
        if not isinstance(key, str) or not isinstance(a, np.ndarray):
            raise InputError(f"state dict entries must be str: np.ndarray, got {key!r}")
        if a.dtype.hasobject or (a.dtype.newbyteorder("=") not in known and format != "npz"):
            raise InputError(f"{key!r}: dtype {a.dtype} cannot be written as {format}")
        out[key] = (
            a.astype(a.dtype.newbyteorder("<"), copy=False) if a.dtype.byteorder == ">" else a
        )
    return out


def write_state_dict(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *, format: str = "zip"
):
    """Writes arrays as a weights file that ``read_state_dict`` (and ``torch.load``) can read.

    Args:
      path: output file (written atomically).
      arrays: ``{name: array}``; float64/32/16, bfloat16, int64/32/16/8, uint8 or bool.
      format: "zip" (torch >= 1.6), "legacy" (torch < 1.6), "safetensors" or "npz". In the torch
        formats, arrays that are views of one C-contiguous base array share its storage, keeping
        their offsets and (non-negative) strides, as torch writes views of one tensor.
    """
    arrays = _check_arrays(arrays, format)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if format == "npz":
            np.savez(f, **arrays)
        elif format == "safetensors":
            header, offset = {}, 0
            for key, a in arrays.items():
                n = a.nbytes
                header[key] = {"dtype": _SAFETENSORS_OF[a.dtype], "shape": list(a.shape),
                               "data_offsets": [offset, offset + n]}  # fmt: skip
                offset += n
            text = json.dumps(header).encode()
            text += b" " * (-len(text) % 8)
            f.write(struct.pack("<Q", len(text)) + text)
            for a in arrays.values():
                f.write(np.ascontiguousarray(a).tobytes())
        elif format == "legacy":
            entries, storages = _torch_entries(arrays)
            sys_info = {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}  # fmt: skip
            for obj in (_LEGACY_MAGIC, _LEGACY_PROTOCOL, sys_info):
                f.write(pickle.dumps(obj, protocol=2))
            f.write(_torch_pickle(entries, legacy=True))
            f.write(pickle.dumps(list(storages), protocol=2))
            for root in storages.values():
                f.write(struct.pack("<q", root.size) + root.tobytes())
        else:
            entries, storages = _torch_entries(arrays)
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                _write_aligned(zf, "archive/data.pkl", _torch_pickle(entries, legacy=False))
                _write_aligned(zf, "archive/byteorder", b"little")
                for key, root in storages.items():
                    _write_aligned(zf, f"archive/data/{key}", root.tobytes())
                _write_aligned(zf, "archive/version", b"3\n")


def _write_aligned(zf: zipfile.ZipFile, name: str, data: bytes):
    """Stores data at a 64-byte aligned offset, as torch does (so torch can memory-map it)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    start = zf.fp.tell() + 30 + len(name.encode()) + 4  # local header, name, padding field header
    pad = -start % 64
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def load_params(
    expected: Mapping[str, tuple[int, ...]],
    state: Mapping[str, np.ndarray],
    *,
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Checks a state dict against the keys and shapes that a network expects.

    Args:
      expected: ``{key: shape}`` of the network, in its order.
      state: ``{key: array}``; BatchNorm ``num_batches_tracked`` counters are ignored.
      source: how messages name the state dict, e.g. "resnet50 weights file r50.pth".

    Returns:
      ``{key: float32 array}`` for the expected keys, in their order.

    Raises:
      InputError: one line naming the first missing or unexpected key, or array of another shape
        or with NaN / inf values: "weights file x.pth: '_fc.weight' has shape (10, 1280), expected
        (1000, 1280)".
    """
    for key in expected:
        if key not in state:
            raise InputError(f"{source}: missing key {key!r}")
    for key in state:
        if key not in expected and not key.endswith("num_batches_tracked"):
            raise InputError(f"{source}: unexpected key {key!r}")
    out = {}
    for key, shape in expected.items():
        a = np.asarray(state[key])
        if a.shape != tuple(shape):
            raise InputError(f"{source}: {key!r} has shape {a.shape}, expected {tuple(shape)}")
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            raise InputError(f"{source}: {key!r} has NaN or infinite values")
        out[key] = a
    return out
