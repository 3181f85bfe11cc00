"""``python -m mrivol_monai.manifests build|remap ...``: CLI shim for :mod:`mrivol_monai.data.manifests`."""

import sys

from mrivol_monai.data.manifests import main

if __name__ == "__main__":
    sys.exit(main())
