"""tickray: a Ray-distributed platform for market tick data."""

import os

# Ray >= 2.59 starts local heads with token auth (token in ~/.ray/auth_token), but a client joining one
# by address assumes auth is off unless told; Ray reads this when it is first imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from tickray.config import Settings, load_settings
from tickray.errors import TickrayError

__all__ = ["Settings", "TickrayError", "load_settings"]
__version__ = "0.1.0"
