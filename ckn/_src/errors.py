"""One exception type for bad user input, so the CLI can print it on one line, and what a damaged
file raises while it is read (turned into that exception by the readers)."""

import struct
import tokenize
import zipfile
import zlib


class InputError(ValueError):
    """Bad user input: a wrong shape, NaN values, a missing or corrupt file.

    The message names the problem on one line; the ``ckn`` command prints it
    (``ckn: error: ...``) and exits with status 2, without a traceback.
    """


#: What reading a damaged .npy / .npz (or other binary file) can raise besides InputError: the
#: readers turn these into one-line InputErrors naming the file. A flipped flag bit of a zip
#: member raises NotImplementedError, a damaged deflate stream zlib.error, a header claiming an
#: absurd shape MemoryError (numpy allocates it before reading), a damaged pickle length field
#: OverflowError, a damaged .npy header tokenize.TokenError or SyntaxError.
CORRUPT_FILE_ERRORS = (
    ValueError, OSError, EOFError, KeyError, IndexError, NotImplementedError, OverflowError,
    MemoryError, SyntaxError, struct.error, zlib.error, tokenize.TokenError, zipfile.BadZipFile,
)  # fmt: skip
