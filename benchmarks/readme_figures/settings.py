"""README "Presets": the preset table and the training defaults common to all, rendered from
the package's own settings (``ckn.PRESETS``, ``ckn.TrainConfig``), not from a result, so
that the README cannot drift from the code."""

from __future__ import annotations

import ckn
from ckn import ops

from .core import para, renderer, table, thousands

#: What a preset is for, where it is not a reconstruction of the papers' descriptor.
PURPOSE = {
    "ckn-ref64": "the authors' group reference configuration (speed benchmark)",
    "ckn-tiny": "small and fast, for tests",
}


def _sci(x: float) -> str:
    """``1e-3`` for 0.001, as the papers write small constants."""
    return f"{x:.0e}".replace("e-0", "e-")


def _input_map(c: ckn.CKNConfig) -> str:
    e = c.layers[0].subpatch
    if c.input == "raw":
        return f"centred {e}x{e} pixel sub-patches"
    if c.input == "white":
        return f"centred + whitened {e}x{e} sub-patches"
    side = ops.pooled_size(c.patch_size, c.grad_subsampling)
    centred = " cell-centred" if c.grad_pooling == "centered" else ""
    return (
        f"gradient orientations, K = {c.grad_orientations}, sigma {c.grad_sigma:g}, pooled by"
        f" {c.grad_subsampling}{centred} ({c.patch_size} -> {side})"
    )


def _layers(c: ckn.CKNConfig) -> str:
    geometry = c.layer_geometry(c.patch_size, c.patch_size)
    parts = []
    for layer, g in zip(c.layers, geometry, strict=True):
        e = layer.subpatch
        text = f"{e}x{e} x {layer.filters}, pool {layer.subsampling}"
        if layer.pooling == "centered":
            text += " cell-centred"
        if layer.pool_std is not None:
            text += f" std {layer.pool_std:g}"
        if layer.sigma != "auto":
            text += f", sigma {layer.sigma:g}"
        parts.append(f"{text} (-> {g.pooled[0]})")
    return "; ".join(parts)


def _output(c: ckn.CKNConfig) -> str:
    h, w, ch = c.output_shape(c.patch_size, c.patch_size)
    at = "" if c.patch_size == 51 else f" at {c.patch_size}x{c.patch_size}"
    return f"{h}x{w}x{ch} = {h * w * ch}-D{at}"


def _choices(c: ckn.CKNConfig) -> str:
    made = []
    if c.blur:
        made.append(
            f"{c.blur:g}-px blur before the {'gradients' if c.input == 'grad' else 'first layer'}"
        )
    if c.layers[-1].pooling == "centered":
        made.append("cell-centred last pooling")
    if c.normalize == "position":
        made.append("per-position L2")
    if c.train.whiten_reg:
        made.append(f"regularized whitening (eigenvalues + {c.train.whiten_reg:g} max)")
    default = ckn.TrainConfig()
    if (c.train.num_patches, c.train.kmeans_iters) != (default.num_patches, default.kmeans_iters):
        made.append(
            f"{thousands(c.train.num_patches)} sub-patches and {c.train.kmeans_iters} k-means"
            " iterations per layer"
        )
    if c.name in PURPOSE:
        return "; ".join([PURPOSE[c.name], *made])
    return "; ".join(made) or "none: the papers' pooling and normalization, no blur"


@renderer("presets_table")
def presets_table(results) -> str:
    """Every preset of ``ckn.PRESETS``: input map, layers, output size, reconstructed choices."""
    rows = [
        [f"`{name}`", _input_map(c), _layers(c), _output(c), _choices(c)]
        for name, c in ckn.PRESETS.items()
    ]
    header = [
        "preset",
        "input map",
        "layers (sub-patch x filters, pooling -> map side)",
        "output for 51x51",
        "choices beyond the papers (measured on the train split), or purpose",
    ]
    return table(header, rows)


@renderer("presets_common")
def presets_common(results) -> str:
    """The settings every preset shares: the defaults of LayerConfig and TrainConfig."""
    t, layer = ckn.TrainConfig(), ckn.LayerConfig()
    return para(
        "Common to all (CKN_NOTES sections 1, 2): sub-patch normalization"
        f" x / max(||x||, {_sci(ops.NORM_EPS)}); kernel kappa(u) = exp((u - 1) / sigma^2) with"
        f' sigma by the {t.sigma_quantile:g}-quantile rule ("auto"); the Nystrom map (kappa(Z^T Z)'
        f" + {_sci(layer.lam)} I)^{{-1/2}}, computed once after training and applied after pooling;"
        " Gaussian pooling with 2s+1 taps and std s/sqrt(2) (papers') unless a layer says"
        f' otherwise; "{layer.padding}" zero padding; {thousands(t.num_patches)} sub-patches per'
        f" layer and {t.kmeans_iters} spherical k-means iterations (re-seeding empty clusters with"
        " the worst-fitted sub-patch); the descriptor is the flattened last map, L2-normalized,"
        " float32; a flat patch gives the zero vector. Reconstructed training details that no"
        " source gives: Nystrom-residual refinement (`--method kmeans+nystrom`) uses Adam, lr"
        f" {_sci(t.refine_lr)}, {t.refine_steps} steps of {thousands(t.refine_batch)} sub-patches;"
        " the NIPS 2014 objective (`--method nips14`) uses pairs half random and half near"
        " neighbours, eta initialized by clipped least squares, Adam lr"
        f" {_sci(t.nips14_lr)}, {thousands(t.nips14_steps)} steps of {t.nips14_batch} pairs, with"
        " eta projected to eta >= 0. A model directory is `config.json` (the config and the"
        " training report) + `arrays.npz`."
    )
