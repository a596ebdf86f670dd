"""The ingest pipeline: every live source hands its readings (or its rejections) to one pipeline.

    source thread(s) ──submit()/reject()──▶ bounded queue ──▶ worker thread
        validate per meter (counter_step, the intervals engine's plausibility rule)
        → dedupe → batch (written at most ``flush_s`` after receipt, or at ``batch_max`` readings)
        → time-series store → every ``intervals_every_s``: incremental interval computation

**Back-pressure.** The queue is bounded (``queue_size``). When it is full, ``submit`` waits for
room: the source thread stops, which for MQTT at QoS 1 means the broker holds the unacknowledged
messages and redelivers them; nothing is dropped. The first wait and the recovery are logged.

**Validation.** Values are checked by the source's parser (types, finite, >= 0). Here each reading
is compared with the meter's last accepted one: a normal step is accepted at once; a counter that
went down, or rose faster than the meter's power limit, is *held*, and so is every reading after
it, until the trend of the readings that follow decides (``billing.intervals.judge_counter``, the
rule the intervals engine applies too): when a later reading is a normal step from the last
accepted one, the held readings on the way are accepted (a burst of values sent close together
loses nothing) and the ones off it rejected as outliers; a new level (meter replaced or reset)
needs ``NEW_LEVEL_READINGS`` consistent readings over ``NEW_LEVEL_S`` seconds, then it is
accepted as a new series and counted as a reset. Held readings still undecided after
``hold_timeout_s`` are decided alone (a dip: reset; a spike: rejected). Held readings are kept in
the ledger until they are decided and stored, so a crash or a stop meanwhile does not lose them
(their messages have been acknowledged with the ones around them); the next run holds them again.

Rejections are counted per meter and reason, logged at most once per meter and minute, and kept in
the meter's status with the last reason. Messages from unknown meters are counted and listed (to be
adopted by the manager), never stored: at most ``MAX_UNKNOWN`` of them (the ones heard least
recently are dropped from the list and counted in ``unknown_dropped``), with at most one warning
per ``log_every_s`` for newly heard ones (the next warning says how many more there were).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from billing.intervals import BREAK, OPEN, REJECT, counter_step, judge_counter
from ingest.readings import MAX_METER_ID_CHARS, Reading
from storage.timeseries import StoreUnavailable

log = logging.getLogger(__name__)


def describe_store_error(exc: BaseException) -> str:
    """A store error as an operator reads it: a full disk is named as such, whatever layer
    (DuckDB, SQLite, the OS) reported it."""
    text = str(exc)
    low = text.lower()
    errno = getattr(exc, "errno", None)
    if errno == 28 or "no space left" in low or "disk is full" in low or "database or disk is full" in low:
        return f"the data disk is full ({text[:200]})"
    return text[:300] or type(exc).__name__


def _key(r: Reading) -> tuple[str, str]:
    """A held reading's key in the ledger."""
    return r.meter_id, r.ts_utc.isoformat()


def _opt(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _same_counters(a: Reading, b: Reading) -> bool:
    return (_opt(a.import_kwh), _opt(a.export_kwh)) == (_opt(b.import_kwh), _opt(b.export_kwh))


@dataclass
class MeterStatus:
    meter_id: str
    house_id: str | None
    last_import_kwh: float | None = None
    last_export_kwh: float | None = None
    last_power_in_kw: float | None = None
    last_power_out_kw: float | None = None
    last_seen: datetime | None = None           # time of the last accepted reading
    last_received: datetime | None = None       # time anything arrived for this meter
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)   # reason code -> count
    last_rejection: str | None = None
    last_rejection_at: datetime | None = None
    resets: int = 0
    last_reset_at: datetime | None = None
    held: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class PipelineStats:
    """Counts and timings for monitoring (written by the worker thread only; ``snapshot()`` from any)."""
    received: Counter = field(default_factory=Counter)          # source -> messages and readings
    rejected: Counter = field(default_factory=Counter)          # (source, reason) -> count
    write_seconds_sum: float = 0.0
    write_seconds_max: float = 0.0
    writes: int = 0
    newest_reading: datetime | None = None                      # the newest accepted reading's time
    intervals_seconds_sum: float = 0.0
    interval_runs: int = 0
    dirty_since: float | None = None                            # monotonic: oldest span not yet computed
    sources: dict = field(default_factory=dict)                 # meter_id -> last source

    def snapshot(self) -> "PipelineStats":
        for _ in range(5):                                      # the worker may add a key meanwhile
            try:
                return replace(self, received=Counter(dict(self.received)), rejected=Counter(dict(self.rejected)),
                               sources={})
            except RuntimeError:
                continue
        return replace(self, received=Counter(), rejected=Counter(), sources={})


@dataclass
class UnknownMeter:
    meter_id: str
    messages: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    source: str = ""


@dataclass
class _State:
    last: Reading | None = None
    # held readings in time order, each with the monotonic time it was held (not its timestamp:
    # a backlog's readings are old while their successors are already queued)
    held: list = field(default_factory=list)      # [(Reading, held_since)]
    unkept: bool = False           # a held reading could not be kept in the ledger (memory only)
    loaded: bool = False


MAX_UNKNOWN = 1000           # unknown meters listed at most (a flood of made-up ids costs no memory)

_FLUSH = object()
_STOP = object()
IDLE_S = 0.005


