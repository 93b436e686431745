"""tickray: a Ray-distributed platform for market tick data."""

import os
import sys

# Ray >= 2.59 starts local heads with token auth (token in ~/.ray/auth_token), but a client joining one
# by address assumes auth is off unless told. Ray reads this once, when first imported: set after that,
# it would reach only the processes Ray spawns and split them from this one, so leave it alone then.
if "ray" not in sys.modules:
    os.environ.setdefault("RAY_AUTH_MODE", "token")

from tickray.config import Settings, load_settings
from tickray.errors import TickrayError

__all__ = ["Settings", "TickrayError", "load_settings"]
__version__ = "0.1.0"
