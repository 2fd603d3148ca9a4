"""Image retrieval: evaluation on hand-made rankings, folders, bad input, CLI.

Exact values where the result is a ratio of small integers (mAP of a
hand-made ranking: fractions, compared to 1e-12).
"""

import dataclasses
import json
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_eval_images_values import numpy_map, numpy_vlad  # the NumPy references

from ckn import InputError
from retrieval.cli.main import main
from retrieval.image import (
    VladDescriber,
    VladDescription,
    build_describer,
    evaluate,
    load_image_folder,
)
from retrieval.index import make_index
from retrieval.local import (
    LocalConfig,
    LocalFeatures,
    Regions,
    VladConfig,
    describe_images,
    encode_images,
    fit_vlad,
    local_features,
    make_local_describer,
    window_subsets,
)
from retrieval.metrics import evaluate_rankings, evaluate_scores, image_retrieval_map

OXFORD = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford_affine"

# --------------------------------------------------------------------------- evaluation

# ids 0..6; group 0 = {0, 1, 2}, group 1 = {3, 4}, 5 a distractor, 6 alone in group 2.
LABELS = np.array([0, 0, 0, 1, 1, -1, 2])
RANKINGS = np.array(
    [
        [0, 3, 1, 5, 2, 4, 6],  # q0 (self listed first, removed): relevant at ranks 2, 4
        [2, 0, 3, 4, 5, 6, 1],  # q1: ranks 1, 2
        [6, 5, 4, 3, 1, 0, 2],  # q2: ranks 5, 6
        [4, 0, 1, 2, 5, 6, 3],  # q3: rank 1
        [0, 1, 2, 3, 5, 6, 4],  # q4: rank 4
    ]
)
# Non-interpolated AP: q0 (1/2 + 2/4)/2, q1 1, q2 (1/5 + 2/6)/2, q3 1, q4 1/4.
EXPECTED = (Fraction(1, 2) + 1 + Fraction(4, 15) + 1 + Fraction(1, 4)) / 5  # 181/300
# Oxford trapezoid: q0 (1/4 + 5/12)/2 = 1/3, q1 1, q2 (1/10 + 4/15)/2 = 11/60, q3 1, q4 1/8.
EXPECTED_TRAP = (Fraction(1, 3) + 1 + Fraction(11, 60) + 1 + Fraction(1, 8)) / 5  # 317/600


def _scores_from_rankings(rankings, n):
    s = np.zeros((n, n))
    for q, row in enumerate(rankings):
        s[q, row] = -np.arange(len(row), dtype=np.float64)
    return s


def test_hand_made_ranking_exact_map():
    res = evaluate_rankings(RANKINGS, LABELS, query_ids=np.arange(5))
    assert res.num_queries == 5
    assert abs(res.mean_ap - float(EXPECTED)) < 1e-12
    assert abs(res.mean_ap_trapezoid - float(EXPECTED_TRAP)) < 1e-12
    assert res.per_query[2] == pytest.approx(4 / 15, abs=1e-12)


def test_hand_made_scores_exact_map_and_skips():
    scores = _scores_from_rankings(np.vstack([RANKINGS, [[0, 1, 2, 3, 4, 5, 6]] * 2]), 7)
    res = evaluate_scores(scores, LABELS, names=[f"im{i}" for i in range(7)])
    assert abs(res.mean_ap - float(EXPECTED)) < 1e-12
    assert abs(res.mean_ap_trapezoid - float(EXPECTED_TRAP)) < 1e-12
    # The distractor is no query; the lone image of group 2 is skipped and said.
    assert res.num_queries == 5
    assert len(res.skipped) == 1 and res.skipped[0].startswith("im6: the only image of its group")
    assert np.isnan(res.per_query[[5, 6]]).all()


