"""Files and progress (stage: input and output, shared with ``retrieval``).

Patch files (``.npy`` / ``.npz`` with splits), one-line errors for bad arrays (and
:data:`CORRUPT_FILE_ERRORS`, what a damaged file can raise while it is read), atomic
writes (:func:`atomic_path`, :func:`write_json`), the progress bar and the folder of ckn's
caches (:func:`cache_dir`).
"""

from ckn._src.compile_cache import cache_dir
from ckn._src.errors import CORRUPT_FILE_ERRORS
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
    "CORRUPT_FILE_ERRORS",
    "SPLITS",
    "atomic_path",
    "cache_dir",
    "check_patches",
    "load_array",
    "load_patch_file",
    "progress_bar",
    "write_json",
]
