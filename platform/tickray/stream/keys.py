"""What the stream actors keep in Redis, per symbol: the names serving, monitoring and the CLI read.

``tickray:features:<SYM>`` (the latest features, one JSON value, so Serve reads every symbol with one MGET)
and ``tickray:features:history:<SYM>`` (capped stream of them), ``tickray:state:<SYM>`` (hash: the market
state, see :mod:`tickray.stream.state`), the channel ``tickray:features``, closed 1m bars in
``tickray:bars:1m:<SYM>`` and the open bar of each timeframe in ``tickray:bars:live:<SYM>``. The checkpoint a
restarted actor resumes from is ``tickray:stream:checkpoint:<SYM>`` plus the grid rows of the feature
look-backs, ``tickray:stream:grid:<SYM>``. Invalid messages go to ``tickray:quarantine``.
"""

from __future__ import annotations

FEATURES_KEY = "tickray:features:{symbol}"
FEATURES_HISTORY = "tickray:features:history:{symbol}"
STATE_KEY = "tickray:state:{symbol}"
FEATURES_CHANNEL = "tickray:features"
QUARANTINE_STREAM = "tickray:quarantine"
QUARANTINE_MAXLEN = 100_000
CLOSED_BARS_STREAM = "tickray:bars:1m:{symbol}"
CLOSED_BARS_MAXLEN = 10_080  # a week of minutes
LIVE_BARS_KEY = "tickray:bars:live:{symbol}"
CHECKPOINT_KEY = "tickray:stream:checkpoint:{symbol}"
GRID_ROWS = "tickray:stream:grid:{symbol}"  # capped stream of the last LOOKBACK grid rows


def forget(r, symbols: list[str]) -> None:
    """Drop what Redis holds of these symbols' live state (checkpoints included), so the next connector
    starts clean instead of resuming: for replaying another session's capture."""
    keys = [k.format(symbol=s.upper()) for s in symbols
            for k in (CHECKPOINT_KEY, GRID_ROWS, FEATURES_KEY, FEATURES_HISTORY, STATE_KEY, CLOSED_BARS_STREAM,
                      LIVE_BARS_KEY)]
    r.delete(*keys)
