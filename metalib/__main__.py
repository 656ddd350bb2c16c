"""``python -m metalib``: see :mod:`metalib.cli`."""

import sys

from metalib.cli import main

sys.exit(main())
