"""``python -m lib.bench <command>``: see :mod:`lib.bench`."""

import sys

from . import main

sys.exit(main())
