"""Historical ingestion on Ray Data: files → validated, normalised rows → the Parquet lake.

One Ray Data task per input (a file, or the files of one capture session): it reads the input once,
validates and normalises its rows and writes them into a staging copy of every dataset it feeds, so
memory is bounded by the largest input, never by the dataset, and nothing passes through the object
store but counts. Bad rows go to ``<root>/quarantine/<dataset>/`` with ``reason`` and ``source``
columns and are counted. Every input is its own unit of failure: one that cannot be read is reported in
one line (its traceback in a log file) and leaves nothing behind, and the others land regardless.
Partitions are then swapped into the lake atomically (see tickray.lake).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from tickray import lake
from tickray.errors import DataFormatError, failure_line
from tickray.lake import book_days, validate
from tickray.lake.schema import TS, bar_minutes
from tickray.ops.runtime import one_stage_execution
from tickray.sources import binance, databento, formats, generic, lake_parquet, ohlcv, parquet_rows
from tickray.sources.formats import Rows

# Inputs above this are read by several tasks: a Parquet file a range of rows each, a plain CSV of trades
# one byte range (of whole lines) each. The checks that span rows (time order, duplicate ids)
# then hold within each shard. Small enough that a file of a few hundred MB keeps 2 CPUs busy.
SHARD_BYTES = 64 * 2**20
# lake dataset → its row validator (bars of every length: `validator`)
DATASETS = {"trades": validate.check_trades, "book": validate.check_book, "bars_1m": validate.check_bars,
            "open_interest": validate.check_open_interest, "funding": validate.check_funding,
            "liquidations": validate.check_liquidations, "instruments": validate.check_instruments,
            "settlements": validate.check_settlements}


def validator(dataset: str):
    minutes = bar_minutes(dataset)
    return DATASETS[dataset] if minutes is None else lambda t: validate.check_bars(t, minutes)


def _is_twin_of_consumed(f: Path, files: set[Path]) -> str | None:
    """Why a file is read through another one (so it is neither ingested twice nor 'unknown')."""
    kind = _kind(f)
    if kind == "cryptofeed_ws" and f.suffix == ".jsonl" and f.with_suffix(".txt") in files:
        return f"same capture as {f.with_suffix('.txt').name}"
    if kind == "cryptofeed_http" and any(_kind(g) == "cryptofeed_ws" and formats.cryptofeed_snapshots(g) == f
                                          for g in files):
        return "read with its WebSocket capture"
    if kind == "lobster_orderbook" and Path(str(f).replace("_orderbook_", "_message_")) in files:
        return "read with its message file"
    if kind == "databento_mbp1":  # Databento's CSV is a decode of its DBN file: the same rows twice
        stem = f.name.split(".csv")[0]
        dbn = next((g for g in files if g.name.split(".dbn")[0] == stem and databento.is_dbn(g.name)), None)
        if dbn is not None:
            return f"same data as {dbn.name}"
    return None


def _kind(f: Path) -> str | None:
    fmt = formats.detect(f)
    return fmt.kind if fmt else None


def capture_days(files: list[Path]) -> list[Input]:
    """One input per daily capture file (``usdm_btcusdt_20240718.gz``, ``…_20240719.gz``). A day whose
    first book message is not a snapshot of its own goes on from the book the day before ended with:
    ``after`` names that day's file when it is ingested in the same run (its task then waits for it),
    and the day before hands its unapplied diffs on (``carry``). The other days are independent."""
    by_stream: dict[tuple[Path, str], list[tuple[dt.date, Path]]] = {}
    for f in files:
        m = binance.CAPTURE_NAME.match(f.name)
        key = (f.parent, f"{m['market']}_{m['symbol']}") if m else (f, "")
        by_stream.setdefault(key, []).append((binance.capture_day(f) or dt.date.min, f))
    found: list[Input] = []
    datasets = formats.BY_KIND["ws_capture"].datasets
    for days in by_stream.values():
        days.sort()
        after: list[str] = []
        for i, (day, f) in enumerate(days):
            chained = bool(i) and (day - days[i - 1][0]).days == 1 and not binance.opens_with_snapshot(f)
            after.append(str(days[i - 1][1]) if chained else "")
        for i, (_, f) in enumerate(days):
            carry = i + 1 < len(days) and after[i + 1] != ""
            found.append(Input("ws_capture", (str(f),), datasets, after=after[i], carry=carry))
    return found


@dataclass(frozen=True)
class Input:
    """One unit of ingest work: a file, or the files of one capture session, and the datasets it feeds."""
    kind: str
    paths: tuple[str, ...]
    datasets: tuple[str, ...]
    schema: str = ""  # the .tickschema.yaml mapping a generic file
    shard: tuple[int, int] | None = None  # [start, stop) rows of a Parquet file, bytes of a CSV
    after: str = ""  # a capture day: the file of the day before, whose books it goes on from
    carry: bool = False  # a capture day: the next day goes on from its books

    @property
    def name(self) -> str:
        shard = "" if self.shard is None else f"@{self.shard[0]}-{self.shard[1]}"
        return "+".join(self.paths) + shard


@dataclass(frozen=True)
class Failure:
    """An input that did not land: its name, why in one line, and the traceback for the log."""
    input: str
    reason: str
    trace: str = ""


def _tick_schemas(files: list[Path], skipped: list[str], failed: list[Failure]
                  ) -> dict[Path, tuple[Path, generic.TickSchema]]:
    """file → the ``.tickschema.yaml`` among ``files`` that maps it (a mapping wins over a file's name)."""
    present, mapped = set(files), {}
    for f in files:
        if f.name.endswith(generic.SCHEMA_SUFFIX):
            try:
                schema = generic.load_schema(f)
            except Exception as e:  # noqa: BLE001 (one bad file is one failure)
                failed.append(Failure(str(f), failure_line(e), traceback.format_exc()))
                continue
            targets = [g for g in generic.schema_files(f, schema) if g in present]
            mapped.update(dict.fromkeys(targets, (f, schema)))
            skipped.append(f"{f} (a tick schema: maps {len(targets)} files)")
    return mapped


def discover(inputs: list[Path], levels: int = 10, shard_bytes: int = SHARD_BYTES, cpus: int = 1
             ) -> tuple[list[Input], list[str], list[Failure]]:
    """Every recognised input under ``inputs`` (files or folders), the files not ingested, each with the
    reason (reported, never silently passed over), and the files that failed already here (a tick schema
    or a Parquet file that cannot be read). A Parquet file or a plain trades CSV larger than
    ``shard_bytes`` is split into several inputs (SHARD_BYTES; a Parquet file's into a multiple of the
    ``cpus`` that will read them)."""
    found: list[Input] = []
    skipped: list[str] = []
    failed: list[Failure] = []
    files: list[Path] = []
    for inp in inputs:
        inp = Path(inp)
        if not inp.exists():
            raise DataFormatError(f"input {inp} does not exist")
        files += sorted(p for p in inp.rglob("*") if p.is_file()) if inp.is_dir() else [inp]
    present = set(files)
    mapped = _tick_schemas(files, skipped, failed)
    captures = []
    for f in files:
        if f in mapped:
            schema_path, schema = mapped[f]
            found.append(Input("generic", (str(f),), generic.datasets_of(schema), str(schema_path)))
            continue
        if f.name.endswith(generic.SCHEMA_SUFFIX):
            continue
        if f.stat().st_size == 0:
            skipped.append(f"{f} (empty file)")
            continue
        fmt = formats.detect(f)
        twin = _is_twin_of_consumed(f, present)
        if twin:
            skipped.append(f"{f} ({twin})")
        elif fmt is None or (fmt.read is None and fmt.kind != "lake_parquet"):
            skipped.append(f"{f} (no known format)")
        elif fmt.kind == "lake_parquet":
            try:
                try:
                    kind, dataset = fmt.kind, lake_parquet.dataset_of(f, levels)
                except DataFormatError:
                    if not ohlcv.looks_like_candles(f):  # plain candles: read as such; else its error
                        raise
                    kind, dataset = "ohlcv", None  # its bars' length is told when it is read
                found += [Input(kind, (str(f),), (dataset,) if dataset else (), shard=shard)
                          for shard in parquet_rows.row_shards(f, shard_bytes, cpus)]
            except Exception as e:  # noqa: BLE001
                failed.append(Failure(str(f), failure_line(e), traceback.format_exc()))
        elif fmt.kind == "ohlcv" and not ohlcv.looks_like_candles(f):
            skipped.append(f"{f} (no known format)")
        elif fmt.kind == "ws_capture":
            captures.append(f)
        elif fmt.datasets_of is not None:
            try:
                found.append(Input(fmt.kind, (str(f),), fmt.datasets_of(f)))
            except Exception as e:  # noqa: BLE001 (a file whose header cannot be read is one failure)
                failed.append(Failure(str(f), failure_line(e), traceback.format_exc()))
        else:
            shards = binance.byte_range_shards(f, shard_bytes) if fmt.byte_shards else [None]
            found += [Input(fmt.kind, (str(f),), fmt.datasets, shard=shard) for shard in shards]
    return found + capture_days(captures), skipped, failed


def read_input(item: Input, levels: int = 10, notes: list[str] | None = None,
               unit: formats.Unit | None = None) -> Rows:
    """Read an input once, into the rows of every dataset it feeds, and for each the events that could
    not become rows: (ts ms, symbol, reason). What a reader of the lake should know about the input is
    added to ``notes``; a book source's end states and gap reports are left in ``unit``, whose ``start``
    and ``carry`` it is read with."""
    path = Path(item.paths[0])
    if item.kind == "generic":
        tables = generic.read_generic(path, generic.load_schema(Path(item.schema)), levels)
        return {dataset: (t, []) for dataset, t in tables.items()}
    if item.kind == "lake_parquet":
        (dataset,) = item.datasets
        return {dataset: (lake_parquet.read_lake_parquet(path, dataset, levels, rows=item.shard), [])}
    fmt = formats.BY_KIND.get(item.kind)
    if fmt is None or fmt.read is None:
        raise DataFormatError(f"{path}: unknown file kind {item.kind!r}")
    unit = unit or formats.Unit([])
    unit.paths, unit.levels, unit.shard = [Path(p) for p in item.paths], levels, item.shard
    rows = fmt.read(unit)
    if notes is not None:
        notes += unit.notes
    return rows


def _dropped_rows(dropped: list, schema: pa.Schema) -> pa.Table:
    """Events a reader could not turn into rows, as rows of ``schema``: time and symbol, the rest null."""
    n = len(dropped)
    cols = {"ts": pa.array([d[0] * 1_000_000 for d in dropped], pa.int64()).cast(TS),
            "symbol": pa.array([d[1] for d in dropped], pa.string())}
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def _ingest_one(item: Input, levels: int, stage: Path, name: str, notes: list[str],
                unit: formats.Unit | None = None) -> list[tuple[str, str, int]]:
    """Read one input, validate its rows and write them (good ones into the staged datasets, bad ones into
    the staged quarantine); return (dataset, reason or "", rows)."""
    counts: list[tuple[str, str, int]] = []
    sources = [str(Path(p).resolve()) for p in item.paths]
    for dataset, (t, dropped) in read_input(item, levels, notes, unit).items():
        reason = validator(dataset)(t)
        if dropped:
            t = pa.concat_tables([t, _dropped_rows(dropped, t.schema)])
            reason = pa.concat_arrays([reason, pa.array([d[2] for d in dropped], pa.string())])
        good = pc.is_null(reason)
        all_good = reason.null_count == len(reason)
        written = lake.write_partitions(t if all_good else t.filter(good), stage / dataset, name, sources)
        counts.append((dataset, "", sum(n for *_, n in written)))
        bad = t.slice(0, 0) if all_good else t.filter(pc.invert(good))
        if bad.num_rows:
            bad_reason = reason.filter(pc.invert(good))
            bad = bad.append_column("reason", bad_reason).append_column(
                "source", pa.array([item.name] * bad.num_rows))
            lake.write_partitions(bad, stage / lake.QUARANTINE / dataset, name, sources)
            for r, n in Counter(bad_reason.to_pylist()).items():
                counts.append((dataset, r, n))
    return counts


COUNT_COLUMNS = ("input", "dataset", "reason", "rows", "error", "trace", "note")


def _ingest_item(item: Input, levels: int, stage: Path, unit: formats.Unit | None = None) -> list[tuple]:
    """Ingest one input into the stage; return its count rows (COUNT_COLUMNS): (input, dataset, reason or
    "", rows), a row with no dataset when the input fed nothing (so that every input is seen), its notes
    (a row each), and for an input that failed its one-line error and traceback (whatever it had staged
    is removed: it lands whole or not at all)."""
    name = hashlib.sha1(item.name.encode()).hexdigest()[:16]
    notes: list[str] = []
    unit = unit or formats.Unit([])
    try:
        counts = _ingest_one(item, levels, stage, name, notes, unit) or [("", "", 0)]
        for d in unit.days:  # a book source's (book, day)s: end state and gap report, beside the rows
            book_days.write_day(stage, d.venue, d.symbol, d.day, d.state, d.report | {"file": item.name})
    except Exception as e:  # noqa: BLE001 (one bad input is one failure, never the whole run's)
        for f in stage.rglob(f"part-{name}.parquet"):
            f.unlink()
        for d in unit.days:
            book_days.remove_day(stage, d.venue, d.symbol, d.day)
        return [(item.name, "", "", 0, failure_line(e), traceback.format_exc(), "")]
    return [(item.name, *c, "", "", "") for c in counts] + [(item.name, "", "", 0, "", "", note) for note in notes]


def _count_table(rows: list[tuple]) -> dict:
    node = ray.get_runtime_context().get_node_id()
    out = {c: np.array([r[i] for r in rows], dtype=np.int64 if c == "rows" else object)
           for i, c in enumerate(COUNT_COLUMNS)}
    return out | {"node": np.array([node] * len(rows), dtype=object)}


def _ingest_inputs(batch: dict, levels: int, stage: str) -> dict:
    """Ray Data map function: ingest one input in this task, so no dataset ever passes through the object
    store or the driver; return only its count rows and the node that ran the task."""
    rows: list[tuple] = []
    for kind, paths, datasets, schema, start, stop in zip(batch["kind"], batch["paths"], batch["datasets"],
                                                          batch["schema"], batch["shard_start"], batch["shard_stop"]):
        item = Input(str(kind), tuple(paths), tuple(datasets), str(schema),
                     None if start < 0 else (int(start), int(stop)))
        rows += _ingest_item(item, levels, Path(stage))
    return _count_table(rows)


@ray.remote
def _ingest_capture_day(item: Input, levels: int, stage: str, before: dict | None) -> tuple[list[dict], dict | None]:
    """A Ray task for one capture day, its books starting from ``before`` (the day before's, handed on by
    that day's task, which Ray runs first; or stored by an earlier ingest). Returns its count rows and its
    books' end states (None if it failed)."""
    unit = formats.Unit([], start=before, carry=item.carry)
    rows = _ingest_item(item, levels, Path(stage), unit)
    if item.after and before is None:
        note = f"the day before ({Path(item.after).name}) did not land: its books start without it"
        rows.append((item.name, "", "", 0, "", "", note))
    return _rows_as_dicts(_count_table(rows)), None if any(r[4] for r in rows) else unit.books


def _rows_as_dicts(table: dict) -> list[dict]:
    return [dict(zip(table, values)) for values in zip(*table.values())]


def _run_capture_days(days: list[Input], levels: int, stage: Path, lake_root: Path) -> tuple[list, int]:
    """Submit every capture day as a task at once: a day that goes on from the day before waits for that
    day's task by taking its end states as an argument (Ray orders them), the others run in parallel. A
    first day that needs a day before not in this run starts from the books an earlier ingest stored.
    Returns the result references and the number of waves (the longest chain)."""
    books: dict[str, ray.ObjectRef] = {}
    refs, wave = [], {}
    for item in days:  # the days of a stream in date order
        path = Path(item.paths[0])
        if item.after:
            before, wave[item.name] = books[item.after], wave[item.after] + 1
        else:
            day, symbol = binance.capture_day(path), binance.symbol_from_filename(path)
            stored = None if day is None or binance.opens_with_snapshot(path) else book_days.read_state(
                lake_root, binance.capture_venue(path), symbol, day - dt.timedelta(days=1))
            before, wave[item.name] = (None if stored is None else {symbol: stored}), 1
        counts, books[str(path)] = _ingest_capture_day.options(num_returns=2).remote(item, levels, str(stage), before)
        refs.append(counts)
    return refs, max(wave.values(), default=0)


@dataclass
class IngestReport:
    files: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, Counter] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (input, what to know about it)
    inputs_ok: int = 0
    log: Path | None = None  # the tracebacks of the failed inputs
    seconds: float = 0.0
    tasks: int = 0
    nodes: set[str] = field(default_factory=set)  # where the tasks whose results were kept ran
    books: list[dict] = field(default_factory=list)  # the gap report of each (book, day) a book source rebuilt
    waves: int = 0  # the longest chain of days, each going on from the day before's books

    def book_lines(self) -> list[str]:
        """A line per (book, day): where its book started from, the update ids (or sequence numbers, or
        receive times) it saw, updates applied, gaps, resyncs, seconds unsynced and rows quarantined by
        reason."""
        out = []
        for r in self.books:
            q = ", ".join(f"{why}: {n:,}" for why, n in sorted(r["quarantined"].items())) or "none"
            seen = f"{r['first']}..{r['last']}" if r["first"] is not None else "none"
            out.append(f"book {r['venue']} {r['symbol']} {r['day']}: from {r['start']}; {r['sequence']}s {seen}; "
                       f"{r['applied']:,} updates applied, {r['gaps']} gaps, {r['resyncs']} resyncs, "
                       f"{r['unsynced_s']:,} s unsynced; quarantined {q}")
        return out

    def lines(self) -> list[str]:
        out = [f"failed: {f.input}: {f.reason}" for f in self.failed]
        by_text: dict[str, list[str]] = {}
        for inp, text in self.notes:
            by_text.setdefault(text, []).append(inp)
        out += [f"note: {text}: {inputs[0]}" + (f" and {len(inputs) - 1} more inputs" if len(inputs) > 1 else "")
                for text, inputs in by_text.items()]
        for ds in self.rows:
            q = self.quarantined.get(ds, Counter())
            qs = ", ".join(f"{r}: {n}" for r, n in q.most_common()) or "none"
            out.append(f"{ds}: {self.rows[ds]:,} rows from {self.files[ds]} files into "
                       f"{len(self.partitions[ds])} partitions; quarantined {sum(q.values()):,} ({qs})")
        if self.books:
            gaps, resyncs = sum(r["gaps"] for r in self.books), sum(r["resyncs"] for r in self.books)
            unsynced = sum(r["unsynced_s"] for r in self.books)
            waves = f", capture days a task each in {self.waves} wave(s)" if self.waves else ""
            out.append(f"books: {len(self.books)} (book, day)s rebuilt{waves}; {gaps} gaps, {resyncs} resyncs, "
                       f"{unsynced:,.1f} s unsynced (--report: per day)")
        if self.nodes:
            out.append(f"{self.tasks} tasks on {len(self.nodes)} node(s)")
        out += [f"skipped: {entry}" for entry in self.skipped]  # every one, with its reason: none is cut
        out.append(f"inputs: {self.inputs_ok} landed, {len(self.failed)} failed, {len(self.skipped)} skipped"
                   + (f"; tracebacks in {self.log}" if self.log else ""))
        return out