def test_junk_removed_from_ranking():
    # Junk {3} for q0: its ranking becomes [1, 5, 2, 4, 6], relevant at 1 and 3.
    res = evaluate_rankings(RANKINGS[:1], LABELS, junk={0: [3]})
    assert res.per_query[0] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    res = evaluate_scores(_scores_from_rankings(RANKINGS, 7)[:, :], LABELS, junk={0: [3]})
    assert res.per_query[0] == pytest.approx(5 / 6, abs=1e-12)
    # All other members junk: skipped, said.
    res = evaluate_rankings(RANKINGS[3:4], LABELS, query_ids=[3], junk={3: [4]})
    assert res.num_queries == 0 and "junk" in res.skipped[0]


def test_truncated_ranking_counts_missing_relevant_as_not_retrieved():
    res = evaluate_rankings(np.array([[3, 1, 5]]), LABELS)  # relevant 2 never retrieved
    assert res.per_query[0] == pytest.approx((1 / 2) / 2, abs=1e-12)


def test_constant_vectors_score_lowest_not_one():
    # Ties are broken against the relevant images (CKN_NOTES section 6).
    v = np.ones((6, 4), np.float32) / 2
    res = image_retrieval_map(v, np.array([0, 0, 1, 1, -1, -1]))
    assert res.mean_ap == pytest.approx(1 / 5, abs=1e-12)


def test_evaluation_bad_input():
    with pytest.raises(InputError, match="labels must be"):
        evaluate_scores(np.zeros((3, 3)), np.zeros(4, np.int64))
    with pytest.raises(InputError, match="integer group ids"):
        evaluate_scores(np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(InputError, match="ids outside"):
        evaluate_rankings(np.array([[7]]), LABELS)
    with pytest.raises(InputError, match="junk image 9"):
        evaluate_scores(np.zeros((7, 7)), LABELS, junk={0: [9]})


# --------------------------------------------------------------------------- images and folders


def _photo_groups():
    """Three real photos, each with a rotated + scaled view: 3 groups of 2, plus a distractor."""
    import skimage.data

    out = {}
    for name in ("astronaut", "coffee", "brick"):
        img = np.asarray(getattr(skimage.data, name)())
        img = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
        m = cv2.getRotationMatrix2D((128, 128), 20, 0.9)
        out[name] = [img, cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REFLECT)]
    distractor = cv2.resize(np.asarray(skimage.data.camera()), (256, 256))
    return out, distractor


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    groups, distractor = _photo_groups()
    for name, imgs in groups.items():
        (root / name).mkdir()
        for i, img in enumerate(imgs):
            bgr = img[..., ::-1] if img.ndim == 3 else img
            cv2.imwrite(str(root / name / f"{i}.png"), np.ascontiguousarray(bgr))
    cv2.imwrite(str(root / "camera.png"), distractor)
    return root


def test_load_image_folder_groups_distractors_junk(image_dir, tmp_path):
    coll = load_image_folder(image_dir)
    assert coll.groups == ["astronaut", "brick", "coffee"]
    assert coll.names[-1] == "camera.png" and coll.labels[-1] == -1
    np.testing.assert_array_equal(coll.labels[:-1], [0, 0, 1, 1, 2, 2])
    assert coll.junk == {}
    # junk.txt: bare names of the group or paths relative to the root.
    import shutil

    root = tmp_path / "j"
    shutil.copytree(image_dir, root)
    (root / "brick" / "junk.txt").write_text("# comment\n1.png\ncamera.png\n")
    coll = load_image_folder(root)
    assert coll.junk == {2: {3, 6}, 3: {6}}
    (root / "brick" / "junk.txt").write_text("nothere.png\n")
    with pytest.raises(InputError, match="unknown image 'nothere.png'"):
        load_image_folder(root)


def test_folder_bad_input(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="holds no image"):
        load_image_folder(tmp_path)
    (tmp_path / "a").rmdir()
    with pytest.raises(InputError, match="no group subfolder"):
        load_image_folder(tmp_path)


