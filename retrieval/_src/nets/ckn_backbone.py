"""A trained CKN as a fully convolutional backbone for global image descriptors.

``load_backbone("ckn", weights=MODEL_DIR)`` returns a :class:`CknBackbone`: the model's input map
and kernel layers applied to a whole image (a CKN is fully convolutional: the network that maps a
51 x 51 patch to a 4 x 4 x 64 map maps a 1024 x 768 image to a 64 x 48 x 64 one). It has the
interface of :class:`retrieval._src.nets.backbone.Backbone` where that makes sense: ``features``,
``stride``, ``min_size``, ``channels``; a CKN has no ImageNet classifier, so ``classifier``,
``logits``, ``head`` and ``codes`` raise ``InputError`` (class activation maps need a CNN).

Geometry. ``stride`` is the product of the subsamplings (the gradient map's included): 16 for
ckn-grad (2 x 2 x 4), 14 for ckn-raw / ckn-white, 12 for ckn-ref64, 4 for ckn-tiny. An image is
edge-padded at the bottom and right to a multiple of the stride, so every map of the network has
a size divisible by the next subsampling: the cells of "centered" pooling (ckn-grad's last layer)
are then exactly ``s`` apart and the network commutes with shifts by the stride, which makes tiles
stitch exactly. The output has ``ceil(H / stride) x ceil(W / stride)`` cells. An image whose sides
are multiples of the stride is not padded: its map has the bits of the jitted ``model(image)``.
``receptive_field`` is ``2 R + 1`` pixels, R the sum over stages of each stage's reach (blur radius
ceil(4 std), 1 for the gradient, e // 2 for a sub-patch, s for strided pooling and 2 s, an upper
bound, for centered pooling, each times the stride before the stage). ``min_size`` is the smallest
side the network accepts, at least one stride: it is not the receptive field, which is larger than
the patches a model is trained on (19 px for ckn-tiny's 16-px patches: training pads with zeros
too).

Memory. Measured with XLA's ``memory_analysis`` of the jitted map at 1024 x 1024 on CPU (random
filters, one image): temporaries of 134 MiB for ckn-grad, 531 MiB for ckn-raw / ckn-white, 519 MiB
for ckn-ref64 (peak resident memory of the whole process 0.57 GiB and 1.0 GiB for ckn-grad and
ckn-raw), about twice the largest float32 map (``largest_map_bytes``). No preset needs tiling at
1024 px; a wider model or a larger image does. ``features`` estimates
``MEMORY_FACTOR * largest_map_bytes`` per image and, above ``max_bytes`` (2 GiB), runs the image in
tiles: tile windows start at multiples of the stride and overlap by a margin of at least R pixels
(rounded up to a multiple of the stride) on each side, so every kept cell sees exactly the pixels
it sees in the whole image; windows are clipped to the image, where the border treatment
(mirrored blur, one-sided gradient, zero padding) is the whole image's. Tiled and untiled maps agree
to float rounding (tests: within 1e-5). Models with a "valid"-padding layer (no preset) always run
untiled. Batches are split into groups whose estimate fits ``max_bytes``.

Compilation: one jitted function per (group size, padded image size) and per tile size; with
``max_bytes`` unchanged, images of the same padded size share one compilation.

References:
  M. Paulin et al., "Local convolutional features with unsupervised training for image
  retrieval", ICCV 2015 (Patch-CKN); J. Mairal et al., "Convolutional kernel networks", NIPS 2014
  (every layer is sub-patch embedding and Gaussian pooling: convolutional at every stage).
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ckn
from ckn import InputError
from retrieval._src.nets import check_image_batch, check_precision

#: Name of the CKN backbone in ``load_backbone``.
CKN_BACKBONE = "ckn"
#: Default memory budget of one jitted call of ``CknBackbone.features``.
MAX_BYTES = 2 << 30
#: Estimated peak temporaries of one image / its largest float32 map; XLA's memory_analysis gives
#: 2.0-2.1 for the four presets at 1024 x 1024 (see the module docstring): 3 leaves a margin.
MEMORY_FACTOR = 3


def _pool_reach(subsampling: int, pooling: str) -> int:
    """Cells of the pooled map's input that an output cell reaches beyond its anchor ``s * j``.

    Strided: taps ``s j - s .. s j + s``. Centered, on a map whose size is a multiple of s: the
    centre is ``s j + (s - 1) / 2`` and taps lie within s of it, so 2 s bounds the reach.
    """
    if subsampling == 1:
        return 0
    return subsampling if pooling == "strided" else 2 * subsampling


def network_geometry(config: ckn.CKNConfig) -> tuple[int, int]:
    """(stride, reach R) of a CKN in input pixels; its receptive field is ``2 R + 1``.

    Args:
      config: the network's configuration.

    Returns:
      stride: the product of all subsamplings (the gradient map's included).
      reach: an upper bound on how far, in pixels, an output cell's value depends on input
        pixels from the cell's anchor ``stride * j`` (see the module docstring).
    """
    reach = max(1, math.ceil(4.0 * config.blur)) if config.blur > 0 else 0
    stride = 1
    if config.input == "grad":
        reach += 1  # central differences
        reach += _pool_reach(config.grad_subsampling, config.grad_pooling)
        stride = config.grad_subsampling
    for layer in config.layers:
        reach += (layer.subpatch // 2) * stride
        reach += _pool_reach(layer.subsampling, layer.pooling) * stride
        stride *= layer.subsampling
    return stride, reach


def largest_map_bytes(config: ckn.CKNConfig, height: int, width: int) -> int:
    """Bytes of the largest float32 map the network computes on one height x width image.

    Args:
      config: the network's configuration.
      height, width: image size in pixels (valid for the network).

    Returns:
      The size of the biggest of: the gradient map (grad input), each layer's map of sub-patch
      embeddings before pooling, and the first layer's pre-processed sub-patch vectors (raw and
      white inputs: centring / whitening materializes them).
    """
    sizes = [height * width * config.grad_orientations] if config.input == "grad" else []
    for i, (layer, geo) in enumerate(zip(config.layers, config.layer_geometry(height, width))):
        hw = geo.positions[0] * geo.positions[1]
        sizes.append(hw * layer.filters)
        if i == 0 and config.input in ("raw", "white"):
            sizes.append(hw * layer.subpatch**2 * geo.in_channels)
    return 4 * max(sizes)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("precision",))
def _ckn_map(graphdef, state, images, *, precision):
    """uint8 (N, H, W[, C]) images -> (N, H', W', p) last map of the merged CKN."""
    return nnx.merge(graphdef, state)(images, precision=precision)


def _tile_windows(n_cells: int, core: int, margin: int, window: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis, in cells: (window start, core start, core length).

    Core cells [a, a + core) are computed in a window of ``window`` cells that starts at
    ``clamp(a - margin, 0, n_cells - window)``: each side of the core is either at least
    ``margin`` cells inside the window or on the image border.
    """
    if n_cells <= window:
        return [(0, 0, n_cells)]
    return [
        (min(max(a - margin, 0), n_cells - window), a, min(core, n_cells - a))
        for a in range(0, n_cells, core)
    ]


