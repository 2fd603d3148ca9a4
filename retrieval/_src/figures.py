"""Figures: contact sheets of patch groups, image retrieval results, thumbnails.

* :func:`contact_sheet` / :func:`contact_sheet_image`: a few groups of
  patches, one row per group, as a PNG image;
* :func:`save_figure`: a grid of queries and their top results, coloured by
  relevance (matplotlib, Agg backend);
* :func:`thumbnail`: an image shrunk for such a grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from ckn.files import atomic_path
from retrieval._src.data import resize_max
from retrieval._src.metrics.image import junk_sets


def contact_sheet_image(
    patches: np.ndarray,
    labels: np.ndarray,
    *,
    groups: int = 12,
    per_group: int = 10,
    seed: int = 0,
    captions: list[str] | None = None,
    gap: int = 3,
    zoom: int = 1,
) -> np.ndarray:
    """Tiles ``groups`` random groups (one row each, up to ``per_group`` patches).

    Args:
      patches: (N, S, S) or (N, S, S, 3) uint8.
      labels: (N,) group labels.
      captions: optional text per patch (N,), drawn in the row's left margin
        for the first patch of each shown group (e.g. the scene name).
      zoom: integer up-sampling factor of each patch (nearest neighbour).

    Returns:
      (H, W, 3) RGB uint8 image; rows are sorted by group label.
    """
    patches = np.asarray(patches)
    labels = np.asarray(labels)
    if patches.ndim not in (3, 4) or patches.shape[0] != labels.shape[0] or patches.shape[0] == 0:
        raise InputError(
            f"patches must be (N, S, S[, C]) with N = len(labels) > 0, "
            f"got {patches.shape}, {labels.shape}"
        )
    uniq, counts = np.unique(labels, return_counts=True)
    multi = uniq[counts >= 2] if (counts >= 2).any() else uniq
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(multi, size=min(groups, multi.size), replace=False))
    s = patches.shape[1] * zoom
    margin = 130 if captions is not None else 0
    h = len(shown) * (s + gap) + gap
    w = margin + per_group * (s + gap) + gap
    sheet = np.full((h, w, 3), 255, np.uint8)
    for r, lab in enumerate(shown):
        idx = np.flatnonzero(labels == lab)[:per_group]
        y0 = gap + r * (s + gap)
        for c, i in enumerate(idx):
            p = patches[i]
            if p.ndim == 2:
                p = np.repeat(p[:, :, None], 3, axis=2)
            if zoom > 1:
                p = np.repeat(np.repeat(p, zoom, 0), zoom, 1)
            x0 = margin + gap + c * (s + gap)
            sheet[y0 : y0 + s, x0 : x0 + s] = p
        if captions is not None:
            text = f"{captions[idx[0]]}"[:18]
            cv2.putText(
                sheet,
                text,
                (4, y0 + s // 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
            cv2.putText(
                sheet,
                f"#{int(lab)}",
                (4, y0 + s // 2 + 14),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (90, 90, 90),
                1,
                cv2.LINE_AA,
            )
    return sheet


def contact_sheet(
    ps,
    path: str | os.PathLike,
    *,
    groups: int = 12,
    per_group: int = 10,
    seed: int = 0,
    zoom: int = 1,
) -> Path:
    """Writes a contact sheet PNG of a :class:`~retrieval.PatchSet` (atomically).

    One row per group, captioned ``<scene> (<split>)`` and the group label; the
    groups are drawn at random from both splits with ``seed``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"contact sheet must be a .png file, got {path}")
    names = [
        f"{ps.scene_names[sc]} ({'test' if sp else 'train'})" for sc, sp in zip(ps.scene, ps.split)
    ]
    img = contact_sheet_image(
        ps.patches,
        ps.labels,
        groups=groups,
        per_group=per_group,
        seed=seed,
        captions=names,
        zoom=zoom,
    )
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
        if not ok:
            raise InputError(f"cannot encode PNG for {path}")
        Path(tmp).write_bytes(buf.tobytes())
    return path


def save_figure(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    labels,
    ranking: np.ndarray,
    queries: Sequence[int],
    *,
    names: Sequence[str] | None = None,
    junk=None,
    top: int = 5,
    title: str = "",
) -> Path:
    """A PNG grid: each row a query then its top results (green relevant, red not, grey junk).

    Args:
      images: (N,) images (thumbnails are fine), RGB or gray uint8.
      labels: (N,) group ids.
      ranking: (Q_all, >= top + 1) ranked ids per image (row q for query q).
      queries: the rows to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab = np.asarray(labels)
    jsets = junk_sets(junk, lab.shape[0])
    rows = len(queries)
    fig, axes = plt.subplots(rows, top + 1, figsize=(2.0 * (top + 1), 2.0 * rows), squeeze=False)
    for r, q in enumerate(queries):
        ids = [int(i) for i in ranking[q] if i >= 0 and i != q][:top]
        cells = [(q, "query", "black")] + [
            (
                i,
                f"#{j + 1}",
                "grey"
                if i in jsets[q]
                else ("green" if lab[i] == lab[q] and lab[q] >= 0 else "red"),
            )
            for j, i in enumerate(ids)
        ]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            i, tag, color = cells[c]
            im = images[i]
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
            for sp in ax.spines.values():
                sp.set_edgecolor(color)
                sp.set_linewidth(4 if c else 2)
            name = names[i] if names is not None else str(i)
            ax.set_title(f"{tag} {name}"[:28], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def thumbnail(image: np.ndarray, side: int = 160) -> np.ndarray:
    """``image`` shrunk (INTER_AREA) so that its long side is at most ``side`` pixels."""
    return resize_max(np.asarray(image), side)