def test_undecodable_and_regionless_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    d = make_local_describer("sift")
    with pytest.raises(InputError, match="cannot read image"):
        describe_images([bad], d, progress=False)
    flat = np.full((64, 64), 128, np.uint8)
    with pytest.raises(InputError, match="flat.png: no interest regions"):
        describe_images([flat], d, names=["flat.png"], progress=False)


def test_local_features_cap_and_shapes(image_dir):
    d = make_local_describer("rootsift")
    f = local_features(
        cv2.imread(str(image_dir / "astronaut" / "0.png")), d, config=LocalConfig(max_regions=40)
    )
    assert f.descriptors.shape == (40, 128) and f.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, rtol=1e-5)
    assert len(f.regions) == 40 and f.seconds_describe >= 0


def test_vlad_pipeline_end_to_end_and_dimension_mismatch(image_dir):
    coll = load_image_folder(image_dir)
    d = make_local_describer("sift")
    feats = describe_images(coll.paths, d, config=LocalConfig(max_regions=150), progress=False)
    # Without PCA (measured 0.889: brick's rotated view is the hard one).
    model = fit_vlad(feats, VladConfig(k=8, pca_dim=None))
    vectors = encode_images(model, feats, names=coll.names)
    res = image_retrieval_map(vectors, coll.labels, names=coll.names)
    assert vectors.shape == (7, 8 * 128)
    assert res.num_queries == 6 and res.mean_ap >= 0.8
    # The pipeline: the same figures (its describer fits the same model on the same images).
    local = LocalConfig(max_regions=150)
    vlad = build_describer(VladDescription("sift", local, VladConfig(k=8, pca_dim=None)))
    ev = evaluate(vlad, image_dir)
    np.testing.assert_array_equal(ev.database, vectors)
    assert ev.result.mean_ap == res.mean_ap and ev.info["train"]["on"] == "evaluated images"
    assert ev.ranking.shape == (7, 6) and not (ev.ranking == np.arange(7)[:, None]).any()
    # With PCA-whitening to 16-D (fitted on 7 images + 10 windows each).
    cfg = VladConfig(k=8, pca_dim=16, pca_windows=10)
    model = fit_vlad(feats, cfg)
    vectors = encode_images(model, feats, names=coll.names)
    res = image_retrieval_map(vectors, coll.labels, names=coll.names)
    assert vectors.shape == (7, 16) and model.info["pca_train_vectors"] > 16
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert res.num_queries == 6 and 0.0 < res.mean_ap <= 1.0
    # Descriptors of another dimension than the codebook's: named, clear.
    with pytest.raises(InputError, match="image 1: descriptors of shape \\(5, 64\\)"):
        encode_images(model, [feats[0], np.zeros((5, 64), np.float32)])
    # A PCA dimension the training vectors cannot span.
    with pytest.raises(InputError, match="span"):
        fit_vlad(feats[:1], VladConfig(k=8, pca_dim=64, pca_windows=3))
    # IVF-PQ (sized down for 7 vectors), scored on its rankings, and through the pipeline.
    top = make_index(vectors, "ivfpq").search(vectors, 7).ids
    res_pq = evaluate_rankings(top, coll.labels)
    assert res_pq.num_queries == 6 and 0.0 < res_pq.mean_ap <= 1.0
    ev_pq = evaluate(build_describer(VladDescription("sift", local, cfg)), image_dir,
                     search="ivfpq")  # fmt: skip
    assert ev_pq.result.mean_ap == res_pq.mean_ap


