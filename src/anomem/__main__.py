"""``python -m anomem``: the ``anomem`` command."""

import sys

from anomem.cli import main

sys.exit(main())
