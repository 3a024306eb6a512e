"""``python -m prism.cli``: the same as ``prism``."""

import sys

from prism.cli.shell import main

sys.exit(main())
