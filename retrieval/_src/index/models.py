"""The describer an index describes images with, its files identified by SHA-256.

:func:`index_describer` builds the describer of an index's settings (one describer config,
:func:`retrieval.image.build_describer`) and resolves the files it reads: a backbone weights
file, a CKN model folder, a learned head's folder, each hashed at build; a later query or add
that finds other content is refused (:func:`retrieval._src.index.build.describe_for_index`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ckn import InputError
from retrieval._src.describer import LearnedHeadDescription, load_backbone_spec
from retrieval._src.describers import build_describer
from retrieval._src.global_head import load_global_head
from retrieval._src.local import make_local_describer
from retrieval._src.vlad_describer import VladDescriber, VladDescription

LOCAL_BASELINES = ("sift", "rootsift", "pixels")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for the process."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file not found: {p}")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _sha256_any(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, or of a model folder's files (a CKN backbone)."""
    return _sha256_tree(Path(path)) if Path(path).is_dir() else _sha256_file(path)


def _sha256_tree(folder: Path) -> str:
    """SHA-256 over a folder's files (relative names and contents, sorted)."""
    h = hashlib.sha256()
    for p in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(_sha256_file(p).encode())
    return h.hexdigest()


def _weights_path(spec: str) -> Path:
    from retrieval._src.nets.backbone import SHIPPED, shipped_weights

    name, _, path = spec.partition(":")
    if path:
        return Path(path)
    if name in SHIPPED:
        return Path(shipped_weights(name))
    what = "MODEL_DIR" if name == "ckn" else "FILE"
    raise InputError(f"{name} needs weights: backbone {name}:{what}")


_BACKBONES: dict[tuple[str, str], Any] = {}


def _backbone(spec: str, sha: str | None = None):
    """The backbone of "NAME[:FILE]" and its weights file's SHA-256 (checked against ``sha``)."""
    path = _weights_path(spec)
    got = _sha256_any(path)
    if sha is not None and got != sha:
        raise InputError(
            f"the weights file {path} changed since the index was built "
            f"(SHA-256 {got[:12]}... instead of {sha[:12]}...): rebuild the index"
        )
    key = (spec.partition(":")[0], got)
    if key not in _BACKBONES:
        _BACKBONES.clear()  # one network in memory at a time
        _BACKBONES[key] = load_backbone_spec(f"{key[0]}:{path}")
    return _BACKBONES[key], path, got


def _describer(spec: str, sha: str | None = None):
    if spec in LOCAL_BASELINES:
        return make_local_describer(spec), None
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"local: not sift, rootsift, pixels nor a model folder: {spec}")
    got = _sha256_tree(folder)
    if sha is not None and got != sha:
        raise InputError(
            f"the model {folder} changed since the index was built "
            f"(SHA-256 {got[:12]}... instead of {sha[:12]}...): rebuild the index"
        )
    return make_local_describer(str(folder)), got


def index_describer(config, description: dict | None = None):
    """(describer, description) of an index's describer config.

    ``description`` (as saved by a build) names the SHA-256 of every file the describer
    reads; a file with other content is refused. Without it (a build), the description is
    made: the backbone's name, weights path and SHA-256; a learned head's folder and SHA-256;
    the local descriptor and its model's SHA-256.

    Raises:
      InputError: a missing or changed weights file, model or head folder.
    """
    old = description or {}
    if isinstance(config, VladDescription):
        patches, sha = _describer(config.local, old.get("model_sha256"))
        local = config.local if sha is None else str(Path(config.local).resolve())
        return (
            VladDescriber(config, patches=patches),
            {"kind": "local", "local": local, "model_sha256": sha, "local_dim": patches.dim},
        )
    extra = {}
    spec = config.backbone
    if isinstance(config, LearnedHeadDescription):
        folder = Path(config.global_head)
        if not folder.is_dir():
            raise InputError(f"global head folder not found: {folder}")
        head_sha = _sha256_tree(folder)
        if old.get("head_sha256") not in (None, head_sha):
            raise InputError(
                f"the head {folder} changed since the index was built (SHA-256 "
                f"{head_sha[:12]}... instead of {old['head_sha256'][:12]}...): rebuild the index"
            )
        extra = {"global_head": str(folder.resolve()), "head_sha256": head_sha}
        if spec is None:
            rec = load_global_head(folder).backbone
            spec = rec.get("spec") or rec.get("name")
            if not spec:
                raise InputError(f"{folder} does not record its backbone: give the backbone")
    net, wpath, sha = _backbone(spec, old.get("weights_sha256"))
    described = {"kind": "global", "backbone": net.name, "weights": str(wpath.resolve()),
                 "weights_sha256": sha, **extra}  # fmt: skip
    return build_describer(config, backbone=net), described
