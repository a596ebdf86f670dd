"""The rounds of a ``PipelineGroup`` with its journal (``ingest/pipeline.py``): a round of many
communities acknowledges from one journal commit and the stores get larger writes later; nothing
is lost at a stop or after a crash; one "queue full" warning for the group."""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from config import parse_communities
from test_communities import two_communities


@pytest.fixture
def instance(tmp_path):
    from community import Community
    configs = parse_communities(yaml.safe_load(two_communities(tmp_path).read_text()), source="test")
    communities = {s: Community.open(cfg) for s, cfg in configs.items()}
    yield tmp_path, communities
    for c in communities.values():
        c.close()


def start(communities, group):
    from ingest.runtime import IngestRuntime
    from instance import PipelineRouter
    runtimes = {s: IngestRuntime(c, mqtt=False, pipeline_options={"group": group}).start()
                for s, c in communities.items()}
    return runtimes, PipelineRouter(runtimes).start()


def journal_rows(tmp_path) -> int:
    import sqlite3
    con = sqlite3.connect(tmp_path / "data" / "ingest_journal.sqlite")
    try:
        return con.execute("SELECT count(*) FROM journal").fetchone()[0]
    finally:
        con.close()


def submit(router, meter, base, k0, n, start_kwh):
    from ingest.readings import Reading
    for k in range(k0, k0 + n):
        router.submit(Reading(meter, base + timedelta(seconds=10 * k), start_kwh + 0.01 * k, 0.0), "test")


def submit_and_mark(router, n1: int, n3: int) -> datetime:
    """``n1`` readings of M1 (sonnenhalde), ``n3`` of M3 (bergblick), then a mark answered."""
    base = datetime.now(timezone.utc) - timedelta(minutes=5)
    submit(router, "M1", base, 0, n1, 10.0)
    submit(router, "M3", base, 0, n3, 20.0)
    acked = threading.Event()
    router.mark(acked.set)
    assert acked.wait(5)
    return base


def journaled(tmp_path, n: int, minutes_ago: int) -> datetime:
    """A run of all communities acknowledged ``n`` readings of M1 (sonnenhalde) from its journal
    and ended before the store had them; returns the first one's time."""
    from ingest.pipeline import JOURNAL_FILE, IngestJournal
    from ingest.readings import Reading
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    journal = IngestJournal(tmp_path / "data" / JOURNAL_FILE)
    journal.commit([("sonnenhalde", Reading("M1", base + timedelta(seconds=10 * k), 10.0 + 0.01 * k, 0.0))
                    for k in range(n)], [])
    journal.close()
    return base


def stored(communities) -> dict[str, int]:
    return {s: len(c.store.read_readings()) for s, c in communities.items()}


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_a_round_acknowledges_from_the_journal_and_the_stores_get_one_larger_write_later(instance):
    from ingest.pipeline import PipelineGroup
    tmp_path, communities = instance
    group = PipelineGroup(ack_min_s=0.05, direct_members=0, store_s=1.5)
    runtimes, router = start(communities, group)
    try:
        base = datetime.now(timezone.utc) - timedelta(minutes=5)
        seen, acked = {}, threading.Event()
        for batch in range(3):                      # three acknowledged batches of each community
            submit(router, "M1", base, 2 * batch, 2, 10.0)
            submit(router, "M3", base, 2 * batch, 2, 20.0)
            acked.clear()
            t0 = time.monotonic()
            router.mark(lambda: (seen.update(stored(communities), journal=journal_rows(tmp_path)), acked.set()))
            assert acked.wait(5)
            assert time.monotonic() - t0 < 1.0         # promptly, not after store_s
            assert seen == {"sonnenhalde": 0, "bergblick": 0, "journal": 2 * (batch + 1) * 2}
        assert group.journaled == 12
        t0 = time.monotonic()
        assert wait_for(lambda: stored(communities) == {"sonnenhalde": 6, "bergblick": 6})
        # gathered for store_s: one write per community with all six readings
        assert {s: rt.pipeline.stats.writes for s, rt in runtimes.items()} == {"sonnenhalde": 1, "bergblick": 1}
        assert time.monotonic() - t0 < 3.0
        assert wait_for(lambda: journal_rows(tmp_path) == 0)   # forgotten once stored
    finally:
        for rt in runtimes.values():
            rt.stop()


