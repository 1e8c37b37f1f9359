"""``python -m streamd``: the same as the ``streamd`` console script (streamd/cli/)."""

import sys

from .cli import main

# Guarded: the gateway's decode workers (multiprocessing spawn) import this module as
# ``__mp_main__``, and must not run the command line again.
if __name__ == "__main__":
    sys.exit(main())
