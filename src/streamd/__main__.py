"""``python -m streamd``: the same as the ``streamd`` console script (streamd/cli.py)."""

import sys

from .cli import main

sys.exit(main())