def test_a_journaled_batch_is_written_once_it_has_store_readings(instance):
    from ingest.pipeline import PipelineGroup
    tmp_path, communities = instance
    group = PipelineGroup(ack_min_s=0.05, direct_members=0, store_s=600, store_readings=5)
    runtimes, router = start(communities, group)
    try:
        base = submit_and_mark(router, 6, 2)
        assert wait_for(lambda: stored(communities)["sonnenhalde"] == 6, 5)
        time.sleep(0.3)
        assert stored(communities)["bergblick"] == 0            # 2 readings: waits for store_s
    finally:
        for rt in runtimes.values():
            rt.stop()
    assert stored(communities) == {"sonnenhalde": 6, "bergblick": 2}    # the stop writes the rest
    assert journal_rows(tmp_path) == 0


def test_a_round_of_few_communities_writes_their_stores_before_the_acknowledgement(instance):
    from ingest.pipeline import PipelineGroup
    tmp_path, communities = instance
    group = PipelineGroup(ack_min_s=0.05, store_s=600)            # direct_members 8 > 2 communities
    runtimes, router = start(communities, group)
    try:
        base = datetime.now(timezone.utc) - timedelta(minutes=5)
        submit(router, "M1", base, 0, 3, 10.0)
        submit(router, "M3", base, 0, 3, 20.0)
        seen, acked = {}, threading.Event()
        router.mark(lambda: (seen.update(stored(communities)), acked.set()))
        assert acked.wait(5)
        assert seen == {"sonnenhalde": 3, "bergblick": 3}
        assert group.journaled == 0
    finally:
        for rt in runtimes.values():
            rt.stop()


def test_what_the_journal_holds_after_a_crash_is_stored_at_the_next_start(instance):
    from ingest.pipeline import JOURNAL_FILE, IngestJournal, PipelineGroup
    from ingest.readings import Reading
    tmp_path, communities = instance
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    # acknowledged from the journal, then the process died before the store write
    journal = IngestJournal(tmp_path / "data" / JOURNAL_FILE)
    journal.commit([("sonnenhalde", Reading("M1", base + timedelta(seconds=10 * k), 10.0 + 0.01 * k, 0.0, 0.5, None))
                    for k in range(4)], [])
    journal.close()
    group = PipelineGroup(ack_min_s=0.05, direct_members=0)
    runtimes, router = start(communities, group)
    try:
        got = communities["sonnenhalde"].store.read_readings("M1")
        assert got["import_kwh"].round(2).tolist() == [10.0, 10.01, 10.02, 10.03]
        assert got["ts"].tolist() == [base + timedelta(seconds=10 * k) for k in range(4)]
        assert got["power_in_kw"].tolist() == [0.5] * 4
        assert journal_rows(tmp_path) == 0
        assert stored(communities)["bergblick"] == 0
        # the pipeline goes on from the recovered readings: a copy of one is a duplicate
        submit(router, "M1", base, 3, 2, 10.0)
        runtimes["sonnenhalde"].pipeline.flush()
        st = runtimes["sonnenhalde"].pipeline.status()["M1"]
        assert (st.accepted, st.duplicates, st.rejected_total) == (1, 1, 0)
    finally:
        for rt in runtimes.values():
            rt.stop()
    assert stored(communities)["sonnenhalde"] == 5


