"""One exception type for bad user input, so the CLI can print it on one line."""


class InputError(ValueError):
    """Bad user input: a wrong shape, NaN values, a missing or corrupt file.

    The message names the problem on one line; the ``ckn`` command prints it
    (``ckn: error: ...``) and exits with status 2, without a traceback.
    """
