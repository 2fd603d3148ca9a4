"""``python -m retrieval.cli``: the ``ckn`` command line."""

import sys

from retrieval.cli.main import main

sys.exit(main())
