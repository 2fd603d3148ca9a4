"""``ckn eval-images`` by value: the printed / JSON mAP equals the library's
(:func:`retrieval.image.evaluate`) on the same inputs, and both equal a direct NumPy computation
(descriptors pooled by hand from the backbone's map or VLAD-encoded by hand, then a plain AP
written here).

The images are 128 x 128 (a multiple of the 64 px bucket): no padding, so the backbone run on
each image alone gives the pipeline's maps (up to float32 rounding, tolerance 1e-5 on unit
vectors). mAP is compared to 1e-9: the scores of these random-weight networks have no near ties.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data

import ckn
from retrieval.cli.main import main
from retrieval.image import (
    GlobalConfig,
    PoolingDescription,
    VladDescription,
    build_describer,
    evaluate,
    list_images,
    load_backbone_spec,
    load_image_folder,
)
from retrieval.index import load_index
from retrieval.local import (
    LocalConfig,
    VladConfig,
    describe_images,
    encode_images,
    fit_vlad,
    local_features,
    make_local_describer,
    sample_patches,
)
from retrieval.nets import state_dict_shapes, write_state_dict

TOL = 1e-5
PHOTOS = ("astronaut", "coffee", "chelsea")


def numpy_map(vectors, labels, junk=None):
    """Mean non-interpolated AP, written out: every grouped image queries all the others by
    inner product, itself and its junk removed, ties broken against the relevant images.

    Returns (mAP, {query: AP})."""
    v = np.asarray(vectors, np.float64)
    s = v @ v.T
    aps = {}
    for q in np.flatnonzero(labels >= 0):
        others = [i for i in range(len(labels)) if i != q and i not in (junk or {}).get(q, ())]
        others = np.asarray(others)
        rel = labels[others] == labels[q]
        if not rel.any():
            continue
        order = np.lexsort((rel, -s[q, others]))  # by decreasing score, relevant last on ties
        ranks = np.flatnonzero(rel[order]) + 1
        aps[int(q)] = float(np.mean(np.arange(1, ranks.size + 1) / ranks))
    return float(np.mean(list(aps.values()))), aps


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 groups x 3 crops of 128 x 128 + a distractor; junk lists that change some APs."""
    root = tmp_path_factory.mktemp("values") / "eval"
    rng = np.random.default_rng(4)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        for i in range(3):
            y, x = (int(v) for v in rng.integers(0, 120, 2))
            s = int(rng.integers(200, 300))
            crop = np.ascontiguousarray(photo[y : y + s, x : x + s])
            _write(root / name / f"{i}.png", cv2.resize(crop, (128, 128)))
    _write(root / "rocket.png", cv2.resize(skimage.data.rocket(), (128, 128)))
    (root / "coffee" / "junk.txt").write_text("chelsea/0.png\nrocket.png\n")
    (root / "astronaut" / "junk.txt").write_text("coffee/0.png\n")
    return root


@pytest.fixture(scope="module")
def whiten_folder(tmp_path_factory):
    """Other images to fit a whitening on: 2 groups x 3 crops of two other photos."""
    root = tmp_path_factory.mktemp("values") / "whiten"
    rng = np.random.default_rng(5)
    for name in ("immunohistochemistry", "hubble_deep_field"):
        photo = getattr(skimage.data, name)()
        for i in range(3):
            y, x = (int(v) for v in rng.integers(0, 200, 2))
            crop = np.ascontiguousarray(photo[y : y + 250, x : x + 250])
            _write(root / name / f"{i}.png", cv2.resize(crop, (128, 128)))
    return root


