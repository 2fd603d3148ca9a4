"""``ckn index`` with a trained CKN as the backbone (``--backbone ckn:MODEL_DIR``).

Model: ckn-tiny trained without labels on 16-px patches of scikit-image's camera (the session's
``tiny_model``), saved to a folder. Images: 128 px crops of four scikit-image photos, two crops per
photo (folder ``a``, built), the same crops mirrored (folder ``b``, added). Global GeM at one scale.
"""

import json

import cv2
import numpy as np
import pytest
from test_cli import _assert_one_line_error, _run

import ckn
from retrieval import index as S
from retrieval.image import GlobalConfig, extract_global
from retrieval.nets import load_backbone

#: The index's exact search multiplies float32 vectors; the direct scores are float64 products of
#: the same float32 vectors: they agree to float32 rounding of a sum of 8 terms.
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    return ckn.save(tiny_model[0], tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """ROOT/a (8 images), ROOT/b (the same 8 mirrored), ROOT/q (a's p1_0 moved, other contrast)."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    sources = [
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.chelsea(),
        np.dstack([skimage.data.camera()] * 3),
    ]
    for name in ("a", "b", "q"):
        (root / name).mkdir()
    for j, photo in enumerate(sources):
        for off in (0, 60):
            im = cv2.resize(photo[off : off + 300, off : off + 300], (128, 128),
                            interpolation=cv2.INTER_AREA)  # fmt: skip
            cv2.imwrite(str(root / "a" / f"p{j}_{off}.png"), im[..., ::-1])
            cv2.imwrite(
                str(root / "b" / f"p{j}_{off}.png"), np.ascontiguousarray(im[:, ::-1, ::-1])
            )
            if (j, off) == (1, 0):  # the crop shifted by 12 px, contrast 0.7, brightness + 30
                q = cv2.resize(photo[12:312, 12:312], (128, 128), interpolation=cv2.INTER_AREA)
                q = np.clip(0.7 * q.astype(np.float64) + 30, 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / "q" / "p1_0_moved.png"), q[..., ::-1])
    return root


def _index(capsys, *argv):
    return _run(capsys, "index", *[str(a) for a in argv])


def _query(capsys, index, image, tmp_path, *extra):
    js = tmp_path / "q.json"
    js.unlink(missing_ok=True)
    code, stdout, err = _index(
        capsys, "query", "--index", index, "--image", image, "--top", "16", "--json", js, *extra
    )
    assert code == 0, err
    return stdout, json.loads(js.read_text())["results"]


def test_cli_index_with_a_ckn_backbone(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "ckn.index"
    backbone = f"ckn:{model_dir}"
    code, stdout, err = _index(
        capsys, "build", "--images", photos / "a", "--out", out, "--global", "gem",
        "--backbone", backbone, "--scales", "1", "--whiten", "none", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert f"indexed 8 images of {photos / 'a'}: global gem of {backbone}" in stdout
    assert "8-D, not whitened, exact search" in stdout  # ckn-tiny: 8 channels
    code, stdout, err = _index(capsys, "add", "--index", out, "--images", photos / "b", "--quiet")
    assert code == 0, err
    assert "16 in the index" in stdout
    code, stdout, err = _index(capsys, "info", "--index", out)
    assert code == 0 and f"backbone weights: {model_dir}" in stdout

    # The same vectors and scores as extract_global with the same backbone, directly.
    net = load_backbone("ckn", weights=model_dir)
    files = [photos / d / f"p{j}_{off}.png" for d in "ab" for j in range(4) for off in (0, 60)]
    direct = extract_global(net, [str(f) for f in files], GlobalConfig(head="gem", scales=(1.0,)))
    idx = S.load_index(out)
    assert [p.split("/")[-2:] for p in idx.paths] == [[f.parent.name, f.name] for f in files]
    np.testing.assert_allclose(idx.vectors, direct, rtol=0, atol=1e-6)
    # An indexed (added) image finds itself first; a moved, re-contrasted crop of a's p1_0 (not
    # indexed) finds that crop and its mirror first (ckn-tiny's 8-D GeM: every score is above
    # 0.95; these two lead the next by 2e-3, far above float rounding).
    for image, first in (
        (photos / "b" / "p2_0.png", {12}),
        (photos / "q" / "p1_0_moved.png", {2, 10}),
    ):
        stdout, results = _query(capsys, out, image, tmp_path, "--global", "gem",
                                 "--backbone", backbone)  # fmt: skip
        ids = [r["id"] for r in results]
        assert set(ids[: len(first)]) == first and len(ids) == 16
        assert stdout.splitlines()[1].split()[0] == "1" and results[0]["path"] in stdout
        assert results[0]["path"].endswith("/".join(files[ids[0]].parts[-2:]))
        (q,) = extract_global(net, [str(image)], GlobalConfig(head="gem", scales=(1.0,)))
        want = direct.astype(np.float64) @ q.astype(np.float64)
        np.testing.assert_allclose(
            [r["score"] for r in results], want[ids], rtol=0, atol=SCORE_ATOL
        )
        assert ids == np.argsort(-want, kind="stable").tolist()
    assert results[0]["score"] < 1 - 1e-4  # the moved crop is not the indexed image
    assert _query(capsys, out, photos / "b" / "p2_0.png", tmp_path)[1][0]["score"] == (
        pytest.approx(1.0, abs=SCORE_ATOL)
    )


def test_cli_index_ckn_refusals(tiny_model, model_dir, photos, tmp_path, capsys):
    out = tmp_path / "ckn.index"
    build = ["build", "--images", photos / "a", "--out", out, "--global", "gem",
             "--backbone", f"ckn:{model_dir}", "--scales", "1", "--quiet"]  # fmt: skip
    assert _index(capsys, *build)[0] == 0
    # The index knows a CKN backbone by the SHA-256 of its folder's files: the same model saved
    # again elsewhere is the same backbone; saved with other training notes it is another one.
    other = ckn.save(tiny_model[0], tmp_path / "other")
    changed = ckn.save(tiny_model[0], tmp_path / "changed", training={"note": "other notes"})
    image = photos / "a" / "p0_0.png"
    for extra, needle in (
        (
            ["--backbone", "efficientnet-lite0"],
            "built with --backbone ckn, not --backbone efficientnet-lite0",
        ),
        (["--backbone", f"ckn:{changed}"], f"{changed} holds other weights"),
        (["--global", "mac"], "built with --global gem, not --global mac"),
        (["--max-side", "512"], "--max-side 1024, not --max-side 512"),
        (["--scales", "1,0.5"], "--scales 1, not --scales 1,0.5"),
    ):
        code, _, err = _index(capsys, "query", "--index", out, "--image", image, *extra)
        _assert_one_line_error(code, err, needle)
    assert _index(capsys, "query", "--index", out, "--image", image,
                  "--backbone", f"ckn:{other}")[0] == 0  # fmt: skip
    # A CKN has no classifier, so no class activation maps: `ckn index build --global cam` (CAM
    # OfA) with a CKN backbone is refused in one line, exit 2, and nothing is written.
    # (--global codes works with a CKN: the average of its map at 224 px.)
    bad = tmp_path / "cam.index"
    code, _, err = _index(capsys, *build[:4], bad, "--global", "cam", *build[7:])
    _assert_one_line_error(code, err, "has no classifier")
    assert not bad.exists()
