"""Prometheus metrics (``GET /metrics``): read from the pipeline, the stores and the ledger at
every scrape by a collector of the app's own registry (no process-wide state). With several
communities in one instance every series carries a ``community`` label (the slug)."""
from __future__ import annotations

import time

import pandas as pd
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily


class _Families:
    """The metric families of one scrape, created on first use with the labels of the scrape."""

    def __init__(self, community_label: bool):
        self.extra = ["community"] if community_label else []
        self.made: dict[str, object] = {}

    def add(self, kind, name: str, doc: str, slug: str | None, value=None, labels=(), values=(), **summary):
        fam = self.made.get(name)
        if fam is None:
            fam = self.made[name] = kind(name, doc, labels=list(labels) + self.extra)
        tail = [slug] if self.extra else []
        if kind is SummaryMetricFamily:
            fam.add_metric(list(values) + tail, summary["count_value"], summary["sum_value"])
        else:
            fam.add_metric(list(values) + tail, value)


class LegCollector:
    def __init__(self, services: dict):
        """``services``: slug -> web.Services (one entry with slug None for a single community)."""
        self.services = services

    def collect(self):
        fams = _Families(community_label=any(slug is not None for slug in self.services))
        now = pd.Timestamp.now(tz="UTC")
        for slug, s in self.services.items():
            self._community(fams, slug, s, now)
        yield from fams.made.values()

    @staticmethod
    def _community(f: _Families, slug, s, now) -> None:
        C, G, S = CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
        c, runtime = s.community, s.runtime
        if runtime is not None:
            p = runtime.pipeline
            st = p.stats.snapshot()
            for source, n in sorted(st.received.items()):
                f.add(C, "leg_messages_received", "Messages and readings received", slug, n, ["source"], [source])
            for (source, reason), n in sorted(st.rejected.items()):
                f.add(C, "leg_messages_rejected", "Messages and readings rejected", slug, n,
                      ["source", "reason"], [source, reason])
            f.add(C, "leg_readings_stored", "Readings written to the store", slug, p.stored)
            f.add(G, "leg_ingest_queue_depth", "Items waiting in the ingest queue", slug, p.queued)
            lag = (now - pd.Timestamp(st.newest_reading)).total_seconds() if st.newest_reading else float("nan")
            f.add(G, "leg_ingest_lag_seconds", "Age of the newest accepted reading", slug, lag)
            wait = time.monotonic() - st.dirty_since if st.dirty_since is not None else 0.0
            f.add(G, "leg_interval_computation_lag_seconds", "How long stored readings have waited for their "
                  "intervals", slug, wait)
            f.add(S, "leg_store_write_seconds", "Store write latency per batch", slug,
                  count_value=st.writes, sum_value=st.write_seconds_sum)
            f.add(G, "leg_store_write_seconds_max", "Slowest store write", slug, st.write_seconds_max)
            f.add(S, "leg_interval_computation_seconds", "Interval computation time per run", slug,
                  count_value=st.interval_runs, sum_value=st.intervals_seconds_sum)
            for mid, ms in p.status().items():
                if ms.last_seen is not None:
                    f.add(G, "leg_meter_last_reading_age_seconds", "Age of each meter's last reading", slug,
                          (now - pd.Timestamp(ms.last_seen)).total_seconds(), ["meter"], [mid])
            up = "Ingest threads running (1) or not (0)"
            f.add(G, "leg_ingest_thread_up", up, slug, float(bool(p._thread and p._thread.is_alive())),
                  ["thread"], ["pipeline"])
            for k, ok in runtime.connections.alive().items():
                f.add(G, "leg_ingest_thread_up", up, slug, float(ok), ["thread"], [k])
        store = c.store.health() if hasattr(c.store, "health") else {}
        f.add(G, "leg_store_spool_lines", "Lines waiting in the InfluxDB spool", slug, store.get("spool_lines", 0))
        if "memory_bytes" in store:
            f.add(G, "leg_store_memory_bytes", "Memory of the embedded store (cache and queries; capped by "
                  "storage.memory_limit_mb)", slug, store["memory_bytes"])
        if "reopens" in store:
            f.add(C, "leg_store_reopens", "Times the embedded store reopened its file to give back the memory "
                  "of its writes (storage.reopen_every_rows)", slug, store["reopens"])
        periods = [p for p in c.ledger.periods() if p["status"] == "closed"]
        f.add(C, "leg_invoice_runs", "Periods closed (invoice runs)", slug, len(periods))
        issued = sum(len(c.ledger.issued_invoices(p["period_id"])) for p in periods)
        f.add(C, "leg_invoices_issued", "Invoices issued", slug, issued)


def registry_for(services: dict) -> CollectorRegistry:
    """A registry for one scrape of ``services`` (slug -> web.Services; {None: services} for one community)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LegCollector(services))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
