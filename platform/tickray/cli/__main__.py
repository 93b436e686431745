"""`python -m tickray.cli`."""

import sys

from tickray.cli import main

sys.exit(main())
