"""``python -m rsembed_dask.cli``: the ``rsembed-dask`` command."""

import sys

from .commands import main

sys.exit(main())
