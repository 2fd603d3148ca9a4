"""HPatches task definitions: verification pairs and retrieval lists, and their official files.

Files of split ``X`` in a tasks folder (the official benchmark's ``tasks/``, ``docs/tasks.md``):

- ``verif_pos_split-X.csv``, ``verif_neg_intra_split-X.csv``, ``verif_neg_inter_split-X.csv``:
  header ``s1,t1,idx1,s2,t2,idx2``, one pair a line: sequence, image (0 = ref, 1-5 = the target
  image of the noise level under test), patch index, for each patch of the pair. The three
  files have the same number of lines (the official code stacks them on that assumption).
- ``retr_queries_split-X.csv``, ``retr_distractors_split-X.csv``: header ``s,idx``, one
  reference patch a line.

The official files hold 10,000 queries and 20,000 distractors per split (retrieval) and are
published for the real release only; :mod:`.task_generation` makes files of the same layout
for other data.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ckn import InputError
from ckn.files import atomic_path
from retrieval._src.hpatches.data import HPatchesData

PAIR_HEADER = ("s1", "t1", "idx1", "s2", "t2", "idx2")
LIST_HEADER = ("s", "idx")

#: File name patterns by part (``{}`` = the split name).
FILES = {
    "positives": "verif_pos_split-{}.csv",
    "intra": "verif_neg_intra_split-{}.csv",
    "inter": "verif_neg_inter_split-{}.csv",
    "queries": "retr_queries_split-{}.csv",
    "distractors": "retr_distractors_split-{}.csv",
}

#: The parts each task needs.
TASK_PARTS = {
    "verification": ("positives", "intra", "inter"),
    "matching": (),
    "retrieval": ("queries", "distractors"),
}

#: Image ids of a pair: 0 = ref, 1-5 = target images.
NUM_IMAGES = 6


class Pairs(NamedTuple):
    """Patch pairs, (M,) arrays: sequence names (str), image ids 0-5, patch indices."""

    seq1: np.ndarray
    image1: np.ndarray
    idx1: np.ndarray
    seq2: np.ndarray
    image2: np.ndarray
    idx2: np.ndarray


class PatchList(NamedTuple):
    """Reference patches, (M,) arrays: sequence names (str), patch indices."""

    seq: np.ndarray
    idx: np.ndarray


@dataclasses.dataclass(frozen=True)
class HPatchesTasks:
    """The task definitions of one split (parts a task does not need may be None).

    Attributes:
      split: the split name (it names the files).
      positives, intra, inter: verification pairs: positives, intra- and inter-sequence
        negatives, of one length.
      queries, distractors: retrieval query and distractor reference patches.
    """

    split: str
    positives: Pairs | None = None
    intra: Pairs | None = None
    inter: Pairs | None = None
    queries: PatchList | None = None
    distractors: PatchList | None = None


def _read_table(path: Path, header: tuple[str, ...], kinds: str) -> list[np.ndarray]:
    """Columns of a task file; ``kinds``: one letter a column, s = sequence name, i = integer."""
    if not path.is_file():
        raise InputError(f"task file missing: {path}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(c.strip() for c in rows[0]) != header:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise InputError(f"{path}: header must be {','.join(header)}, got {got}")
    cols: list[list] = [[] for _ in header]
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
        for c, (kind, value) in enumerate(zip(kinds, row)):
            value = value.strip()
            if kind == "i":
                try:
                    value = int(value)
                except ValueError:
                    raise InputError(
                        f"{path}:{line}: {header[c]} must be an integer, got {value!r}"
                    ) from None
            cols[c].append(value)
    if not cols[0]:
        raise InputError(f"{path}: no rows")
    return [np.array(c, dtype=object if k == "s" else np.int64) for c, k in zip(cols, kinds)]


def read_pairs(path: str | os.PathLike) -> Pairs:
    """A verification pair file (``s1,t1,idx1,s2,t2,idx2``); syntax checked only."""
    cols = _read_table(Path(path), PAIR_HEADER, "siisii")
    cols[0], cols[3] = cols[0].astype(str), cols[3].astype(str)
    return Pairs(*cols)


def read_patch_list(path: str | os.PathLike) -> PatchList:
    """A retrieval query or distractor file (``s,idx``); syntax checked only."""
    seq, idx = _read_table(Path(path), LIST_HEADER, "si")
    return PatchList(seq.astype(str), idx)


def _check_patches(seq, idx, data: HPatchesData, where: str, what: str = "") -> None:
    names, inverse = np.unique(np.asarray(seq, dtype=str), return_inverse=True)
    for k, s in enumerate(names):
        if s not in data.sequences:
            row = int(np.flatnonzero(inverse == k)[0]) + 1
            raise InputError(
                f"{where}, row {row}: {what}sequence {s!r} is not a test sequence of split "
                f"{data.split.name!r}"
            )
    counts = np.array([data.counts[s] for s in names], dtype=np.int64)[inverse]
    bad = np.flatnonzero((idx < 0) | (idx >= counts))
    if bad.size:
        k = bad[0]
        raise InputError(
            f"{where}, row {k + 1}: {what}patch index {idx[k]} out of range for {seq[k]} "
            f"({counts[k]} patches)"
        )


def check_pairs(pairs: Pairs, data: HPatchesData, where: str) -> None:
    """InputError (naming ``where`` and the row) for pairs outside the test sequences."""
    for side, (seq, image, idx) in enumerate(
        ((pairs.seq1, pairs.image1, pairs.idx1), (pairs.seq2, pairs.image2, pairs.idx2)), 1
    ):
        bad = np.flatnonzero((image < 0) | (image >= NUM_IMAGES))
        if bad.size:
            raise InputError(
                f"{where}, row {bad[0] + 1}: image id t{side} = {image[bad[0]]} not in 0-5"
            )
        _check_patches(seq, idx, data, where, f"patch {side}: ")


def check_tasks(tasks: HPatchesTasks, data: HPatchesData, task_names, *, paths=None) -> None:
    """InputError unless ``tasks`` holds valid parts for ``task_names`` on ``data``.

    Args:
      tasks: the definitions.
      data: the release and split; every pair and list must refer to its test sequences.
      task_names: the tasks to run (their parts must be present).
      paths: file paths by part, for the messages (default: the part names).
    """
    paths = paths or {}
    where = lambda part: str(paths.get(part, f"retrieval/verification {part}"))
    for name in task_names:
        for part in TASK_PARTS[name]:
            if getattr(tasks, part) is None:
                raise InputError(f"the {name} task needs {FILES[part].format(tasks.split)}")
    if "verification" in task_names:
        for part in TASK_PARTS["verification"]:
            check_pairs(getattr(tasks, part), data, where(part))
        lengths = {part: getattr(tasks, part).seq1.shape[0] for part in TASK_PARTS["verification"]}
        if len(set(lengths.values())) > 1:
            raise InputError(
                "verification needs as many negatives of each kind as positives, got "
                + ", ".join(f"{where(p)}: {n}" for p, n in lengths.items())
            )
    if "retrieval" in task_names:
        for part in TASK_PARTS["retrieval"]:
            plist = getattr(tasks, part)
            _check_patches(plist.seq, plist.idx, data, where(part))


def task_paths(tasks_dir: str | os.PathLike, split: str) -> dict[str, Path]:
    """The file of each part of split ``split`` in a tasks folder."""
    return {part: Path(tasks_dir) / pattern.format(split) for part, pattern in FILES.items()}


def read_tasks(
    tasks_dir: str | os.PathLike, data: HPatchesData, task_names=("verification", "retrieval")
) -> HPatchesTasks:
    """Reads the task files of ``data``'s split that ``task_names`` need, and checks them.

    Args:
      tasks_dir: a folder of official-layout task files (e.g. the benchmark's ``tasks/``).
      data: the release and split (files ``*_split-<split name>.csv``).
      task_names: the tasks to run; matching needs no file.

    Raises:
      InputError (naming the file and row): a missing file, a bad header or row, a sequence
        outside the split's test sequences, an index out of range, pair files of differing
        lengths.
    """
    paths = task_paths(tasks_dir, data.split.name)
    parts = {}
    for name in task_names:
        for part in TASK_PARTS[name]:
            reader = read_pairs if part in TASK_PARTS["verification"] else read_patch_list
            parts[part] = reader(paths[part])
    tasks = HPatchesTasks(data.split.name, **parts)
    check_tasks(tasks, data, task_names, paths=paths)
    return tasks


def _write_rows(path: Path, header, columns) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(zip(*[c.tolist() for c in columns]))


def write_tasks(tasks_dir: str | os.PathLike, tasks: HPatchesTasks) -> dict[str, Path]:
    """Writes the parts present in ``tasks`` as official-layout files (each atomically).

    The files read back with :func:`read_tasks` and with the official code
    (``utils/tasks.py``, pandas ``read_csv``).

    Returns:
      The path of each file written, by part.
    """
    written = {}
    for part, path in task_paths(tasks_dir, tasks.split).items():
        value = getattr(tasks, part)
        if value is None:
            continue
        header = PAIR_HEADER if isinstance(value, Pairs) else LIST_HEADER
        _write_rows(path, header, list(value))
        written[part] = path
    return written
