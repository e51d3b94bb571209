"""``python -m vaelab.cli`` (used by torchrun for data-parallel runs)."""

import sys

from vaelab.cli import main

sys.exit(main())
