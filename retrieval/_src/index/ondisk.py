"""Files of an index larger than memory: streamed vectors and faiss on-disk inverted lists.

The recipe of faiss' ``demos/demo_ondisk_ivf.py`` and ``faiss.contrib.ondisk``: an
IVF-PQ index is trained once; each shard adds its vectors to a copy of the trained
index (ids = global row numbers) and writes it (:func:`write_part_codes`); the merge
reads every shard's inverted lists memory-mapped (``IO_FLAG_MMAP``) and writes their
union into one ``OnDiskInvertedLists`` file (:func:`merge_invlists`); a query opens the
merged index with its lists memory-mapped, read-only (:func:`open_ondisk`).

The float32 vectors go the same way: :func:`concat_npy` writes one ``.npy`` from the
parts' files with plain reads and writes of ``BLOCK_BYTES`` at a time (no memory map:
pages of a mapped file that were touched count as the process' resident memory, and the
merge touches every page), checking each part's SHA-256 on the way; the index then maps
it (``np.load(mmap_mode="r")``) and reads only the rows it re-scores.

faiss prints two lines on the C standard output here (``OnDiskInvertedLists`` resizing
its file; ``IO_FLAG_ONDISK_SAME_DIR`` renaming it); :func:`_c_stdout_to_stderr` sends
the first to stderr, and :func:`open_ondisk` points the lists at their file itself
instead of using the flag, so a query prints nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckn import InputError
from retrieval._src.ivfpq import _faiss_threads

#: Bytes read and written at a time when streaming vectors (64 MiB).
BLOCK_BYTES = 64 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read ``BLOCK_BYTES`` at a time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def npy_layout(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset in bytes) of a C-ordered ``.npy`` file, read from its header.

    Raises:
      InputError: not an ``.npy`` file, or Fortran-ordered.
    """
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
            if major not in read:
                raise ValueError(f"npy format version {major} is not supported")
            shape, fortran, dtype = read[major](f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if fortran:
        raise InputError(f"{path}: Fortran-ordered array, expected C order")
    return tuple(shape), np.dtype(dtype), offset


def concat_npy(
    sources: Sequence[tuple[str | os.PathLike, str]], dest: str | os.PathLike, dim: int
) -> int:
    """Writes one (N, dim) float32 ``.npy`` from parts' files, streamed, checking SHA-256s.

    Args:
      sources: (path of an (n_i, dim) float32 ``.npy``, its expected SHA-256), in order.
      dest: the file to write (N = sum of n_i rows).
      dim: the row dimension.

    Returns:
      N, the number of rows written.

    Raises:
      InputError: a file of another dtype or dimension, or whose bytes changed.
    """
    layouts = []
    for path, _ in sources:
        shape, dtype, offset = npy_layout(path)
        if len(shape) != 2 or shape[1] != dim or dtype != np.dtype("<f4"):
            raise InputError(f"{path}: {shape} {dtype}, expected (n, {dim}) float32")
        layouts.append((shape[0], offset))
    total = sum(n for n, _ in layouts)
    with open(dest, "wb") as out:
        np.lib.format.write_array_header_1_0(
            out, {"descr": "<f4", "fortran_order": False, "shape": (total, dim)}
        )
        for (path, sha), (n, offset) in zip(sources, layouts):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                h.update(f.read(offset))
                left = n * dim * 4
                while left:
                    block = f.read(min(left, BLOCK_BYTES))
                    if not block:
                        raise InputError(f"{path}: truncated ({left} bytes missing)")
                    h.update(block)
                    out.write(block)
                    left -= len(block)
                h.update(f.read())
            if h.hexdigest() != sha:
                raise InputError(
                    f"{path}: SHA-256 {h.hexdigest()[:12]}... differs from the part's record "
                    f"{sha[:12]}...: the part is damaged"
                )
    return total


def _whole_file(a: np.ndarray) -> bool:
    """Whether ``a`` is a C-ordered memory map of all of its file's rows after ``a.offset``."""
    if not isinstance(a, np.memmap) or not a.filename or not a.flags.c_contiguous:
        return False
    try:
        return a.offset + a.nbytes == os.path.getsize(a.filename)
    except OSError:
        return False


@contextlib.contextmanager
def row_reader(vectors: np.ndarray):
    """Yields ``take(ids) -> vectors[ids]`` for sorted unique (m,) ids: (m, D) rows.

    A memory map of a whole ``.npy`` (an on-disk index) is read with positional reads
    (``os.preadv``, one per run of consecutive ids), not through the mapping: pages touched
    through a mapping stay in the process' resident set, and the kernel maps up to 64 KiB
    of cached file around each touched row (fault-around), so re-scoring 100 random rows
    per query through the map of a 1e6 x 512 file grew the query process of
    ``benchmarks/bench_scale.py`` to 2.3 GB after 1,000 queries; read, it stays bounded.
    Other arrays are indexed.
    """
    if not _whole_file(vectors):
        yield lambda ids: np.asarray(vectors[ids])
        return
    d, offset = vectors.shape[1], vectors.offset
    row = d * vectors.itemsize
    with open(vectors.filename, "rb", buffering=0) as f:
        fd = f.fileno()

        def take(ids) -> np.ndarray:
            ids = np.asarray(ids, np.int64)
            out = np.empty((ids.size, d), vectors.dtype)
            if ids.size == 0:
                return out
            if ids[0] < 0 or ids[-1] >= vectors.shape[0]:
                raise IndexError(f"row ids out of range 0..{vectors.shape[0] - 1}")
            breaks = np.flatnonzero(np.diff(ids) != 1) + 1
            for a, b in zip(np.r_[0, breaks], np.r_[breaks, ids.size]):
                view = memoryview(out[a:b]).cast("B")
                if os.preadv(fd, [view], offset + int(ids[a]) * row) != view.nbytes:
                    raise OSError(f"{vectors.filename}: short read")
            return out

        yield take


def write_part_codes(trained, vectors: np.ndarray, ids, path: str | os.PathLike) -> None:
    """Adds (n, D) vectors with their ids to a trained IVF index; writes it.

    Args:
      trained: a trained, empty faiss IVF index (consumed).
      vectors: (n, D) float32 searchable vectors.
      ids: (n,) int64 ids (a part's: the images' rows in the whole sorted list).
      path: the faiss file to write.
    """
    import faiss

    if trained.ntotal:
        raise ValueError("write_part_codes needs an empty trained index")
    ids = np.ascontiguousarray(ids, np.int64)
    with _faiss_threads(1):  # faster than 2 on the 2-core CPU (see search._faiss_threads)
        trained.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
    faiss.write_index(trained, os.fspath(path))


@contextlib.contextmanager
def _c_stdout_to_stderr():
    """File descriptor 1 pointed at 2 inside the block (C-level prints go to stderr)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def merge_invlists(
    trained,
    sources: Sequence[str | os.PathLike],
    ivfdata: str | os.PathLike,
    dest: str | os.PathLike,
    expected: int,
    renumber: np.ndarray | None = None,
) -> None:
    """Merges the inverted lists of part indexes into one on-disk index.

    Args:
      trained: the trained, empty faiss IVF index the parts were filled from (consumed).
      sources: the parts' faiss files (:func:`write_part_codes`), read memory-mapped.
      ivfdata: the inverted-lists file to write (codes and ids of every vector).
      dest: the faiss file to write (quantizer, codebooks, list offsets; names ``ivfdata``).
      expected: the number of vectors the parts must hold together.
      renumber: None (the ids are the merged rows already), or (T,) int64 mapping each id
        to its merged row: the rows of the whole list once images were left out.

    Raises:
      InputError: the parts hold another number of vectors.
    """
    import faiss

    ivf = faiss.extract_index_ivf(trained)
    if trained.ntotal:
        raise ValueError("merge_invlists needs an empty trained index")
    keep, lists = [], faiss.InvertedListsPtrVector()
    for src in sources:
        part = faiss.read_index(os.fspath(src), faiss.IO_FLAG_MMAP)
        keep.append(part)  # the part owns its lists: keep it alive until the merge is done
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.fspath(ivfdata))
    with _c_stdout_to_stderr():
        ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
    if ntotal != expected:
        raise InputError(f"the parts' IVF-PQ files hold {ntotal} vectors, their records {expected}")
    if renumber is not None:
        _renumber(ondisk, ivf.nlist, ivf.code_size, renumber)
    trained.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # owned by the index now
    faiss.write_index(trained, os.fspath(dest))
    del keep


def _renumber(lists, nlist: int, code_size: int, renumber: np.ndarray) -> None:
    """Replaces every id of the on-disk ``lists`` by ``renumber[id]``, list by list."""
    import faiss

    for j in range(nlist):
        n = lists.list_size(j)
        if not n:
            continue
        ids = renumber[faiss.rev_swig_ptr(lists.get_ids(j), n)]
        codes = faiss.rev_swig_ptr(lists.get_codes(j), n * code_size).copy()
        lists.update_entries(j, 0, n, faiss.swig_ptr(np.ascontiguousarray(ids, np.int64)),
                             faiss.swig_ptr(codes))  # fmt: skip


def open_ondisk(path: str | os.PathLike, ivfdata: str | os.PathLike):
    """The faiss index of ``path``, its on-disk inverted lists mapped read-only from ``ivfdata``.

    The file name stored in the index is where the lists were written (a temporary
    folder, renamed since): it is replaced by ``ivfdata``.

    Raises:
      InputError: a missing file, or an index without on-disk lists.
    """
    import faiss

    for f in (path, ivfdata):
        if not Path(f).is_file():
            raise InputError(f"{f} is missing: the index folder is damaged")
    index = faiss.read_index(os.fspath(path), faiss.IO_FLAG_SKIP_IVF_DATA)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise InputError(f"{path} has no on-disk inverted lists: the index folder is damaged")
    if Path(ivfdata).stat().st_size < lists.totsize:
        raise InputError(f"{ivfdata} is shorter than its index says: the index folder is damaged")
    lists.filename = os.fspath(ivfdata)
    lists.read_only = True
    lists.do_mmap()
    return index
