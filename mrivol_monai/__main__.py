"""``python -m mrivol_monai predict ...``: the same as the ``mrivol`` console script."""

import sys

from mrivol_monai.cli import main

sys.exit(main())
