"""`ckn eval-patches`, evaluate_descriptors and describe_with.

Bad input must give exit status 2, exactly one line on stderr naming the
problem, no traceback, and no JSON left behind.
"""

import json

import numpy as np
import pytest
from test_cli import _assert_one_line_error, _run  # the CLI helpers of the ckn core tests

import ckn
from ckn import InputError
from retrieval import patches as E
from retrieval.patches import describe_baseline


def _eval(capsys, *argv):
    return _run(capsys, "eval-patches", *[str(a) for a in argv])


def _groups(num_groups, size=16, seed=0):
    """Groups of 4 crops of the camera photo, shifted by 0 or 1 pixel, with noise."""
    import skimage.data

    img = skimage.data.camera().astype(np.float32)
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, img.shape[0] - size - 1, num_groups)
    xs = rng.integers(0, img.shape[1] - size - 1, num_groups)
    patches = [
        img[y + dy : y + dy + size, x + dx : x + dx + size] + rng.normal(0, 4, (size, size))
        for y, x in zip(ys, xs)
        for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1))
    ]
    labels = np.repeat(np.arange(num_groups), 4)
    return np.clip(np.stack(patches), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory):
    patches, labels = _groups(30)
    split = (labels >= 20).astype(np.uint8)  # 20 train groups, 10 test groups
    path = tmp_path_factory.mktemp("data") / "groups.npz"
    np.savez(path, patches=patches, labels=labels, split=split)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("models") / "tiny"
    ckn.save(tiny_model[0], out)
    return out


# --------------------------------------------------------------------------- evaluate_descriptors


def test_evaluate_descriptors_keys_and_exact_values():
    # 1-D descriptors: q0 ranks its relevant item 2nd, q1 3rd, q2 1st, q3 2nd.
    x = np.array([[1.0], [0.5], [0.25], [-1.0]], dtype=np.float32)
    r = E.evaluate_descriptors(x, [0, 1, 0, 1])
    assert tuple(r) == E.RESULT_KEYS
    # Normalized inside, without float32 overflow for huge entries.
    assert E.evaluate_descriptors(x * np.float32(1e30), [0, 1, 0, 1])["map"] == r["map"]
    json.dumps(r, allow_nan=False)
    # After L2 normalization the rows are +1, +1, +1, -1.
    r = E.evaluate_descriptors(
        np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, -1.0]]), [0, 1, 0, 1]
    )
    assert r["num_patches"] == 4 and r["num_groups"] == 2 and r["dim"] == 2
    assert (r["num_queries"], r["num_skipped"]) == (4, 0)
    assert r["ap_definition"] == "non-interpolated"
    # q0 -> 2 (R) first; q1 -> 0, 2 tie at 0 then 3 (R) last: 1/3; q3 likewise: 1/3.
    assert r["map"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 3) / 4)
    assert r["nn_accuracy"] == 0.5
    assert len(r["precision_recall"]["recall"]) == len(r["precision_recall"]["precision"]) == 21


def test_evaluate_constant_descriptor_at_chance_and_skipped_queries():
    labels = np.array([0, 0, 1, 1, 2, 3])  # two singletons: not queries
    r = E.evaluate_descriptors(np.ones((6, 5), np.float32), labels)
    # Each query: one relevant among 5 others, ranked last: AP 1/5.
    assert r["map"] == pytest.approx(0.2)
    assert (r["num_queries"], r["num_skipped"]) == (4, 2)
    assert r["roc_auc"] == 0.5 and r["fpr95"] == 1.0 and r["nn_accuracy"] == 0.0
    with pytest.raises(InputError, match="no two items share a label"):
        E.evaluate_descriptors(np.eye(3), [0, 1, 2])
    with pytest.raises(InputError, match="NaN"):
        E.evaluate_descriptors(np.full((4, 2), np.nan), [0, 0, 1, 1])
    with pytest.raises(InputError, match="labels must be"):
        E.evaluate_descriptors(np.eye(4), [0, 0, 1])


def test_describe_with_dispatch(model_dir, tiny_model):
    patches, _ = _groups(3)
    np.testing.assert_array_equal(
        E.describe_with("sift", patches), describe_baseline("sift", patches)
    )
    from_dir = E.describe_with(model_dir, patches)  # 12 patches: one batch of 16
    np.testing.assert_allclose(from_dir, ckn.describe(tiny_model[0], patches), atol=1e-6)
    np.testing.assert_array_equal(E.describe_with(tiny_model[0], patches, batch_size=16), from_dir)
    assert E.descriptor_info("pixels", (16, 16, 3)) == {
        "name": "pixels",
        "kind": "baseline",
        "dim": 768,
        "coverage": "16x16",
    }
    info = E.descriptor_info(model_dir, (16, 16))
    assert info["kind"] == "ckn" and info["name"] == "ckn-tiny" and info["dim"] == from_dir.shape[1]
    with pytest.raises(InputError, match="neither a model directory nor a baseline"):
        E.describe_with("surf", patches)
    with pytest.raises(InputError, match="too small"):
        E.describe_with(model_dir, patches[:, :4, :4])


