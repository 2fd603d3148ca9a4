"""Learned global heads (retrieval.image, and the head internals) and ``ckn train-global``.

NumPy references of the forward (GeM with p, R-MAC + shift + projection, learned
whitening), float64 gradients against central differences, training on separable
synthetic maps, determinism, bit-exact resume, save / load, images through a tiny
backbone, and the command line end to end with its error paths.
"""

import dataclasses
import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

import ckn
from ckn import InputError
from retrieval import GlobalConfig
from retrieval import nets as B
from retrieval._src import global_head as GH
from retrieval._src.global_head.forward import _forward
from retrieval._src.global_head.initialize import _learned_whitening
from retrieval.cli import train_global as TG
from retrieval.cli.main import build_parser, main
from retrieval.image import rmac_regions
from retrieval.nets import state_dict_shapes, write_state_dict

# float32 JAX against float64 NumPy.
TOL = {"forward": 2e-5, "maps16": 2e-2}


# ---- NumPy references ----------------------------------------------------------------------------
def _unit(v):
    return v / max(np.linalg.norm(v), 1e-12)


def _valid(mask_i):
    return int(mask_i.any(axis=1).sum()), int(mask_i.any(axis=0).sum())


def ref_forward(x, mask, params, kind, levels=3):
    """One image at a time, float64: GeM or R-MAC + projection, then the whitening."""
    out = []
    for i in range(x.shape[0]):
        vh, vw = _valid(mask[i])
        xi = x[i, :vh, :vw].astype(np.float64)
        if kind == "gem":
            p = float(params.p)
            v = _unit(np.mean(np.maximum(xi, 1e-6) ** p, axis=(0, 1)) ** (1.0 / p))
        else:
            m, w = np.asarray(params.shift, np.float64), np.asarray(params.proj, np.float64)
            v = np.zeros(w.shape[1])
            for y, x0, hh, ww in rmac_regions(vh, vw, levels):
                r = _unit(xi[y : y + hh, x0 : x0 + ww].max(axis=(0, 1)))
                v += _unit((r - m) @ w)
            v = _unit(v)
        if params.w_proj is not None:
            v = _unit((v - np.asarray(params.w_shift)) @ np.asarray(params.w_proj))
        out.append(v)
    return np.stack(out)


