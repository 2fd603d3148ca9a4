"""The spatial-verification scorer in the pipeline, against a direct reference.

Reference: the global ranking of a describer whose vectors are fixed random numbers per image
(so that the global order is wrong), the shortlist's inlier counts from the public pair
functions (``local_features`` + ``verify_pair``), and the re-ranking written out by hand (the
verified images by decreasing inliers, ties and the others in the global order); mAP by a
plain AP loop.
"""

import dataclasses
import json
import pickle
import warnings
import zlib

import cv2
import numpy as np
import pytest

from ckn import InputError
from retrieval.cli.main import main
from retrieval.image import (
    BaseDescriber,
    Block,
    Described,
    PostConfig,
    Ranked,
    ScoringContext,
    SpatialVerification,
    VerifyConfig,
    VladDescription,
    build_describer,
    evaluate,
    read_image_any,
    verified_scores,
)
from retrieval.local import (
    LocalConfig,
    VladConfig,
    local_features,
    make_local_describer,
    verify_pair,
)
from retrieval.patches import default_photos

PHOTOS = ["astronaut", "coffee", "chelsea", "stereo_motorcycle"]
DISTRACTORS = ["immunohistochemistry", "hubble_deep_field"]
SIDE = 240


def _view(img, rng):
    """A random homography of ``img`` (rotation, scale, perspective), same size."""
    h, w = img.shape[:2]
    a = np.deg2rad(rng.uniform(-20, 20))
    sc = rng.uniform(0.8, 1.15)
    c, s = sc * np.cos(a), sc * np.sin(a)
    m = np.array([[c, -s, 0], [s, c, 0], [rng.uniform(-4e-4, 4e-4), rng.uniform(-4e-4, 4e-4), 1]])
    centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]])
    m = centre @ m @ np.linalg.inv(centre)
    return cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    rng = np.random.default_rng(0)
    photos = dict(default_photos(PHOTOS + DISTRACTORS))
    for name in PHOTOS + DISTRACTORS:
        img = photos[name]
        img = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
        img = cv2.resize(img, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        if name in DISTRACTORS:
            cv2.imwrite(str(root / f"{name}.png"), img[..., ::-1])
            continue
        (root / name).mkdir()
        for j in range(3):
            cv2.imwrite(str(root / name / f"{j}.png"), _view(img, rng)[..., ::-1])
    return root


def _key(image) -> int:
    if isinstance(image, np.ndarray):
        return zlib.crc32(np.ascontiguousarray(image).tobytes())
    return zlib.crc32(f"{image.parent.name}/{image.name}".encode())


class _Random(BaseDescriber):
    """Fixed random unit vectors per image: a global ranking that verification must fix."""

    config, min_size, label = None, 16, "random"

    def describe(self, images, *, progress=False, keep=frozenset()):
        v = np.stack([np.random.default_rng(_key(im)).normal(size=8) for im in images])
        return Described((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), {}, {})


def _reference(qf, q_vec, db_feats, db_vecs, config, self_id=None):
    """The verified ranking of one query, by hand."""
    s = db_vecs.astype(np.float64) @ q_vec.astype(np.float64)
    if self_id is not None:
        s[self_id] = -np.inf
    order = [int(j) for j in np.argsort(-s, kind="stable") if np.isfinite(s[j])]
    short = order[: config.top]
    inl = {
        j: verify_pair(qf, db_feats[j], ratio=config.ratio, model=config.model,
                       threshold=config.threshold, seed=config.seed).inliers
        for j in short
    }  # fmt: skip
    verified = sorted((j for j in short if inl[j] >= config.min_inliers),
                      key=lambda j: (-inl[j], short.index(j)))  # fmt: skip
    return verified + [j for j in order if j not in verified], inl


def _ap(ranking, relevant):
    hits, total = 0, 0.0
    for r, j in enumerate(ranking, 1):
        if j in relevant:
            hits += 1
            total += hits / r
    return total / len(relevant)


@pytest.mark.parametrize("descriptor,model", [("rootsift", "affine"), ("sift", "homography")])
def test_groups_protocol_equals_the_direct_reference(folder, descriptor, model):
    config = VerifyConfig(descriptor, top=13, model=model, regions=300, min_inliers=8)
    ev = evaluate(_Random(), folder, scorers=(SpatialVerification(config),), depth=100)
    plain = evaluate(_Random(), folder, depth=100)
    d = make_local_describer(descriptor)
    local = LocalConfig(max_regions=300, contrast_threshold=config.contrast_threshold)
    feats = [local_features(read_image_any(p), d, config=local) for p in ev.paths]
    vecs = _Random().describe(ev.paths).vectors
    aps = []
    for q in range(len(ev.paths)):
        ref, inl = _reference(feats[q], vecs[q], feats, vecs, config, self_id=q)
        np.testing.assert_array_equal(ev.ranking[q], ref[: ev.ranking.shape[1]])
        if ev.labels[q] >= 0:
            aps.append(_ap(ref, set(np.flatnonzero(ev.labels == ev.labels[q])) - {q}))
    assert ev.result.mean_ap == pytest.approx(np.mean(aps), abs=1e-12)
    # Verification is what lifts the random global ranking (most same-photo views verified).
    assert ev.result.mean_ap > 0.9 > plain.result.mean_ap + 0.3
    rec = ev.info["verification"]
    assert rec["config"]["descriptor"] == descriptor and rec["config"]["top"] == 13
    assert rec["queries"] == 14 and rec["pairs"] == 14 * 13
    assert rec["cache"]["misses"] == len(ev.paths)  # each database image described once
    assert rec["seconds_per_query"] > 0


def test_revisited_queries_are_verified_as_crops_and_qe_follows(folder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    names = []
    for g in PHOTOS:
        for j in range(3):
            names.append(f"{g}{j}")
            cv2.imwrite(str(flat / f"{names[-1]}.jpg"), cv2.imread(str(folder / g / f"{j}.png")))
    box = [40, 50, 190, 200]  # about 60 % of the sides
    gnd = {
        "imlist": names,
        "qimlist": ["astronaut0", "stereo_motorcycle1"],
        "gnd": [
            {"bbx": box, "easy": [1, 2], "hard": [], "junk": [0]},
            {"bbx": box, "easy": [9, 11], "hard": [], "junk": [10]},
        ],
    }
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    config = VerifyConfig("rootsift", top=12, regions=300, min_inliers=8)
    ev = evaluate(_Random(), flat, scorers=(SpatialVerification(config),),
                  gnd=tmp_path / "gnd.pkl", depth=12)  # fmt: skip
    d = make_local_describer("rootsift")
    local = LocalConfig(max_regions=300, contrast_threshold=config.contrast_threshold)
    feats = [local_features(read_image_any(p), d, config=local) for p in ev.paths]
    vecs = _Random().describe(ev.paths).vectors
    for q, name in enumerate(gnd["qimlist"]):
        crop = np.ascontiguousarray(read_image_any(flat / f"{name}.jpg")[50:200, 40:190])
        qv = _Random().describe([crop]).vectors[0]
        ref, _ = _reference(local_features(crop, d, config=local), qv, feats, vecs, config)
        np.testing.assert_array_equal(ev.ranking[q], ref)
    assert ev.revisited["medium"]["map"] == 1.0
    # QE after verification: the expanded query's shortlist verified again, no pair twice.
    sv = SpatialVerification(config)
    qe = evaluate(_Random(), flat, PostConfig(qe=2), scorers=(sv,), gnd=tmp_path / "gnd.pkl")
    assert 2 * 12 == qe.info["verification"]["pairs"] == sv.pairs <= 2 * 12
    assert qe.revisited["medium"]["map"] == 1.0


def test_verified_scores_order():
    s = np.array([0.9, 0.8, 0.7, 0.6, -np.inf, 0.5])
    short = np.array([0, 1, 2, 3])
    out = verified_scores(s, short, [3, 20, 20, 2], min_inliers=5)
    assert list(np.argsort(-out, kind="stable")) == [1, 2, 0, 3, 5, 4]
    np.testing.assert_array_equal(verified_scores(s, short, [0, 1, 2, 3], 5), s)


def test_unreadable_shortlisted_image_keeps_its_rank_with_one_warning(folder, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [folder / "astronaut" / "1.png", bad, folder / "coffee" / "0.png",
             folder / "astronaut" / "2.png"]  # fmt: skip
    images = np.empty(4, object)
    images[:] = paths
    query = np.empty(1, object)
    query[0] = folder / "astronaut" / "0.png"
    sv = SpatialVerification(VerifyConfig("sift", top=4, regions=300, min_inliers=8))
    db = Described(np.zeros((4, 2), np.float32), {"images": images}, {})
    ctx = ScoringContext(None, db, PostConfig(), {})
    scores = np.array([[0.1, 0.9, 0.8, 0.05]])
    block = Block(np.array([0]), None, {"images": query})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sv.rescore(block, Ranked({"query": np.zeros((1, 2))}, db.vectors, scores), ctx)
        sv.rescore(block, Ranked({"query": np.zeros((1, 2))}, db.vectors, scores), ctx)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "bad.jpg" in msgs[0] and "keeps its global rank" in msgs[0]
    # The two astronaut views verified first; the unreadable image and coffee keep their order.
    assert list(np.argsort(-out.scores[0], kind="stable")) == [0, 3, 1, 2]
    assert ctx.record["verification"]["unreadable"] == [str(bad)]


def test_cached_database_features_do_not_read_the_image_again(folder, tmp_path):
    """A database image whose features are cached is not read again (reading 100 images per
    query cost more than matching them): deleted after the first query, it is still verified,
    with the same inliers and no warning."""
    paths = []
    for k, src in enumerate([folder / "astronaut" / "1.png", folder / "coffee" / "0.png"]):
        paths.append(tmp_path / f"{k}.png")
        paths[-1].write_bytes(src.read_bytes())
    images = np.empty(2, object)
    images[:] = paths
    sv = SpatialVerification(VerifyConfig("sift", top=2, regions=300, min_inliers=8))
    db = Described(np.zeros((2, 2), np.float32), {"images": images}, {})
    ctx = ScoringContext(None, db, PostConfig(), {})
    scores = np.array([[0.1, 0.9]])
    outs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for qid, view in enumerate(["0.png", "2.png"]):
            query = np.empty(1, object)
            query[0] = folder / "astronaut" / view
            block = Block(np.array([qid]), None, {"images": query})
            ranked = Ranked({"query": np.zeros((1, 2))}, db.vectors, scores)
            outs.append(sv.rescore(block, ranked, ctx).scores[0])
            paths[0].unlink(missing_ok=True)
    assert not caught
    assert sv.cache.misses == 2 and sv.cache.hits == 2
    assert outs[1][0] > 1.9 and list(np.argsort(-outs[1])) == [0, 1]  # astronaut verified


def test_refusals(folder, tmp_path):
    with pytest.raises(InputError, match="top 15 is larger than the database"):
        evaluate(_Random(), folder, scorers=(SpatialVerification(VerifyConfig(top=15)),))
    not_model = tmp_path / "empty"
    not_model.mkdir()
    with pytest.raises(InputError):
        SpatialVerification(VerifyConfig(str(not_model)))
    with pytest.raises(InputError, match="ratio must be <= 1"):
        VerifyConfig(ratio=1.5)
    with pytest.raises(InputError, match="top must be"):
        VerifyConfig(top=0)
    with pytest.raises(InputError, match="model must be one of"):
        VerifyConfig(model="similarity")
    flat = np.full((SIDE, SIDE, 3), 128, np.uint8)
    sv = SpatialVerification(VerifyConfig("sift", top=2))
    images = np.empty(2, object)
    images[:] = [folder / "astronaut" / "1.png", folder / "coffee" / "0.png"]
    query = np.empty(1, object)
    query[0] = flat
    db = Described(np.zeros((2, 2), np.float32), {"images": images}, {})
    with pytest.raises(InputError, match="no interest regions"):
        sv.rescore(Block(np.array([0]), None, {"images": query}),
                   Ranked({"query": np.zeros((1, 2))}, db.vectors, np.zeros((1, 2))),
                   ScoringContext(None, db, PostConfig(), {}))  # fmt: skip


# --------------------------------------------------------------------------- command line


def _cli(capsys, *argv):
    rc = main(["eval-images", *map(str, argv), "--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_verify_after_vlad_equals_the_library(folder, tmp_path, capsys):
    out = tmp_path / "v.json"
    rc, _, err = _cli(capsys, "--images", folder, "--local", "sift", "--k", "4", "--pca", "0",
                      "--max-regions", "100", "--verify", "sift", "--verify-top", "13",
                      "--min-inliers", "8", "--json", out)  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out.read_text())
    config = VerifyConfig("sift", top=13, min_inliers=8)
    vlad = VladDescription("sift", local_config=LocalConfig(max_regions=100),
                           vlad=VladConfig(k=4, pca_dim=0))  # fmt: skip
    ev = evaluate(build_describer(vlad), folder, scorers=(SpatialVerification(config),))
    assert doc["map"] == ev.result.mean_ap
    assert doc["verification"]["config"] == dataclasses.asdict(config)
    assert doc["verification"]["pairs"] == 14 * 13 and doc["verification"]["seconds_per_query"] > 0


def test_cli_refusals_are_one_line_exit_2_and_write_nothing(folder, tmp_path, capsys):
    out = tmp_path / "never.json"
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    h = ["--images", folder, "--json", out]
    cases = [
        ([*h, "--global", "gem", "--verify-top", "5"], "--verify-top needs --verify"),
        ([*h, "--global", "gem", "--verify", "sift", "--verify-top", "0"], "--verify-top must be"),
        ([*h, "--global", "gem", "--verify", "sift", "--verify-top", "15"],
         "--verify-top 15 is larger than the database (14 images)"),
        ([*h, "--global", "gem", "--verify", empty], "not_a_model"),
        ([*h, "--local", "sift", "--verify", "sift", "--verify-top", "5", "--search", "ivfpq"],
         "does not combine"),
    ]  # fmt: skip
    for argv, msg in cases:
        rc, _, err = _cli(capsys, *argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (argv, err)
        assert not out.exists()
