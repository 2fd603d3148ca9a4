"""A picture of one query of a saved index: the query, then its top results with their scores.

Used by ``ckn index query --png``. Results whose image file is gone are drawn
as a grey square with the word "missing".
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckn import InputError
from retrieval._src.figures import thumbnail

#: Result cells per row.
COLUMNS = 6


def query_figure(
    path: str | os.PathLike,
    query: np.ndarray,
    results: Sequence[np.ndarray | None],
    scores: Sequence[float],
    names: Sequence[str],
    *,
    title: str = "",
    side: int = 160,
) -> Path:
    """Writes a PNG: the query (black frame), then each result with its rank, score and name.

    Args:
      path: the PNG to write (directly: callers wrap it in ``ckn.files.atomic_path``).
      query: the query image, uint8 RGB or gray.
      results: result images (None: not found), best first.
      scores: their scores.
      names: their paths, as shown.
      title: a line above the grid.
      side: thumbnails' long side in pixels.

    Returns:
      ``path``.
    """
    if not (len(results) == len(scores) == len(names)):
        raise InputError("query_figure: results, scores and names differ in length")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(thumbnail(query, side), "query", "black")]
    for r, (im, s, name) in enumerate(zip(results, scores, names)):
        label = f"#{r + 1}  {s:.3f}\n{_short(name)}"
        if im is None:
            cells.append((np.full((side, side), 200, np.uint8), label + "\n(missing)", "grey"))
        else:
            cells.append((thumbnail(im, side), label, "tab:blue"))
    cols = min(COLUMNS, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for i, (im, label, colour) in enumerate(cells):
        ax = axes[i // cols, i % cols]
        ax.axis("on")
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=255)
        for sp in ax.spines.values():
            sp.set_edgecolor(colour)
            sp.set_linewidth(3 if i == 0 else 1.5)
        ax.set_title(label, fontsize=7)
    top = 1.0
    if title:
        top = _fit_title(fig, title)
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
    return path


def _fit_title(fig, title: str) -> float:
    """Sets the figure's title, wrapped to its width (a grid of one or two cells is narrower
    than a long title), and makes the figure taller by the title's height; returns the
    height fraction left below it."""
    text = fig.suptitle(title, fontsize=9)
    renderer = fig.canvas.get_renderer()
    width = text.get_window_extent(renderer).width
    room = 0.96 * fig.bbox.width
    if width > room:
        chars = max(8, int(len(title) * room / width))
        text.set_text(textwrap.fill(title, chars, break_on_hyphens=False))
    need = (text.get_window_extent(renderer).height + 8) / fig.dpi  # inches, with a margin
    w, h = fig.get_size_inches()
    fig.set_size_inches(w, h + need)  # the grid keeps its height
    return 1 - need / (h + need)


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]