def _synthetic_features(groups, views, n=60, d=16, seed=0):
    """LocalFeatures of groups x views images: each group draws its descriptors from its own
    mixture of 3 of 12 Gaussian modes (noise 0.3), at random positions of a 200 x 300 image."""
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(12, d))
    feats, labels = [], []
    for g in range(groups):
        own = rng.choice(12, 3, replace=False)
        for _ in range(views):
            x = modes[rng.choice(own, n)] + 0.3 * rng.normal(size=(n, d))
            xy = rng.uniform(0, 1, (2, n)) * [[300], [200]]
            regions = Regions(xy[0], xy[1], np.full(n, 8.0), np.zeros(n), np.ones(n))
            feats.append(LocalFeatures(x.astype(np.float32), regions, (200, 300), 0.0, 0.0))
            labels.append(g)
    return feats, np.asarray(labels)


def _evaluate_features(folder, feats, labels, config, **kw):
    """The pipeline's VLAD branch on given local features: a groups folder of blank images
    (group g = folder g<g>), each described by its entry of ``feats`` (the describer's memo)."""
    for i, g in enumerate(labels):
        (folder / f"g{g}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"g{g}" / f"{i}.png"), np.zeros((32, 32), np.uint8))
    coll = load_image_folder(folder)
    np.testing.assert_array_equal(coll.labels, labels)
    memo = {os.fspath(p): f for p, f in zip(coll.paths, feats)}
    return evaluate(VladDescriber(VladDescription("sift", vlad=config), memo=memo), folder, **kw)


def test_pca_whitened_vlad_branch_equals_pca_whitening_by_hand(tmp_path):
    """The pipeline's VLAD with pca_dim: the VLADs of the images and of pca_windows random
    windows each, PCA-whitened by an SVD written here (variance 1/n), L2; mAP by the AP written
    out."""
    feats, labels = _synthetic_features(6, 2)
    cfg = VladConfig(k=4, pca_dim=8, pca_windows=3)
    ev = _evaluate_features(tmp_path / "a", feats, labels, cfg)
    raw = _evaluate_features(tmp_path / "b", feats, labels, dataclasses.replace(cfg, pca_dim=None))
    centers = raw.describer.model.centers
    np.testing.assert_array_equal(ev.describer.model.centers, centers)  # one codebook
    # The PCA training vectors: each image, then its windows (rng seeded as documented).
    rng = np.random.default_rng(cfg.seed)
    sets = []
    for f in feats:
        sets.append(f.descriptors)
        sets += [f.descriptors[i] for i in window_subsets(f, 3, rng, min_count=5)]
    train = np.stack([numpy_vlad(x, centers) for x in sets])
    assert ev.describer.model.info["pca_train_vectors"] == len(sets) > 12
    mean = train.mean(axis=0)
    _, sv, vt = np.linalg.svd(train - mean, full_matrices=False)
    std = sv[:8] / np.sqrt(len(sets))
    want = (raw.database.astype(np.float64) - mean) @ vt[:8].T / std
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    # Up to the sign of each direction.
    np.testing.assert_allclose(np.abs(ev.database), np.abs(want), atol=1e-5)
    np.testing.assert_allclose(ev.database @ ev.database.T, want @ want.T, atol=1e-5)
    assert ev.result.mean_ap == pytest.approx(numpy_map(want, labels)[0], abs=1e-9)
    assert ev.result.mean_ap != raw.result.mean_ap  # the whitening changed the ranking


def test_ivfpq_vlad_branch_is_exact_when_the_codes_are(tmp_path):
    """IVF-PQ with one list and 2**nbits = N training vectors: faiss copies the N residuals as
    the centroids of every sub-quantizer, so the codes are exact, and the pipeline's IVF-PQ
    search (scored on its ranked lists) must give the exact search's rankings and mAP."""
    pytest.importorskip("faiss")
    feats, labels = _synthetic_features(8, 2, seed=1)
    cfg = VladConfig(k=4)
    exact = _evaluate_features(tmp_path / "a", feats, labels, cfg)
    opts = {"nlist": 1, "m": 8, "nbits": 4}  # 16 images, 64-D VLADs: 8 codes of 8 dims
    pq = _evaluate_features(tmp_path / "b", feats, labels, cfg, search="ivfpq",
                            search_options=opts)  # fmt: skip
    assert exact.database.shape == (16, 64)
    np.testing.assert_array_equal(pq.ranking, exact.ranking)
    want, per_query = numpy_map(exact.database, labels)
    assert exact.result.mean_ap == pytest.approx(want, abs=1e-9)
    assert pq.result.mean_ap == pytest.approx(want, abs=1e-9)
    np.testing.assert_allclose(pq.result.per_query, list(per_query.values()), atol=1e-9)
    assert 0.3 < want < 1.0  # rankings with mistakes: a wrong list would show
    with pytest.raises(InputError, match="search_options are IVF-PQ sizes"):
        _evaluate_features(tmp_path / "c", feats, labels, cfg, search_options=opts)


def test_ckn_model_as_local_descriptor(tiny_model, image_dir):
    model, _ = tiny_model
    d = make_local_describer(model)
    assert d.patch_size == model.config.patch_size
    f = local_features(
        cv2.imread(str(image_dir / "coffee" / "0.png")), d, config=LocalConfig(max_regions=30)
    )
    assert f.descriptors.shape == (30, d.dim) and np.isfinite(f.descriptors).all()


def test_patches_batched_across_images_equal_image_by_image(tiny_model, image_dir):
    """describe_images gathers the patches of consecutive images into full describer calls
    (only the last call is short) and gives the descriptors of image-by-image
    local_features."""
    model, _ = tiny_model
    d = make_local_describer(model)
    calls = []

    def counted(patches):
        calls.append(len(patches))
        return d.fn(patches)

    counting = dataclasses.replace(d, fn=counted)
    paths = load_image_folder(image_dir).paths
    config = LocalConfig(max_regions=50)
    batched = describe_images(paths, counting, config=config, progress=False, batch=64)
    one = [local_features(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), d, config=config)
           for p in paths]  # fmt: skip
    total = sum(len(f.descriptors) for f in one)
    assert total > 3 * 64 and len({len(f.descriptors) for f in one}) > 1  # images of 50 and less
    assert calls == [64] * (total // 64) + ([total % 64] if total % 64 else [])
    for b, o in zip(batched, one, strict=True):
        np.testing.assert_allclose(b.descriptors, o.descriptors, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(b.regions.x, o.regions.x)
        assert b.image_shape == o.image_shape and b.seconds_describe > 0
    with pytest.raises(InputError, match="batch must be"):
        describe_images(paths, d, progress=False, batch=0)


# --------------------------------------------------------------------------- CLI


def test_cli_eval_images(image_dir, tmp_path, capsys):
    out, fig = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(
        [
            "eval-images",
            "--images",
            str(image_dir),
            "--local",
            "sift",
            "--k",
            "8",
            "--pca",
            "16",
            "--max-regions",
            "150",
            "--json",
            str(out),
            "--figure",
            str(fig),
            "--quiet",
        ]
    )
    assert rc == 0
    cap = capsys.readouterr()
    text = cap.out
    assert "fitted on the evaluated images themselves" in text and "over 6 queries" in text
    assert "note: PCA-whitening to 16-D fitted on only 7 distinct images" in cap.err
    doc = json.loads(out.read_text())
    assert doc["num_queries"] == 6 and doc["num_distractors"] == 1
    local = VladDescription("sift", LocalConfig(max_regions=150), VladConfig(k=8, pca_dim=16))
    ev = evaluate(build_describer(local), image_dir)
    assert doc["map"] == pytest.approx(ev.result.mean_ap, abs=1e-12)
    assert len(doc["per_query"]) == 6 and doc["ap_definition"].startswith("non-interpolated")
    assert fig.stat().st_size > 1000


def test_cli_skips_single_image_group_and_says_so(image_dir, tmp_path, capsys):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(image_dir, root)
    (root / "brick" / "1.png").unlink()
    assert (
        main(
            [
                "eval-images",
                "--images",
                str(root),
                "--local",
                "sift",
                "--k",
                "8",
                "--pca",
                "0",
                "--max-regions",
                "100",
                "--codebook-images",
                str(image_dir),
                "--quiet",
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert "skipped: brick/0.png: the only image of its group" in cap.err
    assert "over 4 queries" in cap.out and f"fitted on the 7 images of {image_dir}" in cap.out


@pytest.mark.parametrize(
    "case,message",
    [
        ("bad_group", "group brick: every image was skipped"),
        ("flat_image", "no interest regions"),
        ("empty_group", "holds no image"),
        ("bad_local", "neither a model directory nor a baseline"),
    ],
)
def test_cli_bad_input_one_line_exit_2(image_dir, tmp_path, capsys, case, message):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(image_dir, root)
    local = "sift"
    if case == "bad_group":  # one bad image is skipped (test below); a group of them fails
        for f in (root / "brick").glob("*.png"):
            f.write_bytes(b"\x89PNG garbage")
    elif case == "flat_image":
        cv2.imwrite(str(root / "brick" / "2.png"), np.full((80, 80), 200, np.uint8))
    elif case == "empty_group":
        (root / "empty").mkdir()
    else:
        local = str(tmp_path / "no_model")
    rc = main(
        [
            "eval-images",
            "--images",
            str(root),
            "--local",
            local,
            "--quiet",
            "--json",
            str(tmp_path / "o.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        rc == 2
        and len(err) == 1
        and err[0].startswith("ckn eval-images: error:")
        and message in err[0]
    )
    assert not (tmp_path / "o.json").exists()


# --------------------------------------------------------------------------- real data (optional)


@pytest.mark.skipif(not OXFORD.is_dir(), reason=f"Oxford affine data not found at {OXFORD}")
def test_oxford_two_sequences_sift():
    seqs = ["graf", "wall"]
    paths, labels = [], []
    for g, s in enumerate(seqs):
        files = sorted((OXFORD / s).glob("img[1-3].p?m"))
        paths += files
        labels += [g] * len(files)
    feats = describe_images(
        paths, make_local_describer("sift"), config=LocalConfig(max_regions=150), progress=False
    )
    vectors = encode_images(fit_vlad(feats, VladConfig(k=16, pca_dim=None)), feats)
    assert image_retrieval_map(vectors, np.array(labels)).mean_ap == 1.0


def test_one_default_for_pca_and_max_side_in_python_and_cli():
    # Fault 8 of the reliability issue: VladConfig defaulted to 256-D PCA, the CLI to none,
    # and VladConfig(pca_dim=0) raised. Fault 6: no --max-side default for local features.
    assert VladConfig().pca_dim is None
    assert VladConfig(pca_dim=0).pca_dim is None
    assert LocalConfig().max_side == 1024
    with pytest.raises(InputError, match="pca_dim must be None or an int >= 1"):
        VladConfig(pca_dim=-1)


def test_bad_images_are_skipped_with_a_warning_and_counted(image_dir, tmp_path, capsys):
    # Fault 7: a non-image .jpg, a 1x1 PNG or a truncated JPEG ended (or silently spoiled)
    # the whole collection. Now each is skipped with one warning line naming it, counted in
    # the JSON; --strict fails on the first one.
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(image_dir, root)
    group = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (group / "not_an_image.jpg").write_text("hello")
    cv2.imwrite(str(group / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    ok, buf = cv2.imencode(".jpg", cv2.imread(str(next(group.glob("*.png")))))
    (group / "truncated.jpg").write_bytes(buf.tobytes()[:-300])  # decodes, half grey
    out = tmp_path / "r.json"
    rc = main(["eval-images", "--images", str(root), "--local", "sift", "--k", "8",
               "--max-regions", "60", "--json", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    # OpenCV 5 refuses a truncated JPEG ("not a readable image"); older ones decoded it half
    # grey, which the end-of-image check catches ("truncated JPEG"): skipped either way.
    for name in ("not_an_image.jpg: not a readable image", "tiny.png: too small",
                 "truncated.jpg: "):  # fmt: skip
        assert f"warning: skipped {group}/{name}" in err  # the path, as it opens from here
    doc = json.loads(out.read_text())
    assert len(doc["skipped_images"]) == 3
    assert main(["eval-images", "--images", str(root), "--local", "sift", "--strict"]) == 2
    assert "not_an_image.jpg: not a readable image" in capsys.readouterr().err


def test_cli_local_dim_no_whiten_and_search_reach_the_results(image_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["eval-images", "--images", str(image_dir), "--local", "sift", "--k", "8",
            "--max-regions", "60", "--local-dim", "32", "--pca", "8", "--no-whiten",
            "--search", "ivfpq", "--json", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["vlad"]["local_dim"] == 32 and doc["vlad"]["pca_dim"] == 8
    assert doc["vlad"]["pca_whiten"] is False and doc["search"]["method"] == "ivfpq"
    cfg = VladConfig(k=8, local_dim=32, pca_dim=8, pca_whiten=False)
    local = VladDescription("sift", LocalConfig(max_regions=60), cfg)
    ev = evaluate(build_describer(local), image_dir, search="ivfpq")
    assert doc["map"] == pytest.approx(ev.result.mean_ap, abs=1e-12)


def test_local_vlad_runs_the_revisited_protocol(image_dir, tmp_path, capsys):
    # --gnd with --local (refused before the one pipeline): the database is imlist, the
    # queries are qimlist cropped to their boxes, described by the same VLAD model (fitted on
    # the database images); checked against a direct computation.
    import pickle

    from retrieval.metrics import revisited_map

    flat = tmp_path / "jpg"
    flat.mkdir()
    names = []
    for g in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for f in sorted(g.glob("*.png")):
            names.append(f"{g.name}{f.stem}")
            cv2.imwrite(str(flat / f"{names[-1]}.jpg"), cv2.imread(str(f)))
    boxes = [[0, 0, 400, 400], [20, 10, 200, 180]]
    gnd = {
        "imlist": names,
        "qimlist": [names[0], names[4]],
        "gnd": [
            {"bbx": boxes[0], "easy": [1], "hard": [], "junk": [0]},
            {"bbx": boxes[1], "easy": [5], "hard": [], "junk": []},
        ],
    }
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    out = tmp_path / "r.json"
    rc = main(["eval-images", "--images", str(flat), "--gnd", str(tmp_path / "gnd.pkl"),
               "--local", "sift", "--k", "8", "--max-regions", "100", "--json", str(out),
               "--quiet"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["protocol"] == "revisited" and doc["map"] == doc["medium"]["map"]
    assert doc["num_database"] == 6 and doc["num_queries"] == 2
    # Direct: VLAD fitted on the database images, queries cropped as PIL crops.
    d = make_local_describer("sift")
    local = LocalConfig(max_regions=100)
    db = describe_images(sorted(flat.glob("*.jpg"), key=lambda p: names.index(p.stem)), d,
                         config=local, progress=False)  # fmt: skip
    model = fit_vlad(db, VladConfig(k=8))
    crops = []
    for name, (x1, y1, x2, y2) in zip(gnd["qimlist"], boxes):
        img = cv2.imread(str(flat / f"{name}.jpg"))[..., ::-1]
        crops.append(np.ascontiguousarray(img[y1:y2, x1:x2]))
    q = encode_images(model, describe_images(crops, d, config=local, progress=False))
    v = encode_images(model, db)
    order = np.argsort(-(q.astype(np.float64) @ v.T.astype(np.float64)), axis=1, kind="stable")
    want = revisited_map(order.T, gnd["gnd"])
    for p in ("easy", "medium", "hard"):
        assert doc[p]["map"] == want[p]["map"], p
