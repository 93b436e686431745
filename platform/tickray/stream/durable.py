"""What a connector keeps across restarts: the lake (raw messages, trades and book states appended every
``flush_s``) and, as of that same moment, each symbol's checkpoint in Redis, which a restarted connector
resumes only when it is this source's (venue, URLs, symbol and stream sets) and the market's first
message continues it in time; otherwise the symbol starts fresh, saying why in one line."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from tickray import lake
from tickray.features import LOOKBACK
from tickray.stream.context import ConnectorContext
from tickray.stream.keys import CHECKPOINT_KEY, GRID_ROWS
from tickray.stream.pipeline import SymbolPipeline
from tickray.stream.publish import Publisher
from tickray.stream.telemetry import log_event, span
from tickray.stream.venue_rest import VenueRest


class Durability:
    def __init__(self, ctx: ConnectorContext, publisher: Publisher, rest: VenueRest):
        self.ctx, self.publisher, self.rest = ctx, publisher, rest
        self.resume: dict[str, str] = {}  # symbol → how it started: resumed, or fresh and why (one line)
        self.durable: Counter = Counter()  # checkpoints written, rows appended to the lake, failed writes
        self.incarnation = uuid.uuid4().hex[:8]  # a new one each time Ray (re)starts the process
        # symbol → (checkpoint, its grid rows) of this source, resumed or refused by the market's first message
        self.pending: dict[str, tuple[dict, list]] = {}
        self._event_ms: dict[str, int] = {}  # symbol → the newest exchange event time taken
        self._seq = 0  # lake flushes; files are named by it and by this incarnation, so none is overwritten
        self._unwritten: list[tuple[int, dict]] = []  # flushes the lake has not taken yet (retried)
        self._checkpointed: dict[str, int] = {}  # symbol → last trade id of its latest checkpoint

    def saw(self, symbol: str, event_ms: int) -> None:
        if event_ms > self._event_ms.get(symbol, 0):
            self._event_ms[symbol] = event_ms

    # ---- resuming ------------------------------------------------------------------------------

    def source(self, symbol: str) -> dict:
        """What a checkpoint must have been written from to be resumed here."""
        ctx = self.ctx
        return {"venue": ctx.opt.venue, "ws_url": ctx.ws_url, "rest_url": ctx.rest_url, "symbols": sorted(ctx.pipes),
                "streams": sorted(ctx.symbol_streams(symbol))}

    async def find_checkpoints(self) -> None:
        """Find each symbol's checkpoint and keep it if it is this source's; the market's first message
        then resumes it or refuses it (:meth:`judge`)."""
        for sym in self.ctx.pipes:
            await self.publisher.load_published(sym)
            raw = await self.ctx.redis.get(CHECKPOINT_KEY.format(symbol=sym))
            if raw is None:
                self.resume[sym] = "fresh: no checkpoint"
                continue
            ck = orjson.loads(raw)
            why = other_source(ck.get("source") or {}, self.source(sym))
            if why:
                self._refuse(sym, why)
                continue
            grid = await self.ctx.redis.xrevrange(GRID_ROWS.format(symbol=sym), count=LOOKBACK - 1)
            self.pending[sym] = (ck, grid)
            self.resume[sym] = f"checkpoint {ck['seq']} of {ck['connector']}: waiting for the market"

    def _refuse(self, sym: str, why: str) -> None:
        """Start ``sym`` fresh: what was published from the refused checkpoint's market does not hold back
        this one's rows (its clock may be behind)."""
        self.resume[sym] = f"fresh: {why}"
        self.ctx.counts["checkpoints refused"] += 1
        self.publisher.forget_published(sym)
        log_event("checkpoint refused", symbol=sym, reason=why)

    def judge(self, pipe: SymbolPipeline, event_ms: int) -> bool:
        """Does the market continue this symbol's checkpoint? Its first message must be no older than the
        checkpoint's last event, nor later than the trades missed since could be fetched. Resumed: the
        pipeline goes on from the checkpoint (True: the trades since are to be fetched); refused: the
        pipeline starts fresh, said in one line."""
        opt, sym = self.ctx.opt, pipe.symbol
        ck, grid = self.pending.pop(sym)
        was_ms = int(ck.get("event_ms") or 0)
        jump_s = (event_ms - was_ms) / 1e3
        why = None
        if event_ms and was_ms and jump_s < -opt.resume_clock_slack_s:
            why = f"market time jumped back {span(-jump_s)}"
        elif event_ms and was_ms and jump_s > opt.resume_max_age_s:
            why = (f"market time jumped forward {span(jump_s)}, beyond the {span(opt.resume_max_age_s)} "
                   "the trades missed can be fetched for")
        if why:
            self._refuse(sym, why)
            return False
        pipe.restore(ck["pipeline"])
        self._seq = max(self._seq, ck["seq"])
        removed = self._drop_trades_after(sym, ck["connector"], ck["seq"]) if opt.lake_root else 0
        self._checkpointed[sym] = pipe.last_trade_id
        self.ctx.counts["resumed from checkpoint"] += 1
        rows = self._resume_grid(pipe, grid)
        self.resume[sym] = f"resumed from checkpoint {ck['seq']} of {ck['connector']} (market {span(abs(jump_s))} on)"
        log_event("resumed", symbol=sym, last_trade_id=pipe.last_trade_id, checkpoint_seq=ck["seq"],
                  market_gap_s=round(jump_s, 3), lake_trade_files_removed=removed, grid_rows=rows)
        return True

    async def resume_then(self, pipe: SymbolPipeline, then: Callable[[], Awaitable | None]) -> None:
        """After a resume: the trades since the checkpoint from REST (so they land in their grid seconds
        before the book moves on), then the message that resumed it (``then``)."""
        await self.rest.backfill(pipe, pipe.resume_from_trade(), None)
        io = then()
        if io is not None:
            await io

    def _resume_grid(self, pipe: SymbolPipeline, entries: list) -> int:
        """Hand the pipeline the consecutive grid rows published last (newest first in ``entries``) unless
        they are older than ``resume_features_max_gap_s``; returns how many it took."""
        if not entries:
            return 0
        max_gap_s = self.ctx.opt.resume_features_max_gap_s
        gap_s = time.time() - int(entries[0][0].split(b"-")[0]) / 1e3  # the entry id: when Redis took it
        if gap_s > max_gap_s:
            log_event("feature look-backs not resumed", symbol=pipe.symbol, gap_s=round(gap_s, 1),
                      max_gap_s=max_gap_s)
            return 0
        ts, rows = [], []
        for _, f in entries:
            if ts and int(f[b"ts"]) != ts[-1] - 1_000_000_000:
                break  # an earlier run of rows, before a restart that did not resume them
            ts.append(int(f[b"ts"]))
            rows.append(f[b"row"])
        pipe.resume_grid(ts[::-1], rows[::-1], int(entries[0][1][b"trade_id"]))
        self.ctx.counts["grid rows resumed"] += len(ts)
        return len(ts)

    def _drop_trades_after(self, symbol: str, connector: str, seq: int) -> int:
        removed = 0
        for f in Path(self.ctx.opt.lake_root).glob(f"trades/date=*/symbol={symbol}/part-live-{connector}-*.parquet"):
            if int(f.stem.rsplit("-", 2)[1]) > seq:
                f.unlink()
                removed += 1
        return removed

    # ---- the lake and the checkpoint -------------------------------------------------------------

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.opt.flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Append what was gathered to the lake, then checkpoint every symbol as of that same moment: a
        checkpoint never claims trades the lake does not hold. A lake that refuses the write (full, gone)
        keeps the rows in memory for the next flush, and the checkpoint waits."""
        ctx = self.ctx
        self._seq += 1
        seq, at = self._seq, time.time()
        if ctx.opt.lake_root:
            self._unwritten.append((seq, {s: p.cold.take() for s, p in ctx.pipes.items()}))
        # only symbols that traded since their last checkpoint: the state and bars move with trades
        docs = {s: orjson.dumps({"connector": ctx.opt.name, "seq": seq, "at": at, "source": self.source(s),
                                 "event_ms": self._event_ms.get(s, 0), "pipeline": p.checkpoint()})
                for s, p in ctx.pipes.items() if p.last_trade_id > self._checkpointed.get(s, -1)}
        ids = {s: ctx.pipes[s].last_trade_id for s in docs}
        if self._unwritten:
            try:
                self.durable.update(await asyncio.to_thread(self._write_lake, list(self._unwritten)))
                self._unwritten = []
            except OSError as e:
                self.durable[f"lake write failed: {type(e).__name__}"] += 1
                log_event("lake write failed", detail=str(e)[:200], pending_flushes=len(self._unwritten))
                return
        if docs:
            await ctx.redis.mset({CHECKPOINT_KEY.format(symbol=s): d for s, d in docs.items()})
            self._checkpointed.update(ids)
            self.durable["checkpoints"] += len(docs)

    def _write_lake(self, flushes: list[tuple[int, dict]]) -> Counter:
        rows: Counter = Counter()
        for seq, by_symbol in flushes:
            for tables in by_symbol.values():
                for dataset, t in tables.items():
                    lake.append_partitions(t, Path(self.ctx.opt.lake_root), dataset,
                                           f"live-{self.ctx.opt.name}-{seq:08d}-{self.incarnation}",
                                           [f"stream {self.ctx.ws_url}", f"REST {self.ctx.rest_url}"])
                    rows[f"lake {dataset} rows"] += t.num_rows
        return rows


def other_source(was: dict, now: dict) -> str | None:
    """Why a checkpoint written from ``was`` is not this source's (``now``), or None."""
    if not was:
        return "checkpoint is from another source: it records none"
    for key, what in (("venue", "venue"), ("ws_url", "source"), ("rest_url", "REST source"),
                      ("symbols", "symbol set"), ("streams", "stream set")):
        if was.get(key) != now[key]:
            show = (lambda v: ",".join(v or [])) if key in ("symbols", "streams") else str
            return f"checkpoint is from another {what}: {show(was.get(key))} vs {show(now[key])}"
    return None
