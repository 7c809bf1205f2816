"""``python -m recur`` is the ``recur`` command."""

import sys

from .cli import main

sys.exit(main())
