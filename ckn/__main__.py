import sys

from ckn.cli import main

sys.exit(main())
