"""Each (book, day)'s end state and gap report, beside the lake's datasets.

``<root>/_books/<venue>/<SYMBOL>/<YYYY-MM-DD>.state.json``: the full-depth book as the day's input ended
(``BookSync.export``), so that the next day, read in a task of its own (or in a later ingest), goes on
from it. ``….report.json``: the day's gap report (where its book started from, the update ids seen, diffs
applied, gaps, resyncs, seconds unsynced, rows quarantined by reason). A venue names the feed
(``binance-usdm``), since one symbol may trade on several.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import orjson

BOOKS = "_books"


def _path(root: Path, venue: str, symbol: str, day: dt.date | str, what: str) -> Path:
    return Path(root) / BOOKS / venue / symbol / f"{day if isinstance(day, str) else day.isoformat()}.{what}.json"


def write_day(root: Path, venue: str, symbol: str, day: dt.date | str, state: dict, report: dict) -> None:
    for what, doc in (("state", state), ("report", report)):
        p = _path(root, venue, symbol, day, what)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def remove_day(root: Path, venue: str, symbol: str, day: dt.date | str) -> None:
    for what in ("state", "report"):
        _path(root, venue, symbol, day, what).unlink(missing_ok=True)


def read_state(root: Path, venue: str, symbol: str, day: dt.date) -> dict | None:
    """The book ``symbol`` ended ``day`` with, as an earlier ingest stored it; None if none did."""
    p = _path(root, venue, symbol, day, "state")
    return orjson.loads(p.read_bytes()) if p.exists() else None


def reports(root: Path) -> list[dict]:
    """Every stored gap report, each with its venue, symbol and day, in that order."""
    out = []
    for p in sorted((Path(root) / BOOKS).glob("*/*/*.report.json")):
        out.append({"venue": p.parent.parent.name, "symbol": p.parent.name, "day": p.name.split(".")[0]}
                   | orjson.loads(p.read_bytes()))
    return out


def commit(stage_root: Path, root: Path) -> None:
    """Move the staged days into the lake, each file replacing the one it supersedes in one rename."""
    for p in sorted((Path(stage_root) / BOOKS).glob("*/*/*.json")):
        dest = Path(root) / p.relative_to(stage_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dest)
