"""``ckn eval-images --global-head HEAD_DIR`` and the learned-head describer of ``evaluate``.

A tiny ResNet-50 (widths / 16, 128 channels, random weights) and a GeM + whitening head
trained for one epoch by ``ckn train-global``; an R-MAC head with random parameters
saved from Python. The command's mAP and the describer's vectors are checked against the
head's own ``describe_images`` and a NumPy AP; a describer returning bad vectors is refused;
every refusal is one line, exit 2, nothing written.
"""

import hashlib
import json
import pickle
import shutil

import cv2
import numpy as np
import pytest
import skimage.data

from ckn import InputError
from retrieval import GlobalConfig, evaluate, extract_global
from retrieval import image as GH
from retrieval import nets as B
from retrieval.cli.main import main
from retrieval.image import (
    BaseDescriber,
    Described,
    LearnedHeadDescription,
    PoolingDescription,
    PostConfig,
    ScaleConfig,
    SpatialVerification,
    VerifyConfig,
    apply_whitening,
    build_describer,
    fit_global_whitening,
)
from retrieval.nets import state_dict_shapes, write_state_dict

ONE = ScaleConfig(scales=(1.0,))


def evaluate_head(net, folder, head_dir, sizes, post=PostConfig(), **kw):  # noqa: B008
    """The pipeline with the learned head of ``head_dir`` over ``net``."""
    config = LearnedHeadDescription(head_dir, scales=sizes)
    return evaluate(build_describer(config, backbone=net), folder, post, **kw)


