"""``python -m tradeplane``: the same as the ``tradeplane`` command."""

import sys

from tradeplane.cli import main

sys.exit(main())
