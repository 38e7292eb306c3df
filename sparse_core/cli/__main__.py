"""``python -m sparse_core.cli``: the same entry as the ``sparsepipe`` console script."""

import sys

from sparse_core.cli import main

sys.exit(main())
