"""Training checkpoints: the run's fingerprint, atomic save, checked resume."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ckn
from ckn import InputError
from retrieval._src.global_head.model import (
    _fingerprint_arrays,
)

_CKPT_FORMAT, _CKPT_VERSION, _CKPT_FILE = "ckn-global-head-checkpoint", 1, "state.npz"


def _fingerprint(maps, labels, validation, cfg, seed) -> dict:
    doc = {
        "config": cfg.to_dict(),
        "seed": seed,
        "data": _fingerprint_arrays(maps.maps, maps.mask, labels)[:16],
        "validation": None
        if validation is None
        else _fingerprint_arrays(validation[0].maps, validation[0].mask, validation[1])[:16],
    }
    return json.loads(json.dumps(doc))


def _save_checkpoint(folder: Path, meta: dict, trees: dict) -> None:
    arrays = {"meta": np.asarray(json.dumps(meta))}
    for name, tree in trees.items():
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{name}.{i}"] = np.asarray(leaf)
    folder.mkdir(parents=True, exist_ok=True)
    with ckn.atomic_path(folder / _CKPT_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_checkpoint(folder: Path, expect: dict, templates: dict) -> tuple[dict, dict]:
    path = folder / _CKPT_FILE
    if not path.is_file():
        raise InputError(f"no checkpoint to resume in {folder} (missing {_CKPT_FILE})")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            stored = {k: z[k] for k in z.files if k != "meta"}
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise InputError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None
    if meta.get("format") != _CKPT_FORMAT or meta.get("version") != _CKPT_VERSION:
        raise InputError(f"{path}: not a global-head checkpoint of version {_CKPT_VERSION}")
    got = meta.get("fingerprint", {})
    diff = sorted(k for k in expect if k != "config" and got.get(k) != expect[k])
    diff += sorted(
        f"config.{k}" for k, v in expect["config"].items() if got.get("config", {}).get(k) != v
    )
    if diff:
        raise InputError(
            f"{path}: a checkpoint of another run (differs in: {', '.join(diff)}); start again "
            "without resuming"
        )
    trees = {}
    for name, template in templates.items():
        leaves, treedef = jax.tree.flatten(template)
        try:
            new = [stored[f"{name}.{i}"] for i in range(len(leaves))]
        except KeyError:
            raise InputError(f"{path}: checkpoint arrays do not match the head") from None
        if any(a.shape != jnp.shape(b) for a, b in zip(new, leaves)):
            raise InputError(f"{path}: checkpoint arrays do not match the head")
        trees[name] = jax.tree.unflatten(
            treedef, [jnp.asarray(a, jnp.result_type(b)) for a, b in zip(new, leaves)]
        )
    return meta, trees
