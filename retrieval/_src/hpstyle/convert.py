"""HPatches-layout data -> the project's patch file (:class:`~retrieval._src.data.PatchSet`).

A group is one reference patch across its 16 files (``ref`` and the 15
jittered views ``e1..t5``); the scene is the sequence and the split comes from
the sequence. Patches are resized to the side the models use (51, RomePatches'
size, :data:`~retrieval._src.regions.PATCH_SIZE`, what the presets are built
for) with ``cv2.INTER_AREA``, the interpolation the project uses to shrink
images; ``size=None`` keeps 65. ``info`` records both.

Memory: the output array is allocated once (patch counts come from the PNG
headers) and filled one sequence at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ckn import InputError
from retrieval._src.data.patchset import SPLIT_NAMES, TEST, TRAIN, VERSION, PatchSet
from retrieval._src.hpatches.layout import PATCH_SIZE as HPATCHES_SIZE
from retrieval._src.hpatches.layout import TYPES, read_sequence, sequence_count, sequence_folders
from retrieval._src.hpatches.splits import resolve_split
from retrieval._src.patch_describer import resize_patches
from retrieval._src.regions import PATCH_SIZE


def _splits(names: list[str], split, root: Path) -> dict[str, int]:
    """Sequence name -> split id, for the sequences to convert (in folder order)."""
    if split is None or isinstance(split, str):
        s = resolve_split("all" if split is None else split, names, where=str(root))
        return {n: TEST if n in s.test else TRAIN for n in names if n in s.test + s.train}
    if isinstance(split, Mapping):
        unknown = sorted(set(split) - set(names))
        if unknown:
            raise InputError(
                f"{root}: the split names sequences absent from the folder: "
                f"{', '.join(unknown[:5])}"
            )
        bad = sorted({str(v) for v in split.values()} - set(SPLIT_NAMES))
        if bad:
            raise InputError(f"split values must be 'train' or 'test', got {bad[0]!r}")
        return {n: SPLIT_NAMES.index(split[n]) for n in names if n in split}
    test = set(split)
    unknown = sorted(test - set(names))
    if unknown:
        raise InputError(f"{root}: test sequences absent from the folder: {', '.join(unknown[:5])}")
    return {n: TEST if n in test else TRAIN for n in names}


def hpatches_to_patchset(
    root: str | os.PathLike,
    *,
    split: str | Mapping[str, str] | Iterable[str] | None = None,
    size: int | None = PATCH_SIZE,
) -> PatchSet:
    """Reads an ``hpatches-release`` folder as a :class:`PatchSet`.

    Args:
      root: the folder of sequences (``<seq>/ref.png``, ``e1.png``, ...).
      split: an HPatches split name (``a``, ``b``, ``c``, ``full``, ``illum``,
        ``view``: its train and test sequences, the others left out; ``all``:
        every sequence as test), a mapping sequence -> ``"train"`` / ``"test"``
        (sequences it does not name are left out), an iterable of test
        sequences (every other sequence is train), or None (``all``).
      size: output patch side (default 51, resized with ``cv2.INTER_AREA``);
        None keeps 65.

    Returns:
      A PatchSet: rows sequence by sequence, file by file (``image`` = the file's
      index in :data:`~retrieval._src.hpatches.TYPES`: 0 ref, 1-5 e1-e5,
      6-10 h1-h5, 11-15 t1-t5), patch by patch; ``labels`` = one group per
      reference patch, numbered across the file; ``x``, ``y``, ``scale``,
      ``angle`` NaN (the layout does not keep them).

    Raises:
      InputError: not an HPatches layout (a folder not named i_* / v_*, a
        missing type, a file that is not a column of 65 x 65 patches, differing
        counts), an unknown split, a split naming absent sequences or with
        values other than train / test, nothing to convert.
    """
    root = Path(root)
    if size is not None and size < 8:
        raise InputError(f"size must be >= 8, got {size}")
    out_size = HPATCHES_SIZE if size is None else int(size)
    folders = sequence_folders(root)
    splits = _splits(list(folders), split, root)
    seqs = [folders[n] for n in folders if n in splits]
    counts = [sequence_count(s) for s in seqs]  # every layout check first
    total = sum(counts) * len(TYPES)
    if total == 0:
        raise InputError(f"{root}: no sequence to convert")
    patches = np.empty((total, out_size, out_size), np.uint8)
    labels = np.empty(total, np.int64)
    split_arr = np.empty(total, np.uint8)
    scene = np.empty(total, np.int32)
    image = np.empty(total, np.int32)
    row, group = 0, 0
    for si, (seq, n) in enumerate(zip(seqs, counts)):
        data = read_sequence(seq)
        for k in range(len(TYPES)):
            sl = slice(row, row + n)
            patches[sl] = resize_patches(data[k], out_size)
            labels[sl] = group + np.arange(n)
            image[sl] = k
            row += n
        split_arr[row - n * len(TYPES) : row] = splits[seq.name]
        scene[row - n * len(TYPES) : row] = si
        group += n
    return PatchSet.without_frames(
        patches,
        labels,
        split_arr,
        scene,
        image,
        [s.name for s in seqs],
        {
            "version": VERSION,
            "source": "hpatches",
            "root": str(root),
            "types": list(TYPES),
            "size": out_size,
            "resized_from": HPATCHES_SIZE if out_size != HPATCHES_SIZE else None,
            "interpolation": "INTER_AREA" if out_size != HPATCHES_SIZE else None,
        },
    )
