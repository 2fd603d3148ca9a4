"""Files and progress (stage: input and output, shared with ``retrieval``).

Patch files (``.npy`` / ``.npz`` with splits), one-line errors for bad arrays, atomic
writes (:func:`atomic_path`, :func:`write_json`) and the progress bar.
"""

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
    "check_patches",
    "load_array",
    "load_patch_file",
    "progress_bar",
    "write_json",
]
