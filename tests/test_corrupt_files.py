"""Damaged files give one InputError naming the file (ckn.files.CORRUPT_FILE_ERRORS).

Each file below is damaged the way a flipped bit or a cut copy damages one, and each raised
something other than InputError before the readers caught ``CORRUPT_FILE_ERRORS``: a zip
member's flag bit 5 (NotImplementedError), a damaged deflate stream (zlib.error), a .npy header
that does not close (tokenize.TokenError). Found by flipping bytes of real files at random.
A patch set's metadata arrays (x, y, scene, ...) are read after its patches and labels: a
damaged one raised zlib.error there.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
from flax import nnx

import ckn
import retrieval
from ckn import InputError


def _npz(compressed: bool = False, **arrays) -> bytearray:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return bytearray(buf.getvalue())


def _flag_bit_5(data: bytearray) -> bytes:
    """The zip's first central-directory entry marked "compressed patched data"."""
    at = data.find(b"PK\x01\x02")
    data[at + 8] |= 0x20
    return bytes(data)


def _damaged_deflate(data: bytearray, member: str | None = None) -> bytes:
    """A member's compressed stream (the first one's by default) with its first byte inverted."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(member) if member else zf.infolist()[0]
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[at + 26 : at + 30])
    data[at + 30 + name_len + extra_len] ^= 0xFF
    return bytes(data)


def _open_header_npy() -> bytes:
    """A .npy whose header dict is never closed."""
    hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': (40, 8), "
    hdr += b" " * (118 - len(hdr)) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr + bytes(40 * 8 * 4)


def _patches() -> dict:
    rng = np.random.default_rng(0)
    return {
        "patches": rng.integers(0, 256, (40, 16, 16), dtype=np.uint8),
        "labels": np.arange(40) // 2,
    }


def _model_with(tmp_path, damage) -> tuple:
    """A saved ckn-tiny model folder whose arrays.npz is damaged by ``damage``."""
    ckn.save(ckn.CKN(ckn.get_preset("ckn-tiny"), rngs=nnx.Rngs(0)), tmp_path / "m")
    arrays = tmp_path / "m" / "arrays.npz"
    arrays.write_bytes(damage(bytearray(arrays.read_bytes())))
    return arrays, lambda: ckn.load(tmp_path / "m")


def _file_with(tmp_path, name, data, load) -> tuple:
    path = tmp_path / name
    path.write_bytes(data)
    return path, lambda: load(path)


CASES = {
    "patch file, zip flag bit 5": lambda t: _file_with(
        t, "p.npz", _flag_bit_5(_npz(**_patches())), ckn.files.load_patch_file
    ),
    "patch file, damaged deflate": lambda t: _file_with(
        t, "p.npz", _damaged_deflate(_npz(True, **_patches())), ckn.files.load_patch_file
    ),
    "patch set, damaged metadata member": lambda t: _file_with(
        t,
        "s.npz",
        _damaged_deflate(_npz(True, **_patches(), x=np.linspace(0, 1, 40)), "x.npy"),
        retrieval.load_patchset,
    ),
    "array, open .npy header": lambda t: _file_with(
        t, "a.npy", _open_header_npy(), ckn.files.load_array
    ),
    "model arrays, zip flag bit 5": lambda t: _model_with(t, _flag_bit_5),
}


@pytest.mark.parametrize("case", CASES)
def test_damaged_file_is_one_input_error_naming_it(tmp_path, case):
    path, load = CASES[case](tmp_path)
    with pytest.raises(InputError) as e:
        load()
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and ("cannot read" in msg or "corrupt" in msg), msg
