"""``python -m recur.cli`` is the ``recur`` command too."""

import sys

from ._main import main

sys.exit(main())
