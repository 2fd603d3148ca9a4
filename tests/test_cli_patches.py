"""``ckn patches``: outputs, statistics, every bad-input path (exit 2, one line, nothing left)."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data

from ckn.files import load_patch_file
from retrieval import patches as P
from retrieval.cli.main import main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One cache folder per test session, shared by the test files that build the quick default.
    monkeypatch.setenv("CKN_CACHE", str(tmp_path_factory.getbasetemp() / "ckn_cache"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(d / "astro.png"), cv2.resize(skimage.data.astronaut(), (256, 256))[..., ::-1])
    cv2.imwrite(str(d / "camera.jpg"), skimage.data.camera()[::2, ::2])
    return d


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """One Oxford-layout sequence: img1, img2 and H1to2p (a 20 degree rotation)."""
    d = tmp_path_factory.mktemp("seqs") / "cam"
    d.mkdir()
    img = skimage.data.camera()[::2, ::2].copy()
    m = cv2.getRotationMatrix2D((127.5, 127.5), 20.0, 0.9)
    cv2.imwrite(str(d / "img1.pgm"), img)
    cv2.imwrite(
        str(d / "img2.pgm"), cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REFLECT_101)
    )
    np.savetxt(d / "H1to2p", np.vstack([m, [0, 0, 1]]))
    return d.parent


def test_default_quick_writes_everything(tmp_path, capsys):
    out = tmp_path / "q.npz"
    rc = main(
        [
            "patches",
            "--default",
            "--quick",
            "--out",
            str(out),
            "--contact-sheet",
            str(tmp_path / "q.png"),
            "--tfds",
            str(tmp_path / "tfds"),
            "--stats-json",
            str(tmp_path / "q.json"),
            "--quiet",
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "groups:" in stdout and "intra-group" in stdout and "astronaut" in stdout
    patches, labels = load_patch_file(out, split="train")
    assert patches.shape[1:] == (51, 51) and labels.shape == (patches.shape[0],)
    assert cv2.imread(str(tmp_path / "q.png")) is not None
    record = json.loads((tmp_path / "q.json").read_text())
    assert record["metadata"]["command"].startswith("ckn patches --default --quick")
    meta = record["metadata"]
    assert meta["cpu_count"] >= 1 and len(meta["commit"]) == 40 and isinstance(meta["dirty"], bool)
    assert meta["load_average_end"] is not None and meta["wall_seconds"] > 0
    ps = P.load_patchset(out)
    assert record["results"]["patches"] == len(ps) and record["results"]["groups"] == len(
        np.unique(ps.labels)
    )
    from retrieval.patches import tfds_to_patchset

    back = tfds_to_patchset(tmp_path / "tfds")
    for k in P.PatchSet.ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(ps, k))


def test_same_seed_same_file(tmp_path, photos, capsys):
    args = ["patches", "--photos", str(photos), "--views", "3", "--size", "32", "--quiet"]
    assert main(args + ["--seed", "5", "--out", str(tmp_path / "a.npz")]) == 0
    assert main(args + ["--seed", "5", "--out", str(tmp_path / "b.npz")]) == 0
    assert main(args + ["--seed", "6", "--out", str(tmp_path / "c.npz")]) == 0
    a, b, c = (P.load_patchset(tmp_path / f"{n}.npz") for n in "abc")
    assert a.patches.shape[1:] == (32, 32)
    for k in P.PatchSet.ARRAYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.patches.shape != c.patches.shape or not np.array_equal(a.patches, c.patches)
    assert set(a.scene_names) == {"astro", "camera"} and set(a.split) == {0, 1}


def test_sequences_and_skipped_item_warning(tmp_path, sequence, capsys):
    root = tmp_path / "root"
    root.mkdir()
    (root / "cam").symlink_to(sequence / "cam", target_is_directory=True)
    flat = root / "flat"
    flat.mkdir()
    for k in (1, 2):
        cv2.imwrite(str(flat / f"img{k}.png"), np.full((100, 100), 77, np.uint8))
    np.savetxt(flat / "H1to2p", np.eye(3))
    rc = main(["patches", "--sequences", str(root), "--out", str(tmp_path / "s.npz"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0
    assert err == [
        "ckn patches: warning: sequence flat: no matching regions, skipped (SkippedItemWarning)",
        "ckn patches: warning: the test split is empty (1 scene: cam); a split by scene needs 2 "
        "or more (EmptySplitWarning)",
    ]
    assert list(P.load_patchset(tmp_path / "s.npz").scene_names) == ["cam"]


def _bad_inputs(tmp, photos, sequence):
    """(name, argv without --out, expected text) for every bad input."""

    def seq_with(name, fn):
        d = tmp / name / "cam"
        d.mkdir(parents=True)
        for f in (sequence / "cam").iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        fn(d)
        return d.parent

    empty = tmp / "empty"
    empty.mkdir()
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "x.png").write_bytes(b"\x89PNG not really")
    flat = tmp / "flat" / "f"
    flat.mkdir(parents=True)
    for k in (1, 2):
        cv2.imwrite(str(flat / f"img{k}.png"), np.full((100, 100), 77, np.uint8))
    np.savetxt(flat / "H1to2p", np.eye(3))
    return [
        ("missing folder", ["--sequences", str(tmp / "nope")], "not found"),
        ("no sequences", ["--sequences", str(empty)], "no image sequences"),
        (
            "missing image",
            ["--sequences", str(seq_with("mi", lambda d: (d / "img2.pgm").unlink()))],
            "image 2 missing",
        ),
        (
            "unreadable image",
            ["--sequences", str(seq_with("ui", lambda d: (d / "img2.pgm").write_bytes(b"P5 x")))],
            "cannot read image",
        ),
        (
            "unparsable homography",
            ["--sequences", str(seq_with("uh", lambda d: (d / "H1to2p").write_text("1 2\nx")))],
            "cannot parse homography",
        ),
        (
            "singular homography",
            [
                "--sequences",
                str(seq_with("sh", lambda d: (d / "H1to2p").write_text("1 2 3\n2 4 6\n0 0 1\n"))),
            ],
            "singular",
        ),
        ("no matches", ["--sequences", str(flat.parent)], "no groups of matching regions"),
        ("no images", ["--photos", str(empty)], "no images"),
        ("only unreadable images", ["--photos", str(corrupt)], "no readable image"),
        ("stereo without disparity", ["--stereo", str(photos)], "no stereo pairs"),
        (
            "quick with photos",
            ["--photos", str(photos), "--quick"],
            "--quick applies to --default only",
        ),
        ("views < 2", ["--photos", str(photos), "--views", "1"], "--views must be >= 2"),
        ("views with sequences", ["--sequences", str(sequence), "--views", "4"], "--views applies"),
        ("size < 8", ["--default", "--size", "4"], "--size must be >= 8"),
        (
            "sheet not png",
            ["--default", "--contact-sheet", str(tmp / "s.jpg")],
            "--contact-sheet must be a .png",
        ),
        (
            "tfds is a file",
            ["--default", "--tfds", str(photos / "astro.png")],
            "--tfds must be a folder",
        ),
    ]


def test_every_bad_input_exits_2_with_one_line_and_no_output(tmp_path, photos, sequence, capsys):
    for name, argv, text in _bad_inputs(tmp_path, photos, sequence):
        out = tmp_path / f"{name.replace(' ', '_')}.npz"
        before = sorted(p.name for p in tmp_path.iterdir())
        rc = main(["patches", *argv, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "warning:" not in line]
        assert rc == 2, name
        assert (
            len(lines) == 1 and lines[0].startswith("ckn patches: error: ") and text in lines[0]
        ), (name, err)
        assert "Traceback" not in err
        # Nothing written, no temporary file.
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--out", "x.npy"], "--out must be a .npz"),
        (["--out", "/proc/ckn-nonexistent-folder/x.npz"], "is not writable"),
        (["--out", "x.npz", "--stats-json", "/proc/ckn-no/s.json"], "--stats-json"),
        (["--out", "x.npz", "--contact-sheet", "/proc/x.png"], "--contact-sheet"),
        (["--out", "x.npz", "--tfds", "/proc/ckn-no/tfds"], "--tfds"),
    ],
)
def test_bad_output_paths(argv, text, capsys):
    assert main(["patches", "--default", "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


def test_real_entry_point_exit_code_and_no_traceback(tmp_path):
    out = tmp_path / "x.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrieval.cli",
            "patches",
            "--photos",
            str(tmp_path / "nope"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ckn patches: error: photos folder not found: {tmp_path / 'nope'}"
    ]
    assert not out.exists()


def test_argparse_requires_exactly_one_source(capsys):
    assert main(["patches", "--default", "--photos", "x", "--out", "x.npz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("ckn patches: error: ")
        and "not allowed with argument" in err[0]
    )
