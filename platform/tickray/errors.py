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


# A job's exit status when some of its units (files, partitions) failed and the others landed.
PARTIAL_EXIT = 3


def failure_line(e: BaseException) -> str:
    """One line for an exception: tickray's own errors already name the file and where; others get their
    type too (the unit's name goes beside it in the report)."""
    text = " ".join(str(e).split()) or "(no message)"
    return text if isinstance(e, DataFormatError) else f"{type(e).__name__}: {text}"