def _state(divisor, seed):
    """A random ResNet-50 state dict of widths / divisor (He-initialized convolutions)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in state_dict_shapes("resnet50", divisor).items():
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".weight"):
            a = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            a = rng.normal(0, 0.1, shape)
        out[key] = a.astype(np.float32)
    return out


def _folder(root, groups, per, seed, distractors=0, side=72):
    img = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    for g in range(groups + (1 if distractors else 0)):
        sub = root / f"g{g}" if g < groups else root
        sub.mkdir(parents=True, exist_ok=True)
        y0, x0 = rng.integers(0, 512 - side - 48, 2)
        for j in range(per if g < groups else distractors):
            dy, dx = rng.integers(0, 40, 2)
            crop = img[y0 + dy : y0 + dy + side, x0 + dx : x0 + dx + side]
            name = f"{j}.png" if g < groups else f"d{j}.png"
            cv2.imwrite(str(sub / name), np.ascontiguousarray(crop[..., ::-1]))
    return root


def ref_map(vectors, labels):
    """Groups protocol in NumPy: every grouped image a query, itself excluded, mean AP."""
    s = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    aps = []
    for q in np.flatnonzero(labels >= 0):
        others = np.delete(np.arange(len(labels)), q)
        order = others[np.argsort(-s[q, others], kind="stable")]
        rel = labels[order] == labels[q]
        hits = np.cumsum(rel)
        aps.append(float(np.mean(hits[rel] / (np.flatnonzero(rel) + 1))))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Weights file, backbone, folders and a GeM + whitening head from ckn train-global."""
    root = tmp_path_factory.mktemp("evalhead")
    weights = root / "r50.pth"
    write_state_dict(weights, _state(16, 5), format="zip")
    net = B.load_backbone("resnet50", weights, width_divisor=16)
    train = _folder(root / "train", 4, 3, 10)
    ev = _folder(root / "ev", 3, 3, 20, distractors=2)
    wh = _folder(root / "wh", 3, 2, 30)
    gem = root / "heads" / "gem"
    argv = ["train-global", "--images", str(train), "--backbone", f"resnet50:{weights}",
            "--side", "64", "--epochs", "1", "--groups", "2", "--group-size", "2",
            "--val-fraction", "0", "--head", "gem", "--whiten", "--out", str(gem),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return {"root": root, "weights": weights, "net": net, "ev": ev, "wh": wh, "gem": gem}


def _eval(capsys, *argv):
    rc = main(["eval-images", *map(str, argv), "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out


def test_cli_matches_the_library_and_numpy(setup, capsys):
    s, net = setup, setup["net"]
    head = GH.load_global_head(s["gem"])
    out_json = s["root"] / "gem.json"
    printed = _eval(capsys, "--images", s["ev"], "--global-head", s["gem"], "--scales", "1",
                    "--json", out_json)  # fmt: skip
    assert "learned gem" in printed.out
    doc = json.loads(out_json.read_text())
    ev = evaluate_head(net, s["ev"], s["gem"], ONE)
    direct = head.describe_images(net, ev.paths, ONE)
    np.testing.assert_array_equal(ev.database, direct)
    assert ev.database.shape == (11, head.dim) and ev.info["dim"] == head.dim
    assert doc["map"] == ev.result.mean_ap
    np.testing.assert_allclose(doc["map"], ref_map(direct, ev.labels), rtol=1e-12)
    assert [q["ap"] for q in doc["per_query"]] == [
        float(a) for a in ev.result.per_query if not np.isnan(a)
    ]
    rec = doc["global"]["learned_head"]
    sha = hashlib.sha256((s["gem"] / "arrays.npz").read_bytes()).hexdigest()
    assert rec["folder"] == str(s["gem"]) and rec["sha256"]["arrays.npz"] == sha
    assert set(rec["sha256"]) == {"arrays.npz", "config.json"}
    assert rec["kind"] == "gem" and rec["whitened"] and rec["dim"] == head.dim
    assert rec["config"]["head"] == "gem" and rec["config"]["whiten"] is True
    assert rec["p"] == pytest.approx(float(head.p.get_value()))
    assert rec["backbone"]["spec"] == f"resnet50:{s['weights']}"
    assert doc["global"]["backbone_spec"] == f"resnet50:{s['weights']}"
    assert doc["global"]["config"]["p"] == rec["p"] and doc["global"]["head"] == "gem"


def test_whitening_and_queries_go_through_the_head(setup, capsys):
    s, net = setup, setup["net"]
    head = GH.load_global_head(s["gem"])
    out_json = s["root"] / "gem_pca.json"
    multi = ScaleConfig(scales=(1.0, 0.75))
    # --global gem beside --global-head: allowed, it names the head's kind.
    _eval(capsys, "--images", s["ev"], "--global", "gem", "--global-head", s["gem"],
          "--scales", "1,0.75", "--whiten", "pca", "--whiten-images", s["wh"],
          "--backbone", f"resnet50:{s['weights']}", "--json", out_json)  # fmt: skip
    doc = json.loads(out_json.read_text())
    post = PostConfig(whiten="pca")
    ev = evaluate_head(net, s["ev"], s["gem"], multi, post, whiten_images=s["wh"])
    assert doc["map"] == ev.result.mean_ap
    wv = head.describe_images(net, sorted(s["wh"].rglob("*.png")), multi)
    w = fit_global_whitening(wv, "pca")
    db = apply_whitening(w, head.describe_images(net, ev.paths, multi))
    np.testing.assert_allclose(ev.database, db, atol=1e-6)
    assert doc["whitening"]["input_dim"] == head.dim and doc["whitening"]["num_images"] == 6


def test_rmac_head_from_python_and_the_gnd_protocol(setup, capsys):
    s, net = setup, setup["net"]
    rng = np.random.default_rng(0)
    prm = GH.HeadParams(
        shift=rng.normal(0, 0.1, 128).astype(np.float32),
        proj=rng.normal(0, 0.1, (128, 16)).astype(np.float32),
    )
    info = GH.backbone_info(net, f"resnet50:{s['weights']}")
    head = GH.GlobalHead(prm, head="rmac", channels=128, backbone=info)
    folder = GH.save_global_head(head, s["root"] / "heads" / "rmac")
    # --backbone with the same weights under another path: accepted (same SHA-256).
    copy = s["root"] / "copy.pth"
    shutil.copy(s["weights"], copy)
    out_json = s["root"] / "rmac.json"
    _eval(capsys, "--images", s["ev"], "--global-head", folder, "--scales", "1",
          "--backbone", f"resnet50:{copy}", "--json", out_json)  # fmt: skip
    doc = json.loads(out_json.read_text())
    ev = evaluate_head(net, s["ev"], folder, ONE)
    assert doc["map"] == ev.result.mean_ap and doc["global"]["learned_head"]["dim"] == 16
    np.testing.assert_allclose(doc["map"], ref_map(ev.database, ev.labels), rtol=1e-12)
    # The revisited protocol: the query crops go through the head too.
    flat = s["root"] / "flat"
    flat.mkdir()
    names = []
    for g in range(3):
        for j in range(3):
            names.append(f"g{g}_{j}")
            cv2.imwrite(str(flat / f"{names[-1]}.jpg"), cv2.imread(str(s["ev"] / f"g{g}/{j}.png")))
    gnd = {
        "imlist": names,
        "qimlist": ["g0_0", "g2_1"],
        "gnd": [
            {"bbx": [4, 4, 68, 68], "easy": [1, 2], "hard": [], "junk": [0]},
            {"bbx": [0, 2, 70, 72], "easy": [6], "hard": [8], "junk": []},
        ],
    }
    (s["root"] / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    rev_json = s["root"] / "rmac_gnd.json"
    _eval(capsys, "--images", flat, "--gnd", s["root"] / "gnd.pkl", "--global-head", folder,
          "--scales", "1", "--json", rev_json)  # fmt: skip
    doc = json.loads(rev_json.read_text())
    ev = evaluate_head(net, flat, folder, ONE, gnd=s["root"] / "gnd.pkl")
    assert doc["protocol"] == "revisited" and doc["map"] == ev.revisited["medium"]["map"]
    img = cv2.imread(str(flat / "g0_0.jpg"))[..., ::-1]
    crop = np.ascontiguousarray(img[4:68, 4:68])
    np.testing.assert_array_equal(ev.queries[0], head.describe_images(net, [crop], ONE)[0])
    np.testing.assert_array_equal(ev.database, head.describe_images(net, ev.paths, ONE))


class _Fixed(BaseDescriber):
    """A describer returning what it is told to (for the pipeline's checks)."""

    config, min_size, label = None, 32, "fixed"

    def __init__(self, fn):
        self.fn = fn

    def describe(self, images, *, progress=False, keep=frozenset()):
        return Described(self.fn(images), {}, {})


def test_a_describer_is_any_object_of_the_protocol_and_bad_vectors_are_refused(setup):
    s, net = setup, setup["net"]
    pooled = PoolingDescription(global_config=GlobalConfig(scales=(1.0,)))
    plain = evaluate(build_describer(pooled, backbone=net), s["ev"])
    same = evaluate(_Fixed(lambda ims: extract_global(net, ims, pooled.global_config)), s["ev"])
    np.testing.assert_array_equal(plain.database, same.database)
    assert plain.result.mean_ap == same.result.mean_ap
    bad = [
        (lambda ims: np.zeros((len(ims) - 1, 4), np.float32), "returned shape"),
        (lambda ims: np.zeros(len(ims), np.float32), "returned shape"),
        (lambda ims: np.full((len(ims), 4), np.nan, np.float32), "non-finite"),
        (lambda ims: np.ones((len(ims), 4), np.int64), "non-float"),
    ]
    for fn, msg in bad:
        with pytest.raises(InputError, match=msg):
            evaluate(_Fixed(fn), s["ev"])


def test_refusals_are_one_line_and_write_nothing(setup, capsys):
    s = setup
    root, gem, ev = s["root"], s["gem"], s["ev"]
    narrow = root / "r50_32.pth"
    write_state_dict(narrow, _state(32, 5), format="zip")
    other = root / "r50_other.pth"
    write_state_dict(other, _state(16, 6), format="zip")
    net_info = GH.backbone_info(s["net"], f"resnet50:{root / 'gone.pth'}")
    prm = GH.HeadParams(p=np.asarray(3.0, np.float32))
    lost = GH.save_global_head(
        GH.GlobalHead(prm, head="gem", channels=128, backbone=net_info), root / "heads" / "lost"
    )
    anon = GH.save_global_head(GH.GlobalHead(prm, head="gem", channels=128), root / "heads" / "a")
    out = root / "never.json"
    h = ["--images", ev, "--json", out]
    errors = [
        ([*h, "--global-head", ev], "is not a global head folder (missing config.json)"),
        ([*h, "--global-head", root / "nope"], "global head folder not found"),
        ([*h, "--global-head", gem, "--backbone", f"resnet50:{other}"], "with other weights"),
        ([*h, "--global-head", gem, "--backbone", f"resnet50:{narrow}"],
         "not on resnet50 (64 channels)"),
        ([*h, "--global-head", lost], "resnet50 weights file not found"),
        ([*h, "--global-head", anon], "does not record its backbone: give the backbone it was"),
        ([*h, "--global-head", gem, "--global", "mac"], "does not match"),
        ([*h, "--global-head", gem, "--local", "sift"], "--global-head does not apply to --local"),
        ([*h, "--global-head", gem, "--pca", "8"], "--pca does not apply to --global-head"),
        (h, "give one of --local, --global or --global-head"),
    ]  # fmt: skip
    for argv, msg in errors:
        assert main(["eval-images", *map(str, argv), "--quiet"]) == 2, msg
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err, (msg, err)
        assert not out.exists()
    assert "(give the backbone it was trained on)" in (
        main(["eval-images", *map(str, h), "--global-head", str(lost)]) == 2
        and capsys.readouterr().err
    )


def test_cli_verify_after_a_learned_head_equals_the_library(setup, capsys):
    """``--verify`` after ``--global-head``: the head's ranking, then spatial verification of
    the top 5, as the pipeline with the verification scorer."""
    s = setup
    out_json = s["root"] / "gemv.json"
    # 160 px views: a 72 px one holds no region SIFT can verify with.
    images = _folder(s["root"] / "ev160", 3, 3, 20, distractors=2, side=160)
    _eval(capsys, "--images", images, "--global-head", s["gem"], "--scales", "1",
          "--verify", "rootsift", "--verify-top", "5", "--min-inliers", "4",
          "--json", out_json)  # fmt: skip
    doc = json.loads(out_json.read_text())
    verify = VerifyConfig("rootsift", top=5, min_inliers=4)
    ev = evaluate_head(s["net"], images, s["gem"], ONE, scorers=(SpatialVerification(verify),))
    assert doc["map"] == ev.result.mean_ap
    assert doc["verification"]["pairs"] == 11 * 5 and doc["verification"]["config"]["top"] == 5
    assert doc["global"]["learned_head"]["kind"] == "gem"