# --------------------------------------------------------------------------- CLI


def test_eval_patches_baseline_train_and_test(capsys, tmp_path, patch_file):
    out = tmp_path / "sift.json"
    code, stdout, err = _eval(
        capsys, "--patches", patch_file, "--model", "sift", "--json", out, "--quiet"
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert "sift (baseline, 128-D, patches 16x16)" in lines[0] and "non-interpolated" in lines[0]
    assert lines[2].split()[:3] == ["train", "80", "20"] and lines[3].split()[:3] == [
        "test",
        "40",
        "10",
    ]
    doc = json.loads(out.read_text())
    assert set(doc["splits"]) == {"train", "test"}
    assert (
        doc["descriptor"]["dim"] == 128 and doc["protocol"]["ap_definition"] == "non-interpolated"
    )
    train = doc["splits"]["train"]
    # Groups of shifted crops are easy: far above the chance level (~0.05).
    assert 0.5 < train["map"] <= 1.0 and train["num_queries"] == 80
    assert f"{100 * train['map']:.2f}" in lines[2]
    # The printed test row is the in-memory evaluation of the test split.
    patches, labels = ckn.files.load_patch_file(patch_file, split="test")
    ref = E.evaluate_descriptors(describe_baseline("sift", patches), labels)
    assert doc["splits"]["test"]["map"] == pytest.approx(ref["map"], abs=1e-12)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_eval_patches_model_dir_and_one_split(capsys, tmp_path, patch_file, model_dir):
    out = tmp_path / "ckn.json"
    code, stdout, err = _eval(
        capsys,
        "--patches",
        patch_file,
        "--model",
        model_dir,
        "--split",
        "all",
        "--json",
        out,
        "--batch-size",
        "16",
        "--quiet",
    )
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert list(doc["splits"]) == ["all"] and doc["splits"]["all"]["num_patches"] == 120
    assert doc["descriptor"]["kind"] == "ckn"
    code, stdout, err = _eval(
        capsys, "--patches", patch_file, "--model", "pixels", "--split", "test", "--quiet"
    )
    assert code == 0, err
    assert [ln.split()[0] for ln in stdout.splitlines()[2:]] == ["test"]


def test_eval_patches_file_without_split_and_singletons(capsys, tmp_path):
    patches, labels = _groups(6)
    labels[-1] = 99  # a group of one: said, not a query
    path = tmp_path / "nosplit.npz"
    np.savez(path, patches=patches, labels=labels)
    code, stdout, err = _eval(capsys, "--patches", path, "--model", "rootsift", "--quiet")
    assert code == 0, err
    assert stdout.splitlines()[2].split()[:5] == ["all", "24", "7", "23", "1"]
    assert "1 patches have no other patch of their group" in err


def test_eval_patches_bad_input(capsys, tmp_path, patch_file, model_dir):
    out = tmp_path / "r.json"
    patches, labels = _groups(2)
    nolab = tmp_path / "nolabels.npz"
    np.savez(nolab, patches=patches)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    small = tmp_path / "small.npz"
    np.savez(small, patches=patches[:, :4, :4], labels=labels)
    nan = tmp_path / "nan.npz"
    bad = patches.astype(np.float32)
    bad[0, 0, 0] = np.nan
    np.savez(nan, patches=bad, labels=labels)
    cases = [
        ((tmp_path / "missing.npz", "sift"), ("not found",)),
        ((corrupt, "sift"), ("corrupt.npz", "not a .npz file")),
        ((nolab, "sift"), ("labels",)),
        ((patch_file, tmp_path / "no_model"), ("model not found",)),
        ((small, model_dir), ("too small",)),
        ((nan, "pixels"), ("NaN",)),
    ]
    for (path, model), needles in cases:
        code, _, err = _eval(capsys, "--patches", path, "--model", model, "--json", out, "--quiet")
        _assert_one_line_error(code, err, "ckn eval-patches: error:", *needles)
        assert not out.exists()
    nosplit = tmp_path / "nosplit.npz"
    np.savez(nosplit, patches=patches, labels=labels)
    code, _, err = _eval(capsys, "--patches", nosplit, "--model", "sift", "--split", "test")
    _assert_one_line_error(code, err, "no 'split' array")
    # An unwritable destination (even for root: /proc takes no new files), before any work.
    code, _, err = _eval(
        capsys, "--patches", patch_file, "--model", "sift", "--json", "/proc/ckn-nodir/r.json"
    )
    _assert_one_line_error(code, err, "--json", "not writable")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
