"""``python -m backend ...``: the command line of :mod:`backend.cli`."""

import sys

from .cli import main

sys.exit(main())
