"""``python -m pixelwise.cli``: the same as the ``pixelwise`` command."""

import sys

from pixelwise.cli import main

sys.exit(main())