class Pipeline:
    def __init__(self, community, *, queue_size: int = 100_000, batch_max: int = 5000,
                 flush_s: float = 0.5, intervals_every_s: float = 10.0, hold_timeout_s: float = 900.0,
                 log_every_s: float = 60.0, group: "PipelineGroup | None" = None):
        self.community = community
        self.group = group
        if group is not None:                 # written with the group's rounds (see PipelineGroup)
            flush_s = max(flush_s, group.flush_s)
        self.batch_max = batch_max
        self.flush_s = flush_s
        self.intervals_every_s = intervals_every_s
        self.hold_timeout_s = hold_timeout_s
        self.log_every_s = log_every_s
        # SimpleQueue (C, no per-item locking in Python) bounded by polling its size in _put
        self._q = queue.SimpleQueue() if group is None else _GroupQueue(group, self)
        self.queue_size = queue_size
        self._lock = threading.Lock()             # guards the status dicts read by other threads
        self._states: dict[str, _State] = {}
        self._status: dict[str, MeterStatus] = {}
        self._unknown: dict[str, UnknownMeter] = {}   # in the order last heard (oldest first)
        self.unknown_dropped = 0                      # unknown meters dropped from the list (MAX_UNKNOWN)
        self._unknown_logged_at: float | None = None
        self._unknown_unlogged = 0
        self._held: set[str] = set()              # meters with a held reading
        self._last_held_check = 0.0
        self._meters = {}
        self._batch: list[Reading] = []
        self._journaled = 0                       # readings at the head of _batch in the group's journal
        self._journal_seq = 0                     # the journal's number of the last of them
        self._tail_since = 0.0                    # monotonic: the first reading after them
        self._batch_spans: dict[str, tuple[datetime, datetime]] = {}
        self._batch_since = 0.0
        self._dirty: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
        self._last_intervals = time.monotonic()
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter = Counter()
        self._thread: threading.Thread | None = None
        self._full_logged = False
        self.stored = 0
        self.write_failures = 0
        self.last_write_error: str | None = None   # the store's reason while writes fail (health shows it)
        self._intervals_failing = False
        self._retry_last_at = 0.0
        self.unattributed: Counter = Counter()   # rejections that name no meter (e.g. foreign topics)
        self.stats = PipelineStats()
        self._marks: list = []
        self._release: set[tuple[str, str]] = set()   # (meter, ts) of decided held readings (see _release_decided)
        self._journal_blocked = False             # its journal rows could not be read: never journaled
        if group is not None:
            self._recover_journal()
        self._restored = self._load_held()
        self.reload_meters()
        for b in self._batch:                     # readings recovered but not yet stored: the references
            st = self._states.get(b.meter_id)
            if st is not None and (st.last is None or st.last.ts_utc < b.ts_utc):
                st.last = b

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Pipeline":
        if self._thread is not None:
            raise RuntimeError("pipeline already started")
        if self.group is not None:
            self._thread = self.group.attach(self)
            return self
        self._thread = threading.Thread(target=self._run, name="ingest-pipeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Write everything queued and buffered, compute the intervals, then stop the worker
        (waits for it: stopping early would lose what is buffered)."""
        if self._thread is None:
            return
        if self.group is not None:
            done = threading.Event()
            self._q.put((_STOP, done))
            done.wait()
        else:
            self._q.put(_STOP)
            self._thread.join()
        self._thread = None

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is stored and its intervals computed."""
        done = threading.Event()
        self._q.put((_FLUSH, done))
        if not done.wait(timeout):
            raise TimeoutError("ingest pipeline did not flush in time")

    def registry_changed(self, timeout: float = 30.0) -> None:
        """The registry changed (a meter was adopted or edited): the worker takes the new meters
        between two readings (never while it works on one)."""
        if self._thread is None:
            self.reload_meters()
            return
        done = threading.Event()
        self._q.put(("reload", done))
        if not done.wait(timeout):
            raise TimeoutError("ingest pipeline did not take the new registry in time")

    def reload_meters(self) -> None:
        """Take the registry's meters; the last stored reading of each is the reference for the
        next one (loaded in one query)."""
        meters = {m.meter_id: m for m in self.community.meters()}
        new = [m for m in meters if m not in self._states]
        try:
            last, loaded = self.community.last_readings(new), True
        except StoreUnavailable as exc:
            log.warning("last readings unavailable (%s): each meter's is loaded when the store answers", exc)
            last, loaded = {}, False
        for mid in new:
            self._states[mid] = _State(last=last.get(mid), loaded=loaded)
        with self._lock:
            self._meters = meters
            for mid, m in meters.items():
                self._status.setdefault(mid, MeterStatus(mid, m.house_id))
                self._unknown.pop(mid, None)
        for mid in new:
            self._restore_held(mid)

    def _recover_journal(self) -> None:
        """Readings a group acknowledged from its journal but the store did not get before the
        last run ended: written now, before the meters' last readings are loaded."""
        journal = self.group.journal_for(self.community)
        if journal is None:
            return
        key = self.group.journal_key(self.community)
        try:
            df, upto = journal.rows(key)
        except Exception:
            # its rows must outlive this run: the community never joins the journal now (a later
            # delete of its stored rows would take the unread ones with them)
            self._journal_blocked = True
            log.exception("cannot read the ingest journal %s: its readings of this community stay in it for "
                          "the next start, and this community's readings are written directly", journal.path)
            return
        if df.empty:
            return
        try:
            self.community.store.write_readings(df)
        except Exception as exc:
            # kept at the head of the batch and retried by the normal write (directly, not through
            # the journal), which forgets them in the journal once the store has them
            log.error("%d journaled readings could not be written to the store (%s): kept and retried",
                      len(df), describe_store_error(exc))
            self._batch = [Reading(r.meter_id, r.ts.to_pydatetime(), *(None if pd.isna(v) else float(v) for v in (
                r.import_kwh, r.export_kwh, r.power_in_kw, r.power_out_kw))) for r in df.itertuples(index=False)]
            self._journaled, self._journal_seq = len(self._batch), upto
            self._batch_since = self._tail_since = time.monotonic()
            self.write_failures, self.last_write_error = 1, describe_store_error(exc)
            return
        for meter_id, g in df.groupby("meter_id")["ts"]:
            self._dirty[meter_id] = (pd.Timestamp(g.min()), pd.Timestamp(g.max()))
        try:
            journal.commit([], [(key, upto)])
        except Exception:                           # stored: written again (idempotent) at the next start
            log.exception("the ingest journal %s could not forget the readings written from it", journal.path)
        log.info("%d readings acknowledged before the last run ended were written from the ingest journal", len(df))

    # -- held readings survive a crash -------------------------------------------------------------
    # A held reading's message is acknowledged with the ones around it (holding back the
    # acknowledgement would stall an MQTT session for up to ``hold_timeout_s``), so it is kept in the
    # ledger from the moment it is held until the store has it or it is rejected; a restarted
    # pipeline holds it again and the meter's next reading decides it as before.
    def _load_held(self) -> dict[str, list[Reading]]:
        held: dict[str, list[Reading]] = {}
        try:
            for r in self.community.ledger.held_readings():
                held.setdefault(r.meter_id, []).append(r)
        except Exception:
            log.exception("cannot read the held readings kept from the last run")
        return held

    def _restore_held(self, meter_id: str) -> None:
        kept = self._restored.pop(meter_id, None)
        if not kept:
            return
        state = self._states[meter_id]
        now = time.monotonic()
        for r in kept:
            if state.last is not None and r.ts_utc <= state.last.ts_utc:
                self._release.add(_key(r))            # stored (or superseded) before the last run ended
            else:
                state.held.append((r, now))
        if state.held:
            self._set_held(meter_id, len(state.held))
            log.info("meter %s: %d readings from %s on, held when the last run ended, are held again",
                     meter_id, len(state.held), state.held[0][0].ts_utc.isoformat())

    def _keep_held(self, state: _State, r: Reading) -> None:
        try:
            self.community.ledger.hold_reading(r)
        except Exception:
            state.unkept = True
            log.exception("meter %s: cannot keep the held reading at %s in the ledger (it is held in "
                          "memory only)", r.meter_id, r.ts_utc.isoformat())

    def _release_decided(self) -> None:
        """Forget the kept copies of decided readings once nothing unwritten can contain them."""
        if not self._release or self._batch:
            return
        keys, self._release = self._release, set()
        try:
            self.community.ledger.release_held(keys)
        except Exception:
            log.exception("cannot release %d decided held readings (retrying)", len(keys))
            self._release |= keys

    # -- sources call these ----------------------------------------------------------------------
    def submit(self, reading: Reading, source: str = "") -> None:
        """Hand over one reading; waits while the queue is full (see back-pressure above)."""
        self._put(("reading", reading, source))

    def submit_parse(self, parse, meter_id: str, received: datetime, source: str = "") -> None:
        """Hand over a message to be parsed in the worker: ``parse()`` returns a Reading or raises
        an error with a ``code`` (ingest.sensor.MessageError), which is counted as a rejection."""
        self._put(("parse", parse, meter_id, received, source))

    def mark(self, done) -> None:
        """Call ``done()`` once everything submitted before is in the store (rejections counted):
        a source acknowledges its messages then, never earlier."""
        self._put(("mark", done))

    def reject(self, meter_id: str | None, code: str, message: str, source: str = "",
               at: datetime | None = None) -> None:
        """Count a message a source could not turn into a reading."""
        self._put(("reject", meter_id, code, message, source, at or datetime.now(timezone.utc)))

    def _put(self, item) -> None:
        if self._q.qsize() >= self.queue_size:
            owner = self if self.group is None else self.group    # a group's queue is one: one warning
            if not owner._full_logged:
                owner._full_logged = True
                log.warning("ingest queue full (%d items): sources wait until the store catches up",
                            self.queue_size)
            while self._q.qsize() >= self.queue_size:
                time.sleep(0.001)
        self._q.put(item)

    # -- status (any thread) -----------------------------------------------------------------------
    def status(self) -> dict[str, MeterStatus]:
        with self._lock:
            return {k: replace(v, rejected=Counter(v.rejected)) for k, v in self._status.items()}

    def unknown_meters(self) -> dict[str, UnknownMeter]:
        with self._lock:
            return {k: replace(v) for k, v in self._unknown.items()}

    @property
    def queued(self) -> int:
        return self._q.qsize()

    # -- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        # The worker polls instead of blocking on every item: a blocked get() makes each put()
        # wake this thread, a thread switch per message; polling drains whatever has arrived
        # and sleeps IDLE_S when there is nothing (at most that much added latency).
        handled = 0
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                item = None
            try:
                if item is None:
                    self._periodic()
                    time.sleep(IDLE_S)
                    continue
                if self._handle(item):
                    return
                handled += 1
                if handled % 256 == 0 or len(self._batch) >= self.batch_max:
                    self._periodic()
            except Exception:            # never let one bad item end ingest
                log.exception("ingest pipeline: unexpected error (continuing)")

    def _handle(self, item) -> bool:
        """One item of the queue (in the worker: this pipeline's thread or its group's); True
        once the pipeline has stopped."""
        if item is _STOP or (type(item) is tuple and item[0] is _STOP):
            self._decide_held(force=True, stopping=True)   # only those the ledger does not keep
            self._write_batch(force=True)
            self._release_decided()
            self._compute_intervals(force=True)
            return True
        kind = item[0]
        if kind == "parse":
            self._on_parse(*item[1:])
        elif kind == "reading":
            self._on_reading(item[1], item[2])
        elif kind == "reject":
            self._on_reject(*item[1:])
        elif kind == "mark":
            self._marks.append(item[1])
            if self.group is not None and self._batch:
                self.group.wants_write(self)               # written with the group's next round
            else:
                self._write_batch(force=True)
                if not self._batch:
                    self._fire_marks()
        elif kind == "reload":
            self.reload_meters()
            item[1].set()
        elif kind is _FLUSH:
            self._decide_held(force=True)
            self._write_batch(force=True)
            self._release_decided()
            self._compute_intervals(force=True)
            item[1].set()
        return False

    def _periodic(self, intervals: bool = True, write: bool = True) -> None:
        self._decide_held(force=False)
        if write:
            self._write_batch(force=False)
        self._release_decided()
        if intervals:
            self._compute_intervals(force=False)

    def _on_parse(self, parse, meter_id, received, source) -> None:
        try:
            reading = parse()
        except Exception as exc:          # a MessageError carries its code; anything else is unreadable
            self._on_reject(meter_id, getattr(exc, "code", "unreadable"),
                            str(exc) if hasattr(exc, "code") else repr(exc), source, received)
            return
        self._on_reading(reading, source)

    def _on_reject(self, meter_id, code, message, source, at) -> None:
        self.stats.received[source or "?"] += 1
        self.stats.rejected[(source or "?", code)] += 1
        with self._lock:
            if meter_id is not None and meter_id not in self._meters:
                self._count_unknown(meter_id, source, at)
                return
            st = self._status.get(meter_id) if meter_id else None
            if st is None:
                self.unattributed[code] += 1
            else:
                st.rejected[code] += 1
                st.last_rejection = message
                st.last_rejection_at = at
                st.last_received = at
        self._log_rejection(meter_id or "?", f"{source}: {message}" if source else message)

    def _count_unknown(self, meter_id: str, source: str, at: datetime) -> None:
        """(Called with ``_lock`` held.)"""
        meter_id = meter_id[:MAX_METER_ID_CHARS]
        u = self._unknown.pop(meter_id, None)
        if u is None:
            u = UnknownMeter(meter_id, first_seen=at, source=source)
            if len(self._unknown) >= MAX_UNKNOWN:
                del self._unknown[next(iter(self._unknown))]
                self.unknown_dropped += 1
            now = time.monotonic()
            if self._unknown_logged_at is None or now - self._unknown_logged_at >= self.log_every_s:
                more, self._unknown_unlogged, self._unknown_logged_at = self._unknown_unlogged, 0, now
                log.warning("messages from unknown meter %s (%s): counted, not billed, until adopted%s",
                            meter_id, source or "?",
                            f" ({more} more unknown meters heard since the last warning)" if more else "")
            else:
                self._unknown_unlogged += 1
        self._unknown[meter_id] = u                    # re-inserted: the list stays in order last heard
        u.messages += 1
        u.last_seen = at

    def _log_rejection(self, meter_id: str, message: str) -> None:
        now = time.monotonic()
        last = self._last_logged.get(meter_id)
        if last is not None and now - last < self.log_every_s:
            self._suppressed[meter_id] += 1
            return
        more = self._suppressed.pop(meter_id, 0)
        self._last_logged[meter_id] = now
        log.warning("meter %s: rejected: %s%s", meter_id, message,
                    f" ({more} more rejections since the last warning)" if more else "")

    def _on_reading(self, r: Reading, source: str) -> None:
        self.stats.received[source or "?"] += 1
        self.stats.sources[r.meter_id] = source or "?"
        meter = self._meters.get(r.meter_id)
        if meter is None:
            with self._lock:
                self._count_unknown(r.meter_id, source, r.ts_utc)
            return
        state = self._states.setdefault(r.meter_id, _State())
        if not state.loaded and time.monotonic() >= self._retry_last_at:
            try:
                stored = self.community.last_reading(r.meter_id)
                if stored is not None and (state.last is None or stored.ts_utc > state.last.ts_utc):
                    state.last = stored
                state.loaded = True
            except StoreUnavailable:
                self._retry_last_at = time.monotonic() + 30   # judged against what arrived meanwhile
        self._status[r.meter_id].last_received = r.ts_utc     # a single attribute store: atomic
        self._judge(state, r, meter.max_power_kw)

    def _judge(self, state: _State, r: Reading, limit_kw: float) -> None:
        if state.held:
            newest = state.held[-1][0]
            if r.ts_utc <= newest.ts_utc:
                # a redelivered copy of a held reading does not confirm it
                if any(h.ts_utc == r.ts_utc and _same_counters(h, r) for h, _ in state.held) or \
                        (r.ts_utc <= state.held[0][0].ts_utc and state.last is not None
                         and r.ts_utc <= state.last.ts_utc and self._is_earlier_copy(r)):
                    with self._lock:
                        self._status[r.meter_id].duplicates += 1
                    return
                self._rejected(r, "out_of_order", f"reading at {r.ts_utc.isoformat()} is not newer than the "
                                                  f"one before it ({newest.ts_utc.isoformat()})")
                return
            state.held.append((r, time.monotonic()))
            self._keep_held(state, r)
            self._settle(state, r.meter_id, limit_kw, final=False)
            return
        last = state.last
        if last is not None and r.ts_utc <= last.ts_utc:
            if (r.ts_utc == last.ts_utc and (r.import_kwh, r.export_kwh) == (last.import_kwh, last.export_kwh)) \
                    or (r.ts_utc < last.ts_utc and self._is_earlier_copy(r)):
                with self._lock:
                    self._status[r.meter_id].duplicates += 1
                return
            self._rejected(r, "out_of_order", f"reading at {r.ts_utc.isoformat()} is not newer than the "
                                              f"last accepted one ({last.ts_utc.isoformat()})")
            return
        if last is None or self._steps_ok(last, r, limit_kw):
            self._accept(state, r, reset=False)
            return
        state.held.append((r, time.monotonic()))
        self._set_held(r.meter_id, 1)
        self._keep_held(state, r)

    @staticmethod
    def _steps_ok(a: Reading, b: Reading, limit_kw: float) -> bool:
        dt = (b.ts_utc - a.ts_utc).total_seconds()
        for x, y in ((a.import_kwh, b.import_kwh), (a.export_kwh, b.export_kwh)):
            if x is not None and y is not None and counter_step(y - x, dt, limit_kw) != "ok":
                return False
        return True

    def _is_earlier_copy(self, r: Reading) -> bool:
        """Is ``r``, older than the meter's last accepted reading, a copy of one accepted before? A
        broker redelivers every message it has no acknowledgement for, and after a crash those can
        be several readings that were already written: duplicates, not readings out of order.
        Looked up in the batch not yet written, then in the store (if that cannot answer now, the
        reading counts as out of order: it is not stored either way)."""
        for b in self._batch:
            if b.meter_id == r.meter_id and b.ts_utc == r.ts_utc:
                return _same_counters(b, r)
        try:
            got = self.community.store.read_readings(r.meter_id, r.ts_utc, r.ts_utc + timedelta(microseconds=1))
        except Exception as exc:
            log.warning("meter %s: cannot look up the stored reading at %s (%s)", r.meter_id,
                        r.ts_utc.isoformat(), exc)
            return False
        if got.empty:
            return False
        row = got.iloc[0]
        return _same_counters(Reading(r.meter_id, r.ts_utc, _opt(row["import_kwh"]), _opt(row["export_kwh"])), r)

    def _settle(self, state: _State, meter_id: str, limit_kw: float, final: bool) -> None:
        """Decide what the held readings' trend decides (``judge_counter`` on the last accepted
        reading followed by the held ones; with ``final`` every held reading is decided). A
        reading is accepted when both its counters are, a new series when either starts one,
        rejected when either is rejected; after a rejection the rest is judged again against
        the readings actually accepted."""
        while state.held:
            if state.last is None:                # held again after a restart while the store did not answer
                h = state.held.pop(0)[0]
                self._release.add(_key(h))
                self._accept(state, h, reset=False)
                continue
            seq = [state.last] + [h for h, _ in state.held]
            t = np.array([x.ts_utc.timestamp() for x in seq])
            verdicts, reasons = [], []
            for attr, label in (("import_kwh", "Ei"), ("export_kwh", "Eo")):
                v = np.array([np.nan if getattr(x, attr) is None else getattr(x, attr) for x in seq], dtype=float)
                ver, why = judge_counter(t, v, limit_kw, label, final=final)
                verdicts.append(ver)
                reasons.append(why)
            done, again = 0, False
            for k in range(1, len(seq)):
                ver = [vv[k] for vv in verdicts]
                if REJECT in ver:
                    why = "; ".join(rr[k] for rr, vv in zip(reasons, verdicts) if vv[k] == REJECT and rr[k])
                    code = "went_backwards" if "backwards" in why else "implausible_power"
                    self._rejected(seq[k], code, why)
                    done, again = k, True
                    break
                if OPEN in ver:
                    break
                self._accept(state, seq[k], reset=BREAK in ver)
                done = k
            for h, _ in state.held[:done]:
                self._release.add(_key(h))
            del state.held[:done]
            if not again:
                break
        self._set_held(meter_id, len(state.held))

    def _decide_held(self, force: bool, stopping: bool = False) -> None:
        """Decide held readings that waited ``hold_timeout_s`` (measured on the monotonic clock
        from when the oldest was held) for the readings that would decide them. A flush leaves
        recent ones waiting; stopping leaves the ones the ledger keeps to the next run (which holds
        them again) and decides only those it could not keep."""
        if not self._held or (not force and time.monotonic() - self._last_held_check < 1.0):
            return
        self._last_held_check = now = time.monotonic()
        for meter_id in list(self._held):
            state = self._states[meter_id]
            if not state.held:
                self._held.discard(meter_id)
                continue
            if (stopping and state.unkept) or (not stopping and now - state.held[0][1] >= self.hold_timeout_s):
                self._settle(state, meter_id, self._meters[meter_id].max_power_kw, final=True)
                state.unkept = bool(state.held) and state.unkept

    def _set_held(self, meter_id: str, n: int) -> None:
        if n:
            self._held.add(meter_id)
        else:
            self._held.discard(meter_id)
        with self._lock:
            self._status[meter_id].held = n

    def _accept(self, state: _State, r: Reading, reset: bool) -> None:
        state.last = r
        if len(self._batch) == self._journaled:
            self._tail_since = time.monotonic()
            if not self._batch:
                self._batch_since = self._tail_since
        self._batch.append(r)
        span = self._batch_spans.get(r.meter_id)      # readings arrive in order: extend the end
        self._batch_spans[r.meter_id] = (span[0], r.ts_utc) if span else (r.ts_utc, r.ts_utc)
        # only this thread writes a meter's status; single attribute stores need no lock (a
        # reader may see a count one reading ahead of last_seen, never a broken object)
        st = self._status[r.meter_id]
        st.accepted += 1
        st.last_seen = r.ts_utc
        if self.stats.newest_reading is None or r.ts_utc > self.stats.newest_reading:
            self.stats.newest_reading = r.ts_utc
        if r.import_kwh is not None:
            st.last_import_kwh = r.import_kwh
        if r.export_kwh is not None:
            st.last_export_kwh = r.export_kwh
        st.last_power_in_kw, st.last_power_out_kw = r.power_in_kw, r.power_out_kw
        if reset:
            st.resets += 1
            st.last_reset_at = r.ts_utc
        if reset:
            log.warning("meter %s: counter reset or exchange at %s: new series from Ei=%s Eo=%s "
                        "(intervals flagged 'reset' for review)", r.meter_id, r.ts_utc.isoformat(),
                        r.import_kwh, r.export_kwh)

    def _rejected(self, r: Reading, code: str, message: str) -> None:
        self.stats.rejected[(self.stats.sources.get(r.meter_id, "?"), code)] += 1
        with self._lock:
            st = self._status[r.meter_id]
            st.rejected[code] += 1
            st.last_rejection = message
            st.last_rejection_at = r.ts_utc
        self._log_rejection(r.meter_id, message)

    def _write_due(self) -> bool:
        """Is the batch due (``flush_s`` after its first reading, or ``batch_max`` readings)? A batch
        the group's journal holds is due after the group's ``store_s`` or ``store_readings`` (its
        readings are acknowledged already: fewer, larger writes), or ``flush_s`` after the first
        reading that followed them without a mark (a polled source's)."""
        if not self._batch:
            return False
        now = time.monotonic()
        if self._journaled:                       # readings after them (no mark yet): flush_s after the first
            return len(self._batch) >= self.group.store_readings or now - self._batch_since >= self.group.store_s \
                or (len(self._batch) > self._journaled and now - self._tail_since >= self.flush_s)
        return len(self._batch) >= self.batch_max or now - self._batch_since >= self.flush_s

    def _write_batch(self, force: bool, fire: bool = True) -> None:
        """Write the batch when it is due (or ``force``); ``fire``: answer the marks waiting once
        it is written (a group's round answers them itself, after every pipeline of the round)."""
        if not self._batch:
            return
        if not force and not self._write_due():
            return
        batch = self._batch
        df = pd.DataFrame({
            "meter_id": [r.meter_id for r in batch],
            "ts": pd.to_datetime([r.ts_utc for r in batch], utc=True).astype("datetime64[us, UTC]"),
            "import_kwh": np.array([np.nan if r.import_kwh is None else r.import_kwh for r in batch]),
            "export_kwh": np.array([np.nan if r.export_kwh is None else r.export_kwh for r in batch]),
            "power_in_kw": np.array([np.nan if r.power_in_kw is None else r.power_in_kw for r in batch]),
            "power_out_kw": np.array([np.nan if r.power_out_kw is None else r.power_out_kw for r in batch]),
        })
        t0 = time.monotonic()
        try:
            result = self.community.store.write_readings(df)
        except Exception as exc:
            # keep the batch and retry: the store may be busy or briefly unavailable
            self.write_failures += 1
            self.last_write_error = describe_store_error(exc)
            if self.write_failures == 1:
                log.error("cannot write %d readings to the store (%s); keeping them and retrying", len(batch), exc)
            self._batch_since = self._tail_since = time.monotonic()
            return
        if self.write_failures:
            log.warning("store writes recovered after %d failed attempts", self.write_failures)
            self.write_failures = 0
            self.last_write_error = None
        took = time.monotonic() - t0
        self.stats.writes += 1
        self.stats.write_seconds_sum += took
        self.stats.write_seconds_max = max(self.stats.write_seconds_max, took)
        if self.stats.dirty_since is None:
            self.stats.dirty_since = time.monotonic()
        self._batch = []
        if self._journaled:                       # stored: the journal may forget them
            self.group.journal_stored(self, self._journal_seq)
            self._journaled = 0
        self.stored += result.inserted
        if fire:
            self._fire_marks()
        for meter_id, (lo, hi) in self._batch_spans.items():
            if meter_id in self._dirty:
                a, b = self._dirty[meter_id]
                lo, hi = min(lo, a), max(hi, b)
            self._dirty[meter_id] = (pd.Timestamp(lo), pd.Timestamp(hi))
        self._batch_spans = {}

    def _fire_marks(self) -> None:
        marks, self._marks = self._marks, []
        for done in marks:
            try:
                done()
            except Exception:
                log.exception("ingest pipeline: a source's acknowledgement failed")

    def _intervals_due(self) -> bool:
        return bool(self._dirty) and time.monotonic() - self._last_intervals >= self.intervals_every_s

    def _compute_intervals(self, force: bool) -> None:
        if not self._dirty:
            return
        if not force and time.monotonic() - self._last_intervals < self.intervals_every_s:
            return
        self._last_intervals = t0 = time.monotonic()
        dirty, self._dirty = self._dirty, {}
        try:
            self.community.update_intervals_many(dirty, appended=True)
            self.stats.interval_runs += 1
            self.stats.intervals_seconds_sum += time.monotonic() - t0
            self.stats.dirty_since = None
            if self._intervals_failing:
                log.warning("interval computation works again")
                self._intervals_failing = False
        except Exception as exc:
            if not self._intervals_failing:
                if isinstance(exc, StoreUnavailable):
                    log.warning("intervals of %d meters wait for the store: %s", len(dirty), exc)
                else:
                    log.exception("interval computation for %d meters failed; will retry", len(dirty))
                self._intervals_failing = True
            for meter_id, (lo, hi) in dirty.items():
                if meter_id in self._dirty:
                    a, b = self._dirty[meter_id]
                    lo, hi = min(lo, a), max(hi, b)
                self._dirty[meter_id] = (lo, hi)


class _GroupQueue:
    """A pipeline's queue in a ``PipelineGroup``: its items go to the group's one queue, tagged
    with the pipeline; the size is the group's (the back-pressure of the one worker)."""

    def __init__(self, group: "PipelineGroup", pipeline: Pipeline):
        self._group, self._pipeline = group, pipeline

    def put(self, item) -> None:
        self._group._q.put((self._pipeline, item))

    def qsize(self) -> int:
        return self._group._q.qsize()

    def get_nowait(self):
        raise queue.Empty


def _write_member(p: Pipeline) -> bool:
    """A group member's batch written (its marks not yet answered); False after an unexpected error."""
    try:
        p._write_batch(force=True, fire=False)
        return True
    except Exception:
        log.exception("ingest pipeline: unexpected error in a write round (continuing)")
        return False


JOURNAL_FILE = "ingest_journal.sqlite"      # beside the communities' folders (instance.instance_dir)


def journal_backlog(path, community: str) -> int:
    """How many readings of ``community`` the journal at ``path`` holds that its store may not
    have yet (a multi-community run ended before writing them; its next start writes them)."""
    import sqlite3
    from pathlib import Path
    if not Path(path).exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM journal WHERE community = ?", (community,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        log.warning("cannot read the ingest journal %s: %s", path, exc)
        return 0


class IngestJournal:
    """The readings a group acknowledged before its members' stores have them (SQLite, WAL, a
    commit per round with ``synchronous=FULL``: on disk before the broker is told). Each row is
    forgotten once its community's store has it; what is left when a run ends is written by
    ``Pipeline._recover_journal`` at the next start."""

    COLUMNS = ("meter_id", "ts", "import_kwh", "export_kwh", "power_in_kw", "power_out_kw")

    def __init__(self, path):
        import sqlite3
        self.path = str(path)
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute("CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, community TEXT NOT NULL, "
                          "meter_id TEXT NOT NULL, ts TEXT NOT NULL, import_kwh REAL, export_kwh REAL, "
                          "power_in_kw REAL, power_out_kw REAL)")
        self._con.execute("CREATE INDEX IF NOT EXISTS journal_community ON journal (community, seq)")
        self._lock = threading.Lock()
        self.seq = self._con.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]
        self.commits = 0

    def commit(self, rows: list[tuple], stored: list[tuple[str, int]]) -> None:
        """One transaction: ``rows`` (community, Reading) added with the next numbers, and every
        community's rows up to its number in ``stored`` forgotten."""
        with self._lock:
            con = self._con
            con.execute("BEGIN")
            try:
                if stored:
                    con.executemany("DELETE FROM journal WHERE community = ? AND seq <= ?", stored)
                if rows:
                    first = self.seq + 1
                    con.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                        (first + k, c, r.meter_id, r.ts_utc.isoformat(), _opt(r.import_kwh), _opt(r.export_kwh),
                         _opt(r.power_in_kw), _opt(r.power_out_kw)) for k, (c, r) in enumerate(rows)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            self.seq += len(rows)
            self.commits += 1

    def rows(self, community: str) -> tuple[pd.DataFrame, int]:
        """A community's rows as readings (the store's columns) and the number of the last."""
        with self._lock:
            got = self._con.execute(f"SELECT seq, {', '.join(self.COLUMNS)} FROM journal WHERE community = ? "
                                    "ORDER BY seq", (community,)).fetchall()
        df = pd.DataFrame([g[1:] for g in got], columns=list(self.COLUMNS))
        if len(df):
            df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
            for c in self.COLUMNS[2:]:
                df[c] = df[c].astype("float64")
        return df, (got[-1][0] if got else 0)

    def close(self) -> None:
        with self._lock:
            self._con.close()


