"""Prometheus metrics (``GET /metrics``): read from the pipeline, the stores and the ledger at
every scrape by a collector of the app's own registry (no process-wide state)."""
from __future__ import annotations

import time

import pandas as pd
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily


class LegCollector:
    def __init__(self, services):
        self.services = services

    def collect(self):
        s = self.services
        c, runtime = s.community, s.runtime
        now = pd.Timestamp.now(tz="UTC")
        if runtime is not None:
            p = runtime.pipeline
            st = p.stats.snapshot()
            received = CounterMetricFamily("leg_messages_received", "Messages and readings received", labels=["source"])
            for source, n in sorted(st.received.items()):
                received.add_metric([source], n)
            yield received
            rejected = CounterMetricFamily("leg_messages_rejected", "Messages and readings rejected",
                                           labels=["source", "reason"])
            for (source, reason), n in sorted(st.rejected.items()):
                rejected.add_metric([source, reason], n)
            yield rejected
            yield CounterMetricFamily("leg_readings_stored", "Readings written to the store", value=p.stored)
            yield GaugeMetricFamily("leg_ingest_queue_depth", "Items waiting in the ingest queue", value=p.queued)
            lag = (now - pd.Timestamp(st.newest_reading)).total_seconds() if st.newest_reading else float("nan")
            yield GaugeMetricFamily("leg_ingest_lag_seconds", "Age of the newest accepted reading", value=lag)
            wait = time.monotonic() - st.dirty_since if st.dirty_since is not None else 0.0
            yield GaugeMetricFamily("leg_interval_computation_lag_seconds",
                                    "How long stored readings have waited for their intervals", value=wait)
            yield SummaryMetricFamily("leg_store_write_seconds", "Store write latency per batch",
                                      count_value=st.writes, sum_value=st.write_seconds_sum)
            yield GaugeMetricFamily("leg_store_write_seconds_max", "Slowest store write", value=st.write_seconds_max)
            yield SummaryMetricFamily("leg_interval_computation_seconds", "Interval computation time per run",
                                      count_value=st.interval_runs, sum_value=st.intervals_seconds_sum)
            age = GaugeMetricFamily("leg_meter_last_reading_age_seconds", "Age of each meter's last reading",
                                    labels=["meter"])
            for mid, ms in p.status().items():
                if ms.last_seen is not None:
                    age.add_metric([mid], (now - pd.Timestamp(ms.last_seen)).total_seconds())
            yield age
            alive = GaugeMetricFamily("leg_ingest_thread_up", "Ingest threads running (1) or not (0)", labels=["thread"])
            alive.add_metric(["pipeline"], float(bool(p._thread and p._thread.is_alive())))
            for k, ok in runtime.connections.alive().items():
                alive.add_metric([k], float(ok))
            yield alive
        store = c.store.health() if hasattr(c.store, "health") else {}
        yield GaugeMetricFamily("leg_store_spool_lines", "Lines waiting in the InfluxDB spool",
                                value=store.get("spool_lines", 0))
        if "memory_bytes" in store:
            yield GaugeMetricFamily("leg_store_memory_bytes", "Memory of the embedded store (cache and "
                                    "queries; capped by storage.memory_limit_mb)", value=store["memory_bytes"])
        if "reopens" in store:
            yield CounterMetricFamily("leg_store_reopens", "Times the embedded store reopened its file to give "
                                      "back the memory of its writes (storage.reopen_every_rows)",
                                      value=store["reopens"])
        periods = [p for p in c.ledger.periods() if p["status"] == "closed"]
        yield CounterMetricFamily("leg_invoice_runs", "Periods closed (invoice runs)", value=len(periods))
        issued = sum(len(c.ledger.issued_invoices(p["period_id"])) for p in periods)
        yield CounterMetricFamily("leg_invoices_issued", "Invoices issued", value=issued)


def registry_for(services) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LegCollector(services))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
