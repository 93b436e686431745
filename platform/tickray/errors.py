"""One exception hierarchy: every message says what was wrong and where."""


class TickrayError(Exception):
    """Root of every error tickray raises on purpose."""


class ConfigError(TickrayError):
    """Settings that cannot be used (unknown key, bad value, unreadable file)."""


class StackError(TickrayError):
    """The local stack (redis-server, Ray head) could not be started, reached or stopped."""


class DataFormatError(TickrayError):
    """An input file or message that cannot be read at all (names the file and line)."""


class BookSequenceError(TickrayError):
    """An order-book update that does not chain onto the book (a gap): resync needed."""
