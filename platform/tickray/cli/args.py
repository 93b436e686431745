"""Argument types the verbs share."""

from __future__ import annotations

import argparse


def symbols_arg(s: str) -> list[str]:
    out = [x.strip().upper() for x in s.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give at least one symbol, e.g. BTCUSDT,ETHUSDT")
    return out
