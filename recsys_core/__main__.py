"""`python -m recsys_core ...` runs the command line (see `recsys_core/cli.py`)."""

import sys

from recsys_core.cli import main

sys.exit(main())