class PipelineGroup:
    """One worker thread for the pipelines of many communities (``instance.py``).

    A thread per community does not scale: 200 polling workers take a core while idle and fight
    over the interpreter lock while busy. In a group each pipeline keeps its own state, store and
    intervals, but the group's thread handles the items of all of them in arrival order.

    **Rounds and the journal.** A source's acknowledgement (``mark``, an MQTT batch every 100 ms
    with readings of nearly every community) waits for a *round*, which comes when the worker has
    nothing queued and the oldest mark waited ``ack_min_s``, else after ``ack_max_s`` or
    ``ack_readings`` readings (kept under the broker's in-flight window, ``max_inflight_messages
    1000``, or the broker would stop delivering until the round). So a round holds at most about
    1,000 readings, 5 per community of 200: writing every community's store in each round made
    200 store writes of 5 readings per 1,000 readings (7-11 ms each, most of it fixed cost). A
    round of more than ``direct_members`` communities therefore writes their new readings into one journal
    (``IngestJournal``, ``ingest_journal.sqlite`` beside the communities' folders: one commit),
    answers the marks, and each community's store gets its readings later in larger writes: when
    its batch is ``store_s`` old or has ``store_readings`` readings, at most ``writes_per_sweep``
    stores per sweep (spread, never 200 at once), on ``writers`` threads (the writes spend most of
    their time outside the interpreter lock). A store write makes the journal forget those rows
    (with its next commit); a stop writes every batch; after a crash, ``Pipeline._recover_journal``
    writes what the journal still holds before the pipeline starts. A round of a few communities
    (little arriving) writes their stores directly, as does every round without a journal (it cannot
    be opened, or a commit failed).

    Readings without marks (polled sources) are written at least every ``flush_s``. The interval
    computations due are run one pipeline at a time between the items (never 200 at once).

    Trade-off: one community's slow store delays the others (they share the thread); a store that
    fails is retried as before and does not block the others; a reading reaches the store (and its
    intervals) up to ``store_s`` after it arrived."""

    def __init__(self, *, ack_min_s: float = 0.25, ack_max_s: float = 1.0, ack_readings: int = 900,
                 flush_s: float = 1.0, sweep_s: float = 0.05, writers: int = 4, store_threads: int = 1,
                 journal: bool = True, store_s: float = 10.0, store_readings: int = 2000,
                 writes_per_sweep: int = 8, direct_members: int = 8):
        self.ack_min_s, self.ack_max_s, self.ack_readings = ack_min_s, ack_max_s, ack_readings
        self.flush_s, self.sweep_s = flush_s, sweep_s
        self.writers = writers                         # store writes run on this many threads
        self.store_threads = store_threads             # a member's embedded store queries on this many
        self.use_journal = journal
        self.store_s, self.store_readings, self.writes_per_sweep = store_s, store_readings, writes_per_sweep
        self.direct_members = direct_members           # a round of this many members writes their stores
        self.journal: IngestJournal | None = None
        self._journal_failed = False
        self._forget: dict[str, int] = {}              # community -> journal rows stored up to this number
        self._pool = None
        self._full_logged = False
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._members: list[Pipeline] = []
        self._thread: threading.Thread | None = None
        self._waiting: dict[Pipeline, None] = {}       # pipelines with marks waiting for the round
        self._waiting_since: float | None = None
        self._readings_since_round = 0
        self._next_intervals = 0                       # round-robin over the members
        self.rounds = 0
        self.round_writes = 0
        self.journaled = 0                             # readings acknowledged from the journal
        self.round_seconds = 0.0

    @property
    def queued(self) -> int:
        return self._q.qsize()

    @property
    def members(self) -> list[Pipeline]:
        return list(self._members)

    # -- the journal ---------------------------------------------------------------------------------
    @staticmethod
    def journal_key(community) -> str:
        return getattr(getattr(community, "cfg", None), "slug", None) or ""

    def journal_for(self, community) -> IngestJournal | None:
        """The group's journal, opened with the first member (in the folder above its data folder)."""
        if not self.use_journal or self._journal_failed:
            return None
        with self._lock:
            if self.journal is None:
                try:
                    from pathlib import Path
                    self.journal = IngestJournal(Path(community.cfg.data_dir).parent / JOURNAL_FILE)
                except Exception:
                    log.exception("cannot open the ingest journal: every round writes the stores")
                    self._journal_failed = True
            return self.journal

    def journal_stored(self, pipeline: Pipeline, upto: int) -> None:
        """``pipeline``'s store has its journaled readings up to number ``upto`` (any thread)."""
        key = self.journal_key(pipeline.community)
        with self._lock:
            self._forget[key] = max(upto, self._forget.get(key, 0))

    def _journal_round(self, waiting: list[Pipeline]) -> bool:
        """The new readings of the pipelines waiting in the journal (one commit); False if it failed."""
        journal = self.journal
        rows, tails = [], []
        for p in waiting:
            key = self.journal_key(p.community)
            new = p._batch[p._journaled:]
            rows += [(key, r) for r in new]
            tails.append(len(new))
        with self._lock:
            forget, self._forget = self._forget, {}
        try:
            journal.commit(rows, list(forget.items()))
        except Exception:
            with self._lock:
                for k, v in forget.items():
                    self._forget[k] = max(v, self._forget.get(k, 0))
            log.exception("the ingest journal failed: the rounds write every store again")
            self._journal_failed = True
            return False
        seq = journal.seq - len(rows)
        for p, n in zip(waiting, tails):
            if n:
                seq += n
                p._journaled, p._journal_seq = len(p._batch), seq
        self.journaled += len(rows)
        return True

    def _forget_stored(self) -> None:
        if self.journal is not None and not self._journal_failed and self._forget:
            try:
                self._journal_round([])
            except Exception:
                log.exception("ingest journal: cannot forget stored readings (retrying)")

    # -- members -------------------------------------------------------------------------------------
    def attach(self, pipeline: Pipeline) -> threading.Thread:
        set_threads = getattr(pipeline.community.store, "set_threads", None)
        if set_threads is not None and self.store_threads:
            set_threads(self.store_threads)
        with self._lock:
            self._members.append(pipeline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ingest-pipelines", daemon=True)
                self._thread.start()
            return self._thread

    def wants_write(self, pipeline: Pipeline) -> None:
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting[pipeline] = None

    def _write_members(self, members: list[Pipeline]) -> None:
        """Write the members' batches (a few at a time), then answer their marks (here)."""
        if self.writers > 1 and len(members) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="ingest-write")
            outcomes = list(self._pool.map(_write_member, members))
        else:
            outcomes = [_write_member(p) for p in members]
        for p, ok in zip(members, outcomes):
            try:
                if ok:
                    self.round_writes += 1
                if not p._batch:
                    p._fire_marks()
                    p._release_decided()
                elif p._marks:                          # the write failed: in the next round again
                    self.wants_write(p)
            except Exception:
                log.exception("ingest pipeline: unexpected error in a write round (continuing)")

    def _round(self) -> None:
        t0 = time.monotonic()
        waiting, self._waiting, self._waiting_since = list(self._waiting), {}, None
        self._readings_since_round = 0
        self.rounds += 1
        journal = self.journal_for(waiting[0].community) if len(waiting) > self.direct_members else None
        # a member whose store fails is written directly: its marks wait for its store (the broker
        # holds its messages) instead of its batch growing in memory behind the journal
        healthy = [p for p in waiting if not (p.write_failures or p._journal_blocked)] if journal is not None else []
        if healthy and self._journal_round(healthy):
            for p in healthy:
                try:
                    p._fire_marks()
                except Exception:
                    log.exception("ingest pipeline: unexpected error in a write round (continuing)")
            waiting = [p for p in waiting if p.write_failures or p._journal_blocked]
        self._write_members(waiting)
        self.round_seconds += time.monotonic() - t0

    def _maybe_round(self, idle: bool) -> None:
        if not self._waiting:
            self._readings_since_round = 0
            return
        age = time.monotonic() - self._waiting_since
        if age >= self.ack_max_s or self._readings_since_round >= self.ack_readings or \
                (idle and age >= self.ack_min_s):
            self._round()

    def _sweep(self) -> None:
        """Every member's periodic work (held readings, writes due: at most ``writes_per_sweep``,
        the oldest batches first) and at most one interval computation, the pipelines in turn."""
        members = self._members
        due = []
        for p in members:
            try:                 # a member with marks waiting is written by the round (with the others)
                p._decide_held(force=False)
                if p not in self._waiting and p._write_due():
                    due.append(p)
                else:
                    p._release_decided()
            except Exception:
                log.exception("ingest pipeline: unexpected error (continuing)")
        if due:
            due.sort(key=lambda p: p._batch_since)
            self._write_members(due[:self.writes_per_sweep])
        self._forget_stored()
        for k in range(len(members)):
            p = members[(self._next_intervals + k) % len(members)]
            if p._intervals_due():
                self._next_intervals = (self._next_intervals + k + 1) % len(members)
                try:
                    p._compute_intervals(force=False)
                except Exception:
                    log.exception("ingest pipeline: unexpected error (continuing)")
                break

    def _run(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                p, item = self._q.get_nowait()
            except queue.Empty:
                p = item = None
            try:
                if item is None:
                    self._maybe_round(idle=True)
                    if time.monotonic() - last_sweep >= self.sweep_s:
                        self._sweep()
                        last_sweep = time.monotonic()
                    with self._lock:
                        if not self._members and self._q.qsize() == 0:
                            self._thread = None
                            pool, self._pool = self._pool, None
                            if pool is not None:
                                pool.shutdown(wait=False)
                            journal, self.journal = self.journal, None
                            if journal is not None:
                                journal.close()
                            return
                    time.sleep(IDLE_S)
                    continue
                if type(item) is tuple and item[0] in ("reading", "parse"):
                    self._readings_since_round += 1
                if p._handle(item):
                    self._waiting.pop(p, None)
                    self._forget_stored()              # its journaled readings are stored: forgotten now
                    with self._lock:
                        self._members.remove(p)
                    item[1].set()
                elif len(p._batch) >= p.batch_max:
                    p._periodic(intervals=False)
                self._maybe_round(idle=False)
                if time.monotonic() - last_sweep >= self.sweep_s:
                    self._sweep()
                    last_sweep = time.monotonic()
            except Exception:            # never let one bad item end ingest
                log.exception("ingest pipeline: unexpected error (continuing)")
