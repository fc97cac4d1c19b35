"""``python -m crnet``: the ``crnet`` command."""

import sys

from crnet.cli import main

sys.exit(main())
