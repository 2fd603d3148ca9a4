"""Files and progress (stage: input and output, shared with ``retrieval``).

Patch files (``.npy`` / ``.npz`` with splits), one-line errors for bad arrays, atomic
writes (:func:`atomic_path`, :func:`write_json`), the progress bar and the folder of ckn's
caches (:func:`cache_dir`).
"""

from ckn._src.compile_cache import cache_dir
from ckn._src.fileio import (
    SPLITS,
    atomic_path,
    check_patches,
    load_array,
    load_patch_file,
    progress_bar,
    write_json,
)

__all__ = [
    "SPLITS",
    "atomic_path",
    "cache_dir",
    "check_patches",
    "load_array",
    "load_patch_file",
    "progress_bar",
    "write_json",
]
