"""The TFDS builder ckn_patches: array_record read without TensorFlow, exact .npz round trip."""

import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ckn import InputError
from retrieval import patches as P


def _tiny(color=False, n=23, seed=0):
    """A small PatchSet with every kind of value: NaN metadata, 3 scenes, both splits, odd sizes."""
    rng = np.random.default_rng(seed)
    shape = (n, 9, 7, 3) if color else (n, 9, 7)
    scene = rng.integers(0, 3, n).astype(np.int32)
    x = rng.normal(size=n).astype(np.float32)
    x[::5] = np.nan
    return P.PatchSet(
        patches=rng.integers(0, 256, shape, dtype=np.uint8),
        labels=rng.integers(0, 6, n).astype(np.int64) * 1000,
        split=(scene == 2).astype(np.uint8),
        scene=scene,
        image=rng.integers(-1, 6, n).astype(np.int32),
        x=x,
        y=rng.normal(size=n).astype(np.float32),
        scale=rng.uniform(1, 9, n).astype(np.float32),
        angle=rng.uniform(0, 360, n).astype(np.float32),
        scene_names=np.asarray(["alpha", "béta", "gamma"]),
        info={"source": "test", "tuple": [1, 2], "nested": {"a": 0.1}},
    )


def _npz_equal(a, b):
    with np.load(a) as za, np.load(b) as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            assert za[k].dtype == zb[k].dtype and za[k].shape == zb[k].shape, k
            assert np.array_equal(za[k], zb[k], equal_nan=za[k].dtype.kind == "f"), k


@pytest.mark.parametrize("color", [False, True])
def test_round_trip_is_exact(tmp_path, color):
    ps = _tiny(color)
    src = P.save_patchset(ps, tmp_path / "src.npz")
    vdir = P.write_tfds(P.load_patchset(src), tmp_path / "tfds", config="manual", progress=False)
    assert vdir.name == "1.0.0" and list(vdir.glob("*.array_record-*"))
    out = P.export_npz(tmp_path / "tfds", tmp_path / "out.npz", config="manual")
    _npz_equal(src, out)
    # The version folder works as well as data_dir + config.
    _npz_equal(src, P.export_npz(vdir, tmp_path / "out2.npz"))
    assert "tensorflow" not in sys.modules


def test_data_source_reads_the_manual_config_without_tensorflow(tmp_path):
    ps = _tiny()
    npz = P.save_patchset(ps, tmp_path / "p.npz")
    src = tfds.data_source(
        "ckn_patches/manual", data_dir=str(tmp_path / "d"), builder_kwargs={"path": str(npz)}
    )
    assert len(src["train"]) == int((ps.split == 0).sum()) and len(src["test"]) == int(
        (ps.split == 1).sum()
    )
    ex = src["test"][0]
    i = int(ex["index"])
    assert ex["patch"].shape == (9, 7, 1) and ex["patch"].dtype == np.uint8
    np.testing.assert_array_equal(ex["patch"][..., 0], ps.patches[i])
    assert ex["label"] == ps.labels[i] and ex["scene_name"].decode() == str(
        ps.scene_names[ps.scene[i]]
    )
    meta = json.loads(
        (tmp_path / "d" / "ckn_patches" / "manual" / "1.0.0" / "metadata.json").read_text()
    )
    assert meta["params"] == {"path": str(npz.resolve())}
    # Asking again for the same data set with other parameters is an error, not stale data.
    with pytest.raises(InputError, match="was built with path="):
        tfds.data_source(
            "ckn_patches/manual",
            data_dir=str(tmp_path / "d"),
            builder_kwargs={"path": str(tmp_path / "other.npz")},
        )
    assert "tensorflow" not in sys.modules


def test_default_config_is_built_by_the_builder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CKN_CACHE", str(tmp_path_factory.getbasetemp() / "ckn_cache"))
        data_dir = tmp_path_factory.mktemp("tfds_default")
        src = tfds.data_source(
            "ckn_patches/default", data_dir=str(data_dir), builder_kwargs={"quick": True}
        )
        ps = P.build_default(quick=True)
    assert len(src["train"]) + len(src["test"]) == len(ps)
    back = P.tfds_to_patchset(data_dir)
    for k in P.PatchSet.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(ps, k))


def test_builder_errors(tmp_path):
    with pytest.raises(InputError, match="takes builder kwargs path"):
        P.CknPatches(config="manual", data_dir=str(tmp_path), views=3)
    with pytest.raises(InputError, match="needs builder_kwargs"):
        tfds.data_source("ckn_patches/sequences", data_dir=str(tmp_path / "d"))
    with pytest.raises(InputError, match="no prepared"):
        P.tfds_to_patchset(tmp_path)
    with pytest.raises(InputError, match="not found"):
        P.tfds_to_patchset(tmp_path / "missing")
    with pytest.raises(InputError, match="config must be"):
        P.write_tfds(_tiny(), tmp_path, config="rome")
    P.write_tfds(_tiny(), tmp_path / "w", config="photos", progress=False)
    with pytest.raises(InputError, match="already exists"):
        P.write_tfds(_tiny(seed=1), tmp_path / "w", config="photos", progress=False)
    P.write_tfds(_tiny(seed=1), tmp_path / "w", config="photos", overwrite=True, progress=False)
    np.testing.assert_array_equal(
        P.tfds_to_patchset(tmp_path / "w", config="photos").patches, _tiny(seed=1).patches
    )
    assert not list((tmp_path / "w" / "ckn_patches" / "photos").glob("incomplete*"))


def test_no_temp_folder_left_per_builder(tmp_path, monkeypatch):
    """TFDS's initialize_from_bucket made an empty tmp...tfds folder per unprepared builder."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    P.write_tfds(_tiny(), tmp_path / "w", config="photos", progress=False)
    P.CknPatches(config="manual", data_dir=str(tmp_path / "d"))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_registration_is_lazy_and_listed():
    """`import retrieval` does not load tensorflow_datasets (+0.3 s for every `ckn` command);
    `dir(retrieval.patches)` lists the TFDS names and touching one registers ckn_patches."""
    import subprocess

    code = (
        "import sys, retrieval\n"
        "assert 'tensorflow_datasets' not in sys.modules\n"
        "assert {'CknPatches', 'write_tfds', 'export_npz'} <= set(dir(retrieval.patches))\n"
        "assert 'write_tfds' in dir(retrieval)\n"
        "retrieval.patches.CknPatches\n"
        "import tensorflow_datasets as tfds\n"
        "assert 'ckn_patches' in tfds.list_builders(with_community_datasets=False)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