def ingest(inputs: list[Path], lake_root: Path, levels: int = 10, shard_bytes: int = SHARD_BYTES) -> IngestReport:
    """Ingest every recognised file under ``inputs`` into the lake at ``lake_root``."""
    t0 = time.perf_counter()
    lake_root = Path(lake_root)
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    found, skipped, failed = discover(inputs, levels, shard_bytes, cpus)
    report = IngestReport(skipped=skipped, failed=failed)
    if not found:
        _write_failure_log(report, lake_root)
        return report
    stage = lake.staging_dir(lake_root)
    try:
        days = [i for i in found if i.kind == "ws_capture"]
        rest = [i for i in found if i.kind != "ws_capture"]
        day_refs, report.waves = _run_capture_days(days, levels, stage, lake_root) if days else ([], 0)
        # One block, one task per input (a file or a shard of one): a task never packs several, and
        # each input is read once even when it feeds two datasets.
        items = [{"kind": i.kind, "paths": list(i.paths), "datasets": list(i.datasets), "schema": i.schema,
                  "shard_start": i.shard[0] if i.shard else -1, "shard_stop": i.shard[1] if i.shard else -1}
                 for i in rest]
        counts = []
        if items:
            with one_stage_execution():
                counts = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                    _ingest_inputs, batch_size=1, fn_kwargs={"levels": levels, "stage": str(stage)}).take_all()
        counts += [c for part in ray.get(day_refs) for c in part]
        report.tasks, report.nodes = len(found), {c["node"] for c in counts}
        failed_inputs = {c["input"] for c in counts if c["error"]}
        report.failed += [Failure(c["input"], c["error"], c["trace"]) for c in counts if c["error"]]
        report.inputs_ok = len(found) - len(failed_inputs)
        report.notes = [(c["input"], c["note"]) for c in counts if c["note"]]
        # what an input declares, or fed beyond that (a capture's @markPrice and @forceOrder messages)
        wrote = {(c["input"], c["dataset"]) for c in counts if c["dataset"] and int(c["rows"])}
        bars = sorted({c["dataset"] for c in counts if bar_minutes(c["dataset"] or "")} - set(DATASETS),
                      key=bar_minutes)
        read = {str(Path(p).resolve()) for i in found if i.name not in failed_inputs for p in i.paths}
        for dataset in [*DATASETS, *bars]:
            fed = [i for i in found if (dataset in i.datasets or (i.name, dataset) in wrote)
                   and i.name not in failed_inputs]
            if not fed:
                continue
            rows = [c for c in counts if c["dataset"] == dataset]
            report.files[dataset] = len({p for i in fed for p in i.paths})
            report.rows[dataset] = sum(int(c["rows"]) for c in rows if not c["reason"])
            report.quarantined[dataset] = Counter()
            for c in rows:
                if c["reason"]:
                    report.quarantined[dataset][c["reason"]] += int(c["rows"])
            lake.commit(stage / lake.QUARANTINE / dataset, lake_root / lake.QUARANTINE / dataset, read)
            report.partitions[dataset] = lake.commit(stage / dataset, lake_root / dataset, read)
        report.books = book_days.reports(stage)
        book_days.commit(stage, lake_root)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _write_failure_log(report, lake_root)
    report.seconds = time.perf_counter() - t0
    return report


def _write_failure_log(report: IngestReport, lake_root: Path) -> None:
    """The failed inputs' tracebacks, in ``<lake>/_logs/ingest-<UTC time>.log`` (the terminal gets one
    line per input)."""
    if not report.failed:
        return
    logs = lake_root / "_logs"
    logs.mkdir(parents=True, exist_ok=True)
    report.log = logs / f"ingest-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}.log"
    report.log.write_text("".join(f"== {f.input}\n{f.reason}\n{f.trace or '(found before reading)'}\n"
                                  for f in report.failed))