def test_journaled_readings_the_store_refuses_at_the_start_are_kept_and_written_later(instance):
    """The store fails once while the journal's rows are replayed at the start: they stay at the
    head of the community's batch, the next readings are checked against them, and once the store
    takes them the journal forgets them (before, a later journaled write deleted them unstored)."""
    from ingest.pipeline import PipelineGroup
    tmp_path, communities = instance
    base = journaled(tmp_path, 4, minutes_ago=10)
    store = communities["sonnenhalde"].store
    write, failed = store.write_readings, []

    def once_failing(df):                                 # a busy file, a brief I/O error
        if not failed:
            failed.append(len(df))
            raise OSError("transient")
        return write(df)
    store.write_readings = once_failing
    group = PipelineGroup(ack_min_s=0.05, direct_members=0, store_s=0.5)
    runtimes, router = start(communities, group)
    try:
        assert failed == [4]
        later = base + timedelta(minutes=5)
        submit(router, "M1", later, 0, 3, 11.0)
        submit(router, "M3", later, 0, 3, 20.0)
        acked = threading.Event()
        router.mark(acked.set)
        assert acked.wait(5)
        assert wait_for(lambda: len(store.read_readings("M1")) == 7)
        assert wait_for(lambda: journal_rows(tmp_path) == 0, 5)
        st = runtimes["sonnenhalde"].pipeline.status()["M1"]
        assert (st.accepted, st.rejected_total) == (3, 0)
    finally:
        for rt in runtimes.values():
            rt.stop()
    got = store.read_readings("M1")
    assert got["import_kwh"].round(2).tolist() == [10.0, 10.01, 10.02, 10.03, 11.0, 11.01, 11.02]


def test_a_community_opened_alone_names_the_readings_still_in_the_journal(instance, caplog):
    """Journaled readings are written by the next run of all communities; a command that opens one
    community alone meanwhile says how many of its readings are not in its store yet."""
    from community import Community
    tmp_path, communities = instance
    journaled(tmp_path, 3, minutes_ago=5)
    with caplog.at_level(logging.WARNING, logger="community"):
        for slug in ("sonnenhalde", "bergblick"):
            Community.open(communities[slug].cfg).close()
    said = [r.getMessage() for r in caplog.records if "ingest journal" in r.getMessage()]
    assert said == ["community sonnenhalde: 3 readings acknowledged by the last run of all communities are still in "
                    "its ingest journal, not yet in its store: a run of all communities (python app.py run) writes "
                    "them when it starts"]


def test_a_full_queue_of_the_group_is_warned_about_once(instance, caplog):
    from ingest.pipeline import Pipeline, PipelineGroup
    tmp_path, communities = instance
    group = PipelineGroup()
    pipelines = [Pipeline(c, group=group, queue_size=2) for c in communities.values()]   # not started
    for _ in range(2):
        group._q.put((pipelines[0], ("mark", lambda: None)))
    caplog.set_level(logging.WARNING, logger="ingest.pipeline")
    threads = [threading.Thread(target=p.mark, args=(lambda: None,)) for p in pipelines]
    for t in threads:
        t.start()
    time.sleep(0.3)
    while group._q.qsize():
        group._q.get_nowait()
    for t in threads:
        t.join(5)
    assert [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()] == \
        ["ingest queue full (2 items): sources wait until the store catches up"]


def test_readings_after_a_journaled_batch_without_a_mark_are_written_flush_s_after_the_first(instance):
    """A polled source's readings (no mark) appended to a journaled batch: written ``flush_s``
    after the first of them, not at once because the batch is old, nor only after ``store_s``."""
    from ingest.pipeline import PipelineGroup
    tmp_path, communities = instance
    group = PipelineGroup(ack_min_s=0.05, direct_members=0, store_s=600, flush_s=1.0)
    runtimes, router = start(communities, group)
    try:
        base = submit_and_mark(router, 2, 2)
        time.sleep(1.2)                                       # the journaled batch is older than flush_s
        assert stored(communities) == {"sonnenhalde": 0, "bergblick": 0}
        submit(router, "M1", base, 2, 1, 10.0)                # no mark follows
        t0 = time.monotonic()
        assert wait_for(lambda: stored(communities)["sonnenhalde"] == 3, 5)
        assert time.monotonic() - t0 >= 0.8
        assert stored(communities)["bergblick"] == 0
    finally:
        for rt in runtimes.values():
            rt.stop()
