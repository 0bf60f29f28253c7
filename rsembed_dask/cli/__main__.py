"""``python -m rsembed_dask.cli``: the ``rsembed-dask`` command."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
