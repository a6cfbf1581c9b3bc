"""``python -m oaasd`` runs the console script."""

import sys

from oaasd.cli import main

sys.exit(main())
