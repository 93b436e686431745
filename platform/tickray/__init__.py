"""tickray: a Ray-distributed platform for market tick data."""

from tickray.config import Settings, load_settings
from tickray.errors import TickrayError

__all__ = ["Settings", "TickrayError", "load_settings"]
__version__ = "0.1.0"