class CknBackbone(nnx.Module):
    """A trained CKN applied to whole images: conv features for global pooling heads.

    Built by ``load_backbone("ckn", weights=MODEL_DIR)`` (or directly from a ``ckn.CKN``).
    Images are uint8 (N, H, W, 3) RGB or (N, H, W) gray; the model's ``channels`` setting selects
    what it uses (luminance for "gray", the green channel for "green"); a gray image given to an
    "rgb" model is repeated to three channels (with a warning).

    Attributes:
      name: "ckn:" followed by the model directory (or "ckn" for a model given as an object).
      model: the ``ckn.CKN``.
      stride: input pixels per cell of the map (the product of the subsamplings).
      receptive_field: 2 R + 1 pixels, R the reach of ``network_geometry``.
      min_size: smallest image side accepted (at least ``stride``).
      channels: p, the last layer's filters.
      precision: "highest" or "default" matrix products.
      max_bytes: memory budget of one jitted call (estimate, see the module docstring).

    Examples:
      >>> net = load_backbone("ckn", weights="models/ckn-grad")
      >>> feats = net.features(images)  # (N, H, W, 3) uint8 -> (N, ceil(H/16), ceil(W/16), 64)
      >>> vectors = retrieval.image.gem(feats)  # any pooling head
    """

    def __init__(
        self,
        model: ckn.CKN,
        *,
        name: str = CKN_BACKBONE,
        precision: str | None = None,
        max_bytes: int = MAX_BYTES,
    ):
        if not isinstance(model, ckn.CKN):
            raise InputError(f"CknBackbone needs a ckn.CKN model, got {type(model).__name__}")
        precision = model.precision if precision is None else precision
        check_precision(precision)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InputError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.name = name
        self.model = model
        self.precision = precision
        self.max_bytes = max_bytes
        cfg = model.config
        self.stride, self._reach = network_geometry(cfg)
        self.receptive_field = 2 * self._reach + 1
        self.channels = int(cfg.layers[-1].filters)
        self._tileable = all(layer.padding == "same" for layer in cfg.layers)
        self.min_size = self._smallest_side()

    def _smallest_side(self) -> int:
        side = self.stride
        while True:
            try:
                self.model.config.layer_geometry(side, side)
                return side
            except InputError:
                side += 1

    # ------------------------------------------------------------------ inputs

    def _images(self, images) -> np.ndarray:
        if not isinstance(images, (np.ndarray, jax.Array)):
            images = np.asarray(images)
        shape = check_image_batch(
            images, min_size=self.min_size, name=self.name, stride=self.stride
        )
        images = np.asarray(images)
        if len(shape) == 3 and self.model.config.channels == "rgb":
            warnings.warn("gray images (N, H, W): repeated to RGB", UserWarning, stacklevel=3)
            images = np.repeat(images[..., None], 3, axis=-1)
        return images

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) rounded up to multiples of ``stride`` (the size the network runs on)."""
        s = self.stride
        return -(-height // s) * s, -(-width // s) * s

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the map of a height x width image: ceil(H / stride), ceil(W / stride).

        Models with a "valid"-padding layer give the model's own (smaller) map size.
        """
        hp, wp = self.padded_size(height, width)
        return self.model.config.output_shape(hp, wp)[:2]

    def estimate_bytes(self, height: int, width: int) -> int:
        """Estimated peak memory of one padded height x width image (``MEMORY_FACTOR`` x map)."""
        hp, wp = self.padded_size(height, width)
        return MEMORY_FACTOR * largest_map_bytes(self.model.config, hp, wp)

    # ------------------------------------------------------------------ maps

    def _run(self, images: np.ndarray) -> jax.Array:
        graphdef, state = nnx.split(self.model)
        return _ckn_map(graphdef, state, jnp.asarray(images), precision=self.precision)

    def lower_features(self, images) -> jax.stages.Lowered:
        """The jitted CKN map lowered for ``images`` (N, H, W[, 3]) uint8, untiled (nothing runs).

        ``.compile().memory_analysis()`` gives XLA's account of the map (the basis of
        :meth:`estimate_bytes`).
        """
        graphdef, state = nnx.split(self.model)
        return _ckn_map.lower(graphdef, state, jnp.asarray(images), precision=self.precision)

    def _tile_cells(self, hp: int, wp: int) -> int:
        """Core side, in cells, of the largest square tile within the budget (>= 1)."""
        s, margin = self.stride, -(-self._reach // self.stride)
        core = max(hp, wp) // s
        while core > 1:
            side = (core + 2 * margin) * s
            if self.estimate_bytes(min(side, hp), min(side, wp)) <= self.max_bytes:
                break
            core = (core + 1) // 2
        return core

    def _tiled(self, image: np.ndarray) -> jax.Array:
        """One padded image (1, Hp, Wp[, C]) in tiles -> (1, Hp / s, Wp / s, p)."""
        s = self.stride
        hp, wp = image.shape[1:3]
        margin = -(-self._reach // s)
        core = self._tile_cells(hp, wp)
        window = core + 2 * margin
        rows = _tile_windows(hp // s, core, margin, window)
        cols = _tile_windows(wp // s, core, margin, window)
        out = np.zeros((1, hp // s, wp // s, self.channels), np.float32)
        win_h, win_w = min(window, hp // s), min(window, wp // s)
        maps, row = {}, None  # cores clamped at a border share a window: computed once
        for wy, ay, ny in rows:
            if wy != row:  # keep one row of tile maps (small: the maps are subsampled)
                maps, row = {}, wy
            for wx, ax, nx in cols:
                if wx not in maps:
                    tile = image[:, wy * s : (wy + win_h) * s, wx * s : (wx + win_w) * s]
                    maps[wx] = np.asarray(self._run(tile))
                m = maps[wx]
                oy, ox = ay - wy, ax - wx
                out[:, ay : ay + ny, ax : ax + nx] = m[:, oy : oy + ny, ox : ox + nx]
        return jnp.asarray(out)

    def features(self, images) -> jax.Array:
        """The CKN's last map of whole images: (N, H, W[, 3]) uint8 -> (N, h, w, p) float32.

        h = ceil(H / stride), w = ceil(W / stride) (the image is edge-padded to multiples of the
        stride, see the module docstring); images above the memory budget run in tiles.

        Raises:
          InputError: not uint8, a wrong shape, an empty batch, or a side below ``min_size``.
        """
        images = self._images(images)
        n, h, w = images.shape[:3]
        hp, wp = self.padded_size(h, w)
        if (hp, wp) != (h, w):
            pad = [(0, 0), (0, hp - h), (0, wp - w)] + [(0, 0)] * (images.ndim - 3)
            images = np.pad(images, pad, mode="edge")
        per_image = self.estimate_bytes(hp, wp)
        if per_image > self.max_bytes and self._tileable:
            return jnp.concatenate([self._tiled(images[i : i + 1]) for i in range(n)])
        group = min(n, max(1, self.max_bytes // per_image))
        if group == n:
            return self._run(images)
        out = []
        for i in range(0, n, group):
            chunk = images[i : i + group]
            if len(chunk) < group:  # pad the last group: one compilation per group size
                chunk = np.concatenate([chunk, np.zeros_like(images[: group - len(chunk)])])
            out.append(self._run(chunk)[: min(group, n - i)])
        return jnp.concatenate(out)

    # ------------------------------------------------------------------ no classifier

    def _no_classifier(self) -> InputError:
        return InputError(
            f"{self.name} has no classifier; CAM pooling needs efficientnet-lite0, resnet50 or "
            "resnet101"
        )

    @property
    def classifier(self):
        """A CKN has no classifier: always raises ``InputError``."""
        raise self._no_classifier()

    def logits(self, images):
        """A CKN has no classifier: always raises ``InputError``."""
        raise self._no_classifier()

    def head(self, features):
        """A CKN has no classifier: always raises ``InputError``."""
        raise self._no_classifier()

    def codes(self, images):
        """A CKN has no fc6 codes (VGG16 only): always raises ``InputError``."""
        raise InputError(f"{self.name} has no fc6 codes (vgg16 only)")


def load_ckn_backbone(
    weights: str | os.PathLike | ckn.CKN | None,
    *,
    precision: str | None = None,
    max_bytes: int = MAX_BYTES,
) -> CknBackbone:
    """A :class:`CknBackbone` from a CKN model directory (``ckn train``) or a ``ckn.CKN``.

    Args:
      weights: the model directory written by ``ckn.save`` / ``ckn train``, or the model itself.
      precision: "highest" or "default"; None: the saved model's ("highest").
      max_bytes: memory budget of one jitted call; larger images run in tiles.

    Returns:
      The backbone, named "ckn:" + the directory.

    Raises:
      InputError: no weights, a missing or corrupt model directory, a bad precision.
    """
    if weights is None:
        raise InputError("ckn needs weights=MODEL_DIR: a CKN model directory (ckn train)")
    if isinstance(weights, ckn.CKN):
        return CknBackbone(weights, precision=precision, max_bytes=max_bytes)
    if not isinstance(weights, (str, os.PathLike)):
        raise InputError(
            f"ckn needs weights=MODEL_DIR (a path) or a ckn.CKN, got {type(weights).__name__}"
        )
    if precision is not None:
        check_precision(precision)
    model = ckn.load(weights, precision=precision or "highest")
    return CknBackbone(
        model, name=f"{CKN_BACKBONE}:{os.fspath(weights)}", precision=precision, max_bytes=max_bytes
    )
