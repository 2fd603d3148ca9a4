"""An HPatches release folder opened for one split: names and counts now, patches on demand."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retrieval._src.hpatches.layout import TYPES, read_sequence, sequence_count, sequence_folders
from retrieval._src.hpatches.splits import Split, resolve_split


@dataclasses.dataclass(frozen=True)
class HPatchesData:
    """An ``hpatches-release`` folder and a split (see :func:`load_hpatches`).

    Attributes:
      root: the release folder.
      split: the split; its sequences are all present and checked.
      counts: number N of patches of each sequence of the split (train and test), by name.
    """

    root: Path
    split: Split
    counts: dict[str, int]

    @property
    def sequences(self) -> tuple[str, ...]:
        """The test sequences, sorted: the ones the tasks evaluate."""
        return self.split.test

    def patches(self, name: str, types: tuple[str, ...] = TYPES) -> np.ndarray:
        """(16, N, 65, 65) uint8 patches of one sequence, decoded now (types as ``TYPES``).

        ``types`` selects some types only: (len(types), N, 65, 65).
        """
        return read_sequence(self.root / name, types)

    def iter_patches(self, names=None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, (16, N, 65, 65) uint8) for each sequence (default: the test ones), in turn."""
        for name in self.sequences if names is None else names:
            yield name, self.patches(name)


def load_hpatches(root: str | os.PathLike, split: str = "full") -> HPatchesData:
    """Opens an ``hpatches-release`` folder for a split, checking its layout first.

    Only the PNG headers are read (sizes and counts of every type of every sequence of the
    split); patches are decoded later, one sequence at a time.

    Args:
      root: the release folder, ``root/<sequence>/{ref,e1..e5,h1..h5,t1..t5}.png``.
      split: ``a``, ``b``, ``c``, ``full``, ``illum``, ``view`` (the official lists) or ``all``
        (every sequence of the folder as test).

    Raises:
      InputError (one line naming the file or the sequences): not a release folder, a bad
        sequence (see ``sequence_count``), an unknown split, sequences of the split missing.
    """
    folders = sequence_folders(root)
    resolved = resolve_split(split, folders, where=str(root))
    counts = {name: sequence_count(folders[name]) for name in resolved.train + resolved.test}
    return HPatchesData(Path(root), resolved, counts)