@pytest.fixture(scope="module")
def vgg_spec(tmp_path_factory):
    """A VGG16 of widths / 16 with random (He) weights, as ``vgg16:FILE``."""
    rng = np.random.default_rng(11)
    state = {}
    for key, shape in state_dict_shapes("vgg16", 16).items():
        scale = np.sqrt(2.0 / np.prod(shape[1:])) if key.endswith(".weight") else 0.1
        state[key] = rng.normal(0, scale, shape).astype(np.float32)
    path = tmp_path_factory.mktemp("w") / "vgg16-tiny.pth"
    write_state_dict(path, state, format="legacy")
    return f"vgg16:{path}"


def _cli(capsys, *argv):
    rc = main(["eval-images", "--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out, err


def _rgb(path):
    return cv2.imread(str(path))[..., ::-1]


def gem_by_hand(net, paths):
    """GeM (p = 3, floor 1e-6) of each image's own map, L2-normalized, float64."""
    maps = [np.asarray(net.features(_rgb(p)[None]), np.float64)[0] for p in paths]
    v = np.stack([np.mean(np.maximum(m, 1e-6) ** 3, axis=(0, 1)) ** (1 / 3) for m in maps])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pca_whiten_by_hand(train, x, dim):
    """PCA-whitening from an SVD: the top ``dim`` directions, unit variance (1/n), then L2."""
    mean = train.mean(axis=0)
    _, sv, vt = np.linalg.svd(train - mean, full_matrices=False)
    y = (x - mean) @ vt[:dim].T / (sv[:dim] / np.sqrt(len(train)))
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def test_cli_global_map_equals_the_library_and_numpy(folder, vgg_spec, tmp_path, capsys):
    out = tmp_path / "gem.json"
    printed, _ = _cli(capsys, "--images", folder, "--global", "gem", "--backbone", vgg_spec,
                      "--scales", "1", "--json", out)  # fmt: skip
    doc = json.loads(out.read_text())
    net = load_backbone_spec(vgg_spec)
    gem = PoolingDescription(global_config=GlobalConfig(head="gem", scales=(1.0,)))
    lib = evaluate(build_describer(gem, backbone=net), folder)
    assert doc["map"] == pytest.approx(lib.result.mean_ap, abs=1e-12)
    assert f"mAP {100 * doc['map']:.2f}" in printed
    # By hand: GeM of each image's own map, then the AP above.
    coll = load_image_folder(folder)
    gem = gem_by_hand(net, coll.paths)
    np.testing.assert_allclose(lib.database, gem, atol=TOL)
    want, per_query = numpy_map(gem, coll.labels, coll.junk)
    assert coll.junk and doc["num_queries"] == len(per_query) == 9
    assert doc["map"] == pytest.approx(want, abs=1e-9)
    got = {e["image"]: e["ap"] for e in doc["per_query"]}
    assert got == pytest.approx({coll.names[q]: ap for q, ap in per_query.items()}, abs=1e-9)
    # The junk lists matter: without them some queries score otherwise.
    assert numpy_map(gem, coll.labels)[1] != per_query


def test_whiten_dim_reaches_eval_images_and_index_build(
    folder, whiten_folder, vgg_spec, tmp_path, capsys
):
    """``--whiten pca --whiten-dim 2``: the PCA-whitening fitted on the 6 other images' vectors
    keeps 2 directions (by hand, up to signs; the defaults are 5 and 3), in eval-images (mAP by
    the AP above) and in the vectors of ``ckn index build``."""
    net = load_backbone_spec(vgg_spec)
    coll = load_image_folder(folder)
    want = pca_whiten_by_hand(
        gem_by_hand(net, list_images(whiten_folder)), gem_by_hand(net, coll.paths), 2
    )
    g = ["--global", "gem", "--backbone", vgg_spec, "--scales", "1", "--whiten", "pca",
         "--whiten-images", whiten_folder, "--whiten-dim", "2"]  # fmt: skip
    out = tmp_path / "w.json"
    _cli(capsys, "--images", folder, *g, "--json", out)
    doc = json.loads(out.read_text())
    assert doc["global"]["dim"] == doc["whitening"]["dim"] == 2
    assert doc["map"] == pytest.approx(numpy_map(want, coll.labels, coll.junk)[0], abs=1e-9)
    index = tmp_path / "photos.index"
    assert main(["index", "build", "--images", str(folder), "--out", str(index), "--quiet",
                 *map(str, g)]) == 0, capsys.readouterr().err  # fmt: skip
    idx = load_index(index)
    rows = [idx.paths.index(str(p)) for p in coll.paths]
    assert idx.vectors.shape == (10, 2)
    np.testing.assert_allclose(np.abs(idx.vectors[rows]), np.abs(want), atol=TOL)


def numpy_vlad(x, centers):
    """VLAD by hand: nearest centre, summed residuals, signed square root, intra-L2, L2."""
    x, c = np.asarray(x, np.float64), np.asarray(centers, np.float64)
    a = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    v = np.zeros_like(c)
    np.add.at(v, a, x - c[a])
    v = np.sign(v) * np.sqrt(np.abs(v))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    v = v.ravel()
    return v / np.linalg.norm(v)


def test_cli_local_map_equals_the_library_and_numpy(folder, tmp_path, capsys):
    out = tmp_path / "sift.json"
    printed, _ = _cli(capsys, "--images", folder, "--local", "sift", "--k", "8",
                      "--max-regions", "80", "--json", out)  # fmt: skip
    doc = json.loads(out.read_text())
    coll = load_image_folder(folder)
    local = LocalConfig(max_regions=80)
    ev = evaluate(build_describer(VladDescription("sift", local, VladConfig(k=8))), folder)
    assert doc["map"] == pytest.approx(ev.result.mean_ap, abs=1e-12)
    assert f"mAP {100 * doc['map']:.2f}" in printed
    feats = describe_images(coll.paths, make_local_describer("sift"), config=local, progress=False)
    vlads = np.stack([numpy_vlad(f.descriptors, ev.describer.model.centers) for f in feats])
    np.testing.assert_allclose(ev.database, vlads, atol=TOL)
    want, per_query = numpy_map(vlads, coll.labels, coll.junk)
    assert doc["num_queries"] == len(per_query) == 9
    assert doc["map"] == pytest.approx(want, abs=1e-9)
    assert numpy_map(vlads, coll.labels)[1] != per_query


def test_ckn_local_descriptors_equal_describe_on_the_cut_patches(
    folder, two_layer_models, tmp_path, capsys
):
    """``--local MODEL_DIR`` (an RGB model) describes the patches cut at its regions exactly as
    ``ckn.describe`` does, and the command's mAP is the one of those descriptors."""
    model = two_layer_models["raw"][0]
    assert model.config.channels == "rgb"
    model_dir = ckn.save(model, tmp_path / "raw")
    describer = make_local_describer(str(model_dir))
    config = LocalConfig(max_regions=40)
    coll = load_image_folder(folder)
    feats = []
    for path in coll.paths:
        img = _rgb(path)
        f = local_features(img, describer, config=config)
        r = f.regions
        patches = sample_patches(img, r.x, r.y, r.size, r.angle, size=model.config.patch_size)
        assert patches.shape == (len(r.x), 24, 24, 3)
        np.testing.assert_allclose(f.descriptors, ckn.describe(model, patches), atol=TOL)
        feats.append(f)
    out = tmp_path / "ckn.json"
    _cli(capsys, "--images", folder, "--local", model_dir, "--k", "4", "--max-regions", "40",
         "--json", out)  # fmt: skip
    doc = json.loads(out.read_text())
    # The mAP of those descriptors: VLAD (k = 4) fitted on them, encoded, the AP written out.
    vlads = encode_images(fit_vlad(feats, VladConfig(k=4)), feats)
    assert doc["local"] == str(model_dir) and doc["local_dim"] == describer.dim == 128
    assert doc["map"] == pytest.approx(numpy_map(vlads, coll.labels, coll.junk)[0], abs=1e-9)
