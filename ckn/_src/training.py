"""Unsupervised, greedy layer-by-layer training of a CKN (no labels).

For each layer, on the outputs of the layers below (CKN_NOTES section 1):
  1. sample sub-patches at random positions of random training maps;
  2. centre / whiten them (first layer of CKN-raw / CKN-white);
  3. drop those with norm < 1e-5 and normalize the rest;
  4. sigma = the 0.1-quantile of distances between random pairs ("auto");
  5. spherical k-means filters; then, by method,
     "kmeans":         the Nystrom map of the k-means filters;
     "kmeans+nystrom": Adam on the Nystrom residual, filters renormalized
                       after each step;
     "nips14":         the kernel-approximation objective of [P2] with Adam,
                       W initialized by k-means, eta >= 0 by projection.
Everything is deterministic for a given seed.

A training set must hold at least ``MIN_SUBPATCHES_PER_FILTER`` distinct
sub-patch positions per filter of every layer (N patches x the positions of
one map), and ``num_patches`` as many samples: fewer is refused before any
work (one patch cannot train 64 filters).

Checkpoints (``train(..., checkpoint=DIR)``): after each layer the model so far
is saved to DIR (``ckn.save``; the layers not yet trained keep their initial
values) with the layer reports and a fingerprint of the config, the seed and
the training patches. ``resume=True`` continues after the last finished layer;
the random keys of the finished layers are drawn again from the seed, so the
result is the same, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ckn._src import ops
from ckn._src.config import CKNConfig
from ckn._src.errors import InputError
from ckn._src.fileio import check_patches, progress_bar
from ckn._src.kmeans import kmeans
from ckn._src.layers import CKN, KernelLayer
from ckn._src.model import load, patch_shape_of, save
from ckn._src.refine import fit_nips14, refine_nystrom

# --- Sampling ------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _sample_batch(graphdef, state, layer_index, subpatch, patches, rows, cols):
    """Sub-patches (B, r, d) of the maps feeding a layer, at top-left (rows, cols) (B, r)."""
    m = nnx.merge(graphdef, state).map_before(patches, layer_index)
    c = m.shape[-1]

    def one_map(mi, r, cc):
        take = lambda a, b: lax.dynamic_slice(mi, (a, b, 0), (subpatch, subpatch, c)).reshape(-1)  # noqa: E731
        return jax.vmap(take)(r, cc)

    return jax.vmap(one_map)(m, rows, cols)


def map_shape(model: CKN, patch_shape: tuple[int, ...], layer_index: int) -> tuple[int, ...]:
    """(H, W, C) of the map feeding ``layer_index`` for one patch of ``patch_shape``."""
    spec = jax.ShapeDtypeStruct((1, *patch_shape), jnp.float32)
    out = jax.eval_shape(lambda x: model.map_before(x, layer_index), spec)
    return out.shape[1:]


def sample_subpatches(
    model: CKN,
    layer_index: int,
    patches: np.ndarray,
    num: int,
    *,
    key: jax.Array,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Draws ``num`` sub-patches of the map feeding a layer, at random positions.

    Images are drawn without replacement (all of them when ``num`` exceeds
    their count, with several positions per image); positions are uniform
    over the sub-patches fully inside the map (no zero padding).

    Returns:
      (num, subpatch^2 * C) float32 raw sub-patch vectors.
    """
    layer = model.layers[layer_index]
    e = layer.config.subpatch
    h, w, _ = map_shape(model, patches.shape[1:], layer_index)
    n_img = patches.shape[0]
    per = max(1, math.ceil(num / n_img))
    k_img, k_pos = jax.random.split(key)
    n_use = min(n_img, math.ceil(num / per))
    images = np.sort(np.asarray(jax.random.permutation(k_img, n_img)[:n_use]))
    kr, kc = jax.random.split(k_pos)
    rows = np.asarray(jax.random.randint(kr, (n_use, per), 0, h - e + 1))
    cols = np.asarray(jax.random.randint(kc, (n_use, per), 0, w - e + 1))
    graphdef, state = nnx.split(model)
    out = []
    bs = min(batch_size, n_use)
    it = range(0, n_use, bs)
    for start in progress_bar(
        it,
        desc=f"layer {layer_index + 1}: sampling",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        idx = images[start : start + bs]
        r, c = rows[start : start + bs], cols[start : start + bs]
        pad = bs - idx.shape[0]
        x = np.asarray(patches[idx])
        if pad:  # fixed shapes: no recompilation for the last batch
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            r = np.concatenate([r, np.zeros((pad, per), r.dtype)])
            c = np.concatenate([c, np.zeros((pad, per), c.dtype)])
        sub = _sample_batch(
            graphdef, state, layer_index, e, jnp.asarray(x), jnp.asarray(r), jnp.asarray(c)
        )
        out.append(np.asarray(sub[: bs - pad]).reshape(-1, sub.shape[-1]))
    return np.concatenate(out)[:num]


def sigma_from_quantile(x: jax.Array, quantile: float = 0.1, *, key: jax.Array) -> float:
    """The ``quantile`` of ||x_i - x_j|| over random pairs (i, j = perm(i)) of rows of x."""
    j = jax.random.permutation(key, x.shape[0])
    d = jnp.linalg.norm(x - x[j], axis=1)
    d = d[j != jnp.arange(x.shape[0])]
    return float(jnp.quantile(d, quantile))


# --- Whole network -------------------------------------------------------------------------


@dataclasses.dataclass
class LayerReport:
    """What training measured for one layer."""

    sigma: float
    num_samples: int
    num_dropped: int
    kmeans_objective: list[float]
    method_loss: list[float] | None
    seconds: float


def _prepare_layer_input(layer: KernelLayer, x: np.ndarray, cfg: CKNConfig) -> np.ndarray:
    """Centres / whitens raw sub-patches of the first layer; learns the whitening."""
    if layer.preproc is None:
        return x
    centre = ops.centering_matrix(layer.config.subpatch, layer.in_channels)
    xc = x @ centre
    if cfg.input == "white":
        white = ops.whitening_matrix(xc, cfg.train.whiten_rel_eps, cfg.train.whiten_reg)
        layer.preproc.set_value(jnp.asarray(centre @ white, jnp.float32))
        return (xc @ white).astype(np.float32)
    layer.preproc.set_value(jnp.asarray(centre, jnp.float32))
    return xc.astype(np.float32)


#: Distinct sub-patch positions (and samples) a layer needs per filter.
MIN_SUBPATCHES_PER_FILTER = 10


def check_training_set(config: CKNConfig, patches: np.ndarray) -> None:
    """Refuses a training set too small for the filters of some layer (before any work).

    Layer i needs ``MIN_SUBPATCHES_PER_FILTER`` x filters distinct sub-patches:
    N x (h - e + 1)(w - e + 1) positions of its h x w input map for e x e
    sub-patches, and ``num_patches`` samples at least as many.

    Raises:
      InputError: naming the layer, the numbers and what is needed.
    """
    n = patches.shape[0]
    height, width = patches.shape[1], patches.shape[2]
    geometry = config.layer_geometry(height, width)
    need_each = MIN_SUBPATCHES_PER_FILTER
    for i, (layer, geo) in enumerate(zip(config.layers, geometry)):
        e = layer.subpatch
        grow = 0 if layer.padding == "same" else e - 1
        h, w = geo.positions[0] + grow, geo.positions[1] + grow  # the layer's input map
        per_patch = max(h - e + 1, 0) * max(w - e + 1, 0)
        need = need_each * layer.filters
        if n * per_patch < need:
            raise InputError(
                f"layer {i + 1}: {n} training patch{'es' if n != 1 else ''} of {height}x{width} "
                f"hold {n * per_patch} sub-patches of {e}x{e} ({per_patch} per patch), too few "
                f"for {layer.filters} filters (at least {need}: {need_each} per filter)"
            )
        if config.train.num_patches < need:
            raise InputError(
                f"layer {i + 1}: num_patches {config.train.num_patches} sub-patches are too few "
                f"for {layer.filters} filters (at least {need}: {need_each} per filter)"
            )


# --- Checkpoints -------------------------------------------------------------------------------

_CKPT_FORMAT, _CKPT_VERSION = "ckn-train-checkpoint", 1


def data_digest(patches: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) of a patch array's dtype, shape and bytes, read in chunks."""
    h = hashlib.sha256(f"{patches.dtype}{patches.shape}".encode())
    for i in range(0, patches.shape[0], 4096):
        h.update(np.ascontiguousarray(patches[i : i + 4096]).tobytes())
    return h.hexdigest()[:16]


def _fingerprint(config: CKNConfig, patches: np.ndarray, seed: int) -> dict:
    doc = {"config": config.to_dict(), "seed": seed, "data": data_digest(patches)}
    return json.loads(json.dumps(doc))  # as it reads back from the checkpoint


def _read_checkpoint(folder: Path, fingerprint: dict) -> tuple[CKN, dict]:
    if not (folder / "config.json").is_file():
        raise InputError(f"no checkpoint to resume in {folder}")
    model = load(folder)
    try:
        meta = json.loads((folder / "config.json").read_text())["training"]["checkpoint"]
        ok = meta["format"] == _CKPT_FORMAT and meta["version"] == _CKPT_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InputError(f"{folder}: not a training checkpoint of version {_CKPT_VERSION}")
    got = meta.get("fingerprint", {})
    diff = [k for k in ("seed", "data") if got.get(k) != fingerprint[k]]
    diff += [
        f"config.{k}" for k, v in fingerprint["config"].items() if got.get("config", {}).get(k) != v
    ]
    if diff:
        raise InputError(
            f"{folder}: a checkpoint of another training run (differs in: {', '.join(diff)})"
        )
    return model, meta


def _write_checkpoint(folder: Path, model: CKN, fingerprint: dict, reports: list) -> None:
    meta = {
        "format": _CKPT_FORMAT,
        "version": _CKPT_VERSION,
        "layers_done": len(reports),
        "fingerprint": fingerprint,
        "reports": [dataclasses.asdict(r) for r in reports],
    }
    save(model, folder, training={"checkpoint": meta})


# --- Whole network -------------------------------------------------------------------------


def train(
    config: CKNConfig,
    patches: np.ndarray,
    *,
    seed: int = 0,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
) -> tuple[CKN, list[LayerReport]]:
    """Trains a CKN without labels, layer by layer.

    Args:
      config: architecture and training settings (``config.train``).
      patches: (N, H, W) or (N, H, W, C) training patches, uint8 or float.
      seed: the same seed gives the same model.
      progress: show progress bars (stderr; plain lines when it is not a terminal).
      checkpoint: a folder; the model so far is saved there after every layer
        (see the module docstring), replacing the previous checkpoint.
      resume: continue from ``checkpoint`` (required to exist and to match the
        config, seed and patches); the result is the same, bit for bit, as an
        uninterrupted run.
      stop_after: return after this many layers in total (the later layers
        untrained); resume later from the checkpoint.

    Returns:
      (trained model, one LayerReport per layer). ``model.patch_shape`` is
      (H, W, C) of the training patches (``ckn.save`` records it and
      ``ckn.describe`` checks it).

    Raises:
      InputError: bad patches (NaN, empty, wrong shape), patches smaller than
        the network's receptive field, a training set too small for the
        filters (``check_training_set``), a checkpoint of another run or none
        to resume.
    """
    check_patches(patches)
    if config.channels == "rgb" and (patches.ndim != 4 or patches.shape[3] != 3):
        raise InputError(f"channels='rgb' needs (N, H, W, 3) patches, got shape {patches.shape}")
    config.output_shape(patches.shape[1], patches.shape[2])
    check_training_set(config, patches)
    if resume and checkpoint is None:
        raise InputError("resume needs a checkpoint folder")
    model = CKN(config, rngs=nnx.Rngs(seed))
    model.patch_shape = patch_shape_of(patches)
    key = jax.random.key(seed)
    reports: list[LayerReport] = []
    fingerprint = None if checkpoint is None else _fingerprint(config, patches, seed)
    if resume:
        done, meta = _read_checkpoint(Path(checkpoint), fingerprint)
        reports = [LayerReport(**r) for r in meta["reports"]]
        for i in range(len(reports)):
            for name in ("filters", "alpha", "bias", "linear", "preproc"):
                var = getattr(model.layers[i], name)
                if var is not None:
                    var.set_value(getattr(done.layers[i], name).get_value())
            key = jax.random.split(key, 5)[0]  # the keys that layer i drew
    n_layers = len(model.layers)
    last = n_layers if stop_after is None else min(n_layers, stop_after)
    bar = progress_bar(total=n_layers, desc="training layers", unit="layer", disable=not progress)
    bar.update(len(reports))
    try:
        for i in range(len(reports), last):
            reports.append(_train_layer(model, i, patches, key, progress))
            key = jax.random.split(key, 5)[0]
            if checkpoint is not None:
                _write_checkpoint(Path(checkpoint), model, fingerprint, reports)
            bar.update(1)
    finally:
        bar.close()
    return model, reports


def _train_layer(
    model: CKN, i: int, patches: np.ndarray, key: jax.Array, progress: bool
) -> LayerReport:
    """Trains layer i of the model in place (layers below trained), from the key of the layer."""
    config = model.config
    tc = config.train
    layer = model.layers[i]
    t0 = time.perf_counter()
    _, k_sample, k_sigma, k_km, k_fit = jax.random.split(key, 5)
    raw = sample_subpatches(
        model,
        i,
        patches,
        tc.num_patches,
        key=k_sample,
        batch_size=tc.batch_size,
        progress=progress,
    )
    x = _prepare_layer_input(layer, raw, config)
    norms = np.linalg.norm(x, axis=1)
    keep = norms >= ops.NORM_EPS
    x = jnp.asarray(x[keep] / norms[keep, None])
    p = layer.config.filters
    if x.shape[0] < p:
        raise InputError(
            f"layer {i + 1}: only {x.shape[0]} non-flat sub-patches among "
            f"{raw.shape[0]} sampled, "
            f"fewer than its {p} filters (patches too flat or too few)"
        )
    if layer.config.sigma == "auto":
        sigma = sigma_from_quantile(x, tc.sigma_quantile, key=k_sigma)
        if not sigma > 0:
            raise InputError(f"layer {i + 1}: the sigma rule gave {sigma} (all sub-patches alike)")
    else:
        sigma = float(layer.config.sigma)
    z, history = kmeans(
        x,
        p,
        key=k_km,
        iters=tc.kmeans_iters,
        spherical=True,
        progress=f"layer {i + 1}: k-means" if progress else False,
    )
    method_loss = None
    if tc.method == "nips14":
        w, eta, losses = fit_nips14(
            k_fit,
            z,
            x,
            sigma=sigma,
            steps=tc.nips14_steps,
            batch=tc.nips14_batch,
            lr=tc.nips14_lr,
        )
        layer.set_nips14(w, eta, sigma)
        method_loss = np.asarray(losses).tolist()
    else:
        if tc.method == "kmeans+nystrom":
            z, losses = refine_nystrom(
                k_fit,
                z,
                x,
                sigma=sigma,
                lam=layer.config.lam,
                steps=tc.refine_steps,
                batch=tc.refine_batch,
                lr=tc.refine_lr,
            )
            method_loss = np.asarray(losses).tolist()
        layer.set_nystrom(z, sigma)
    return LayerReport(
        sigma=sigma,
        num_samples=int(raw.shape[0]),
        num_dropped=int((~keep).sum()),
        kmeans_objective=np.asarray(history).tolist(),
        method_loss=method_loss,
        seconds=time.perf_counter() - t0,
    )
