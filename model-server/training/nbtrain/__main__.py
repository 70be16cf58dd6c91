"""Entry point of ``python -m nbtrain`` (see :mod:`nbtrain.cli`)."""

import sys

from .cli import main

sys.exit(main())