def _maps(seed=0, n=4, h=6, w=7, c=5):
    """Positive maps, each image with its own top-left valid rectangle."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, (n, h, w, c)).astype(np.float32)
    mask = np.zeros((n, h, w), bool)
    for i, (a, b) in enumerate([(h, w), (h - 2, w), (h, w - 3), (3, 4)][:n]):
        mask[i, :a, :b] = True
    return x, mask


def _params(kind, c=5, d=3, whiten=True, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if kind == "gem":
        prm = GH.HeadParams(p=np.asarray(2.5, dtype))
    else:
        prm = GH.HeadParams(
            shift=rng.normal(0, 0.1, c).astype(dtype), proj=rng.normal(0, 1, (c, d)).astype(dtype)
        )
    if whiten:
        d0 = c if kind == "gem" else d
        prm = prm._replace(
            w_shift=rng.normal(0, 0.1, d0).astype(dtype),
            w_proj=rng.normal(0, 1, (d0, 4)).astype(dtype),
        )
    return prm


# ---- forward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gem", "rmac"])
def test_forward_matches_numpy_reference(kind):
    x, mask = _maps()
    bare, prm = _params(kind, whiten=False), _params(kind, whiten=True)
    got = np.asarray(GH.pool_forward(bare, jnp.asarray(x), jnp.asarray(mask), head=kind))
    np.testing.assert_allclose(got, ref_forward(x, mask, bare, kind), atol=TOL["forward"])
    if kind == "rmac":  # only the valid regions, gathered: the same vectors
        cap = GH.region_cap(mask)
        assert cap == max(len(rmac_regions(*_valid(m))) for m in mask) < 50
        fast = GH.pool_forward(bare, x, mask, head=kind, max_regions=cap)
        np.testing.assert_allclose(np.asarray(fast), got, atol=1e-6)
    head = GH.GlobalHead(prm, head=kind, channels=5)  # + the whitening, jitted, in chunks
    want = ref_forward(x, mask, prm, kind)
    np.testing.assert_allclose(head.describe(x, mask), want, atol=TOL["forward"])
    assert head.dim == want.shape[1] == 4
    if kind == "gem":  # p = 64 on values up to 20: x^p overflows float32, the head does not
        big = GH.HeadParams(p=np.float32(64.0))
        v = np.asarray(GH.pool_forward(big, 4 * x, mask, head="gem"))
        np.testing.assert_allclose(v, ref_forward(4 * x, mask, big, "gem"), atol=1e-4)


def test_gradients_match_central_differences_float64():
    """d/dp of GeM, d/d(shift, projection) of R-MAC, d/d(whitening), against central differences.

    R-MAC's regions do not depend on the parameters; they are computed first (the region
    grid of pooling.regional_mac is int32 arithmetic that x64 mode does not accept) and the
    parameter-dependent part (project_regions) is differentiated in float64.
    """
    x, mask = _maps(seed=3)
    regions, valid = (np.asarray(a) for a in GH.pooling.regional_mac(x, 3, mask=mask))
    with jax.enable_x64(True):
        c = np.random.default_rng(4).normal(size=(x.shape[0], 4))
        for kind in ("gem", "rmac"):
            prm = jax.tree.map(jnp.asarray, _params(kind, dtype=np.float64))

            @jax.jit
            def f(q, kind=kind):
                if kind == "gem":
                    v = GH.pool_forward(q, jnp.asarray(x, jnp.float64), mask, head=kind)
                else:
                    v = GH.project_regions(q, jnp.asarray(regions, jnp.float64), valid)
                return jnp.sum(GH.whiten_forward(q, v) * c)

            grads = jax.grad(f)(prm)
            for name in ("p", "shift", "proj", "w_proj", "w_shift"):
                a = getattr(prm, name)
                if a is None:
                    continue
                flat = np.asarray(a).reshape(-1)
                for j in range(min(flat.size, 4)):
                    e = np.zeros_like(flat)
                    e[j] = 1e-6
                    up = prm._replace(**{name: jnp.asarray((flat + e).reshape(np.shape(a)))})
                    dn = prm._replace(**{name: jnp.asarray((flat - e).reshape(np.shape(a)))})
                    fd = (float(f(up)) - float(f(dn))) / 2e-6
                    g = float(np.asarray(getattr(grads, name)).reshape(-1)[j])
                    assert abs(g - fd) <= 1e-7 + 1e-6 * abs(fd), (kind, name, j, g, fd)


def test_shrunk_learned_whitening():
    """alpha = 0 is Radenovic's Lw; alpha > 0 whitens the shrunk difference covariance."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 6))
    pairs = GH.group_pairs(np.repeat(np.arange(10), 3))
    exact = GH.fit_learned_whitening(x, pairs, dim=6)
    same = _learned_whitening(x, pairs, 6, 0.0)
    np.testing.assert_array_equal(same.projection, exact.projection)
    lw = _learned_whitening(x, pairs, 6, 0.3)
    d = x[pairs[:, 0]] - x[pairs[:, 1]]
    s = d.T @ d / len(d)
    s = 0.7 * s + 0.3 * np.trace(s) / 6 * np.eye(6)
    np.testing.assert_allclose(lw.projection @ s @ lw.projection.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(lw.mean, x[pairs[:, 0]].mean(axis=0))


# ---- training -----------------------------------------------------------------------------------
def _separable(seed=0, groups=10, k=4, c=16):
    """Groups of noisy copies of one random map each: separable, with some overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(2.0, 1.0, (groups, 4, 4, c))
    x = np.concatenate(
        [np.maximum(m[None] + rng.normal(0, 1.2, (k, 4, 4, c)), 0) for m in centres]
    ).astype(np.float16)
    mask = np.ones(x.shape[:3], bool)
    mask[1::3, 3, :] = False  # some images one row shorter
    labels = np.repeat(np.arange(groups), k)
    tr = labels < groups - 3
    return (GH.HeadMaps(x[tr], mask[tr]), labels[tr]), (GH.HeadMaps(x[~tr], mask[~tr]), labels[~tr])


def _peaky(seed=5, groups=6, k=4, c=16):
    """Dense noise shared by all groups + each group's 4 channels peaking at one random cell:
    a mean (low p) dilutes the peak over 16 cells, a max (high p) keeps it."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, (groups * k, 4, 4, c))
    labels = np.repeat(np.arange(groups), k)
    channels = [rng.choice(c, 4, replace=False) for _ in range(groups)]
    for i, g in enumerate(labels):
        x[i, rng.integers(4), rng.integers(4), channels[g]] += 15.0
    return GH.HeadMaps(x.astype(np.float16), np.ones(x.shape[:3], bool)), labels


CFG = dict(epochs=6, groups_per_batch=4, images_per_group=3, lr=3e-3, patience=None, side=32)


@pytest.fixture(scope="module")
def toy():
    return _separable()


def _full_loss(prm, maps, labels, cfg):
    """The batch-hard triplet loss of the whole training set in one batch (a fixed measure)."""
    v = _forward(prm, maps.maps, maps.mask, head=cfg.head)  # jitted: one compilation
    return float(ckn.losses.batch_triplet_loss(v, labels, cfg.margin_value))


def _no_time(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def rmac_head(toy):
    (maps, labels), _ = toy
    cfg = GH.GlobalHeadConfig(head="rmac", dim=8, **CFG)
    return cfg, *GH.train_global_head(maps, labels, cfg)


@pytest.mark.parametrize("kind", ["gem", "rmac"])
def test_training_lowers_the_loss(toy, rmac_head, kind):
    (maps, labels), val = toy
    if kind == "rmac":
        cfg, head, rep = rmac_head
    else:
        maps, labels = _peaky()
        cfg = GH.GlobalHeadConfig(head=kind, **{**CFG, "lr": 1e-2})
        head, rep = GH.train_global_head(maps, labels, cfg)  # no validation: the last epoch
        assert rep.history[-1]["p"] == float(head.p.get_value()) > 5.0  # towards the max
    init, _ = GH.init_head_params(maps, labels, cfg)
    before, after = (_full_loss(p, maps, labels, cfg) for p in (init, head.params()))
    assert after < 0.8 * before, (before, after)
    assert rep.nonfinite_steps == 0 and rep.traces <= 1 and rep.steps == 6 * 2
    assert head.describe(maps.maps, maps.mask).shape == (len(maps), head.dim)


def test_same_seed_same_head_no_retrace_and_pool_mining(toy):
    (maps, labels), val = toy
    cfg = GH.GlobalHeadConfig(head="gem", whiten=True, mining="pool", pool_size=12, **CFG)
    a, ra = GH.train_global_head(maps, labels, cfg, seed=1, validation=val)
    b, rb = GH.train_global_head(maps, labels, cfg, seed=1, validation=val)
    c, rc = GH.train_global_head(maps, labels, cfg, seed=2, validation=val)
    for name in ("p", "w_shift", "w_proj"):
        np.testing.assert_array_equal(getattr(a, name).get_value(), getattr(b, name).get_value())
    assert _no_time(ra.history) == _no_time(rb.history) and rb.traces == 0  # compiled once
    # The returned head is the best validation epoch's.
    assert float(a.p.get_value()) == pytest.approx(ra.history[ra.best_epoch]["p"])
    assert ra.best_val_map == max(h["val_map"] for h in ra.history)
    assert [h["loss"] for h in rc.history] != [h["loss"] for h in ra.history]
    assert cfg.batch_size == 4 * (3 + 2)


def test_resume_gives_the_same_bits(toy, tmp_path):
    (maps, labels), val = toy
    cfg = GH.GlobalHeadConfig(head="gem", whiten=True, mining="pool", pool_size=12, **CFG)
    full, rf = GH.train_global_head(maps, labels, cfg, validation=val)
    ck = tmp_path / "ck"
    GH.train_global_head(maps, labels, cfg, validation=val, checkpoint=ck, stop_after=2)
    res, rr = GH.train_global_head(maps, labels, cfg, validation=val, checkpoint=ck, resume=True)
    assert rr.resumed_from == 2 and _no_time(rr.history) == _no_time(rf.history)
    for name in ("p", "w_shift", "w_proj"):
        np.testing.assert_array_equal(
            getattr(full, name).get_value(), getattr(res, name).get_value()
        )
    other = dataclasses.replace(cfg, lr=1e-3)
    with pytest.raises(InputError, match="another run.*config.lr"):
        GH.train_global_head(maps, labels, other, validation=val, checkpoint=ck, resume=True)
    with pytest.raises(InputError, match="no checkpoint"):
        GH.train_global_head(maps, labels, cfg, checkpoint=tmp_path / "none", resume=True)


def test_save_load_round_trip_and_errors(toy, rmac_head, tmp_path):
    (maps, labels), _ = toy
    cfg, head, _ = rmac_head
    head = GH.GlobalHead(head.params(), head="rmac", channels=16, config=cfg,
                         backbone={"name": "toy", "channels": 16})  # fmt: skip
    GH.save_global_head(head, tmp_path / "h")
    back = GH.load_global_head(tmp_path / "h")
    assert (back.head, back.dim, back.channels, back.config) == ("rmac", 8, 16, cfg)
    np.testing.assert_array_equal(
        back.describe(maps.maps, maps.mask), head.describe(maps.maps, maps.mask)
    )
    with pytest.raises(InputError, match="maps have 3 channels, the head takes 16"):
        back.describe(np.ones((2, 4, 4, 3), np.float32))
    with pytest.raises(InputError, match="NaN"):
        back.describe(np.full((1, 4, 4, 16), np.nan, np.float32))
    with pytest.raises(InputError, match="not found"):
        GH.load_global_head(tmp_path / "nope")
    (tmp_path / "h" / "arrays.npz").unlink()
    with pytest.raises(InputError, match="missing arrays.npz"):
        GH.load_global_head(tmp_path / "h")


def test_config_and_data_errors(toy):
    (maps, labels), _ = toy
    bad = [
        (dict(head="vlad"), "head must be one of gem, rmac"),
        (dict(head="gem", dim=8), "keeps the C channels"),
        (dict(p=0.5), r"p must be in \[1, 64\]"),
        (dict(margin=-1.0), "margin must be a number > 0"),
        (dict(groups_per_batch=1), "groups_per_batch must be an int >= 2"),
        (dict(mining="online"), "mining must be one of"),
    ]
    for kw, msg in bad:
        with pytest.raises(InputError, match=msg):
            GH.GlobalHeadConfig(**kw)
    with pytest.raises(InputError, match="group"):
        GH.train_global_head(maps, np.arange(len(maps)), GH.GlobalHeadConfig(**CFG))
    with pytest.raises(InputError, match="labels must be"):
        GH.train_global_head(maps, labels[:-1], GH.GlobalHeadConfig(**CFG))


# ---- images through a tiny backbone -------------------------------------------------------------
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
        out[key] = a.astype(np.float32)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A ResNet-50 of widths / 16 (128 channels) as a weights file, and the network."""
    path = tmp_path_factory.mktemp("w") / "r50.pth"
    write_state_dict(path, random_state(state_dict_shapes("resnet50", 16), 5), format="zip")
    return path, B.load_backbone("resnet50", path, width_divisor=16)


def _crops(seed, n, size=64):
    img = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, 512 - size, n), rng.integers(0, 512 - size, n)
    return [np.ascontiguousarray(img[y : y + size, x : x + size]) for y, x in zip(ys, xs)]


def test_describe_images_matches_maps_and_checks_the_backbone(tiny):
    _, net = tiny
    images = _crops(0, 3)
    maps = GH.prepare_maps(net, images, side=64)
    assert maps.maps.dtype == np.float16 and maps.maps.shape == (3, 2, 2, 128) and maps.mask.all()
    prm = _params("gem", c=128, whiten=True)
    head = GH.GlobalHead(prm, head="gem", channels=128, backbone=GH.backbone_info(net))
    one = GlobalConfig(scales=(1.0,), max_side=64, bucket=64)
    np.testing.assert_allclose(
        head.describe_images(net, images, one), head.describe(maps.maps, maps.mask),
        atol=TOL["maps16"],
    )  # fmt: skip
    multi = head.describe_images(net, images, GlobalConfig(scales=(1.0, 0.5), max_side=64))
    assert multi.shape == (3, 4) and np.allclose(np.linalg.norm(multi, axis=1), 1, atol=1e-5)
    other = B.load_backbone(
        "resnet50", random_state(state_dict_shapes("resnet50", 16), 6), width_divisor=16
    )
    with pytest.raises(InputError, match="other weights"):
        head.describe_images(other, images, one)
    with pytest.raises(InputError, match="MiB limit"):
        GH.prepare_maps(net, images, side=64, max_bytes=1000)
    with pytest.raises(InputError, match="multiple of resnet50's stride"):
        GH.prepare_maps(net, images, side=48)


# ---- the command line ---------------------------------------------------------------------------
def _folder(root, groups, per, seed):
    for g in range(groups):
        for j, im in enumerate(_crops(seed + g, per, size=72)):
            (root / f"g{g}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / f"g{g}" / f"{j}.png"), im[..., ::-1])
    return root


def test_cli_end_to_end_and_errors(tiny, tmp_path, capsys):
    weights, net = tiny
    train = _folder(tmp_path / "train", 4, 3, 10)
    val = _folder(tmp_path / "val", 2, 2, 50)
    out = tmp_path / "heads" / "gem"
    base = ["train-global", "--images", str(train), "--backbone", f"resnet50:{weights}",
            "--side", "64", "--epochs", "2", "--groups", "2", "--group-size", "2",
            "--quiet"]  # fmt: skip
    assert main([*base, "--head", "gem", "--val-images", str(val), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "saved" in printed.out and "validation mAP" in printed.out
    doc = json.loads((out / "config.json").read_text())
    assert doc["format"] == "ckn-global-head" and doc["training"]["provenance"]["commit"]
    assert doc["training"]["data"]["validation_images"] == 4
    assert not (tmp_path / "heads" / "gem.ckpt").exists()
    head = GH.load_global_head(out)
    v = head.describe_images(net, [train / "g0" / "0.png"], GlobalConfig(scales=(1.0,)))
    assert v.shape == (1, 128)
    rmac = tmp_path / "heads" / "rmac"
    assert main([*base, "--head", "rmac", "--dim", "8", "--whiten", "--val-fraction", "0",
                 "--out", str(rmac)]) == 0  # fmt: skip
    assert GH.load_global_head(rmac).dim == 8  # projection 8, whitening kept at 8 (<= 12 - 1)
    # An interrupted run (a checkpoint after epoch 1 in OUT.ckpt) resumed by the command
    # ends with the bits of the uninterrupted one.
    again = tmp_path / "heads" / "again"
    argv = [*base, "--head", "gem", "--val-images", str(val), "--out", str(again)]
    args = build_parser().parse_args(argv)
    paths, labels, vpaths, vlabels, _ = TG._data(args)
    GH.train_global_head(
        GH.prepare_maps(net, paths, side=64), labels, TG._config(args),
        validation=(GH.prepare_maps(net, vpaths, side=64), vlabels),
        checkpoint=TG.checkpoint_dir(again), stop_after=1,
    )  # fmt: skip
    assert main([*argv, "--resume"]) == 0 and not TG.checkpoint_dir(again).exists()
    with np.load(out / "arrays.npz") as a, np.load(again / "arrays.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    capsys.readouterr()
    x = str(tmp_path / "x")
    g = [*base, "--head", "gem", "--val-fraction", "0"]
    errors = [
        ([*g, "--out", str(out)], "exists: use --overwrite"),
        ([*g, "--out", x, "--resume"], "no checkpoint"),
        ([*base, "--head", "gem", "--out", x, "--val-images", str(train)], "shares 12 image"),
        ([*g, "--out", str(train)], "is the input --images"),
        ([*g, "--out", x, "--side", "48"], "multiple of"),
        ([*g, "--out", x, "--max-cache-mib", "1", "--side", "2048"], "above --max-cache-mib"),
        ([*g, "--out", x, "--val-fraction", "0.2"], "too few to hold some out"),
        (["train-global", "--images", x, "--head", "gem", "--out", str(tmp_path / "y")],
         "image folder not found"),
        ([*g, "--dim", "8", "--out", x], "keeps the C channels"),
    ]  # fmt: skip
    for argv, msg in errors:
        assert main(argv) == 2, msg
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err, (msg, err)
    with pytest.raises(SystemExit):
        main(["train-global", "--help"])
    assert "example:" in capsys.readouterr().out
