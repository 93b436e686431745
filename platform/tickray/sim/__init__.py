"""Local stand-ins for the outside world: a replay exchange, a kline venue, a synthetic market."""
