"""Several communities in one instance (``communities:`` in the configuration).

Each community is a ``Community`` of its own, with its data in ``storage.data_dir/<slug>/``
(ledger, store, SDAT values): rows never mix, invoice and credit-note numbers are gapless per
community and year by construction, and closing or backing up one community touches no other.
What the instance shares:

* **accounts** (``storage.data_dir/accounts.sqlite``): one login for a service provider's staff;
  a manager may be kept to some communities, a member's houses are ``<slug>:<house id>``;
  ``auth.principal.Principal.within`` narrows a principal to the community of a request;
* **one web app**: the community of a request is ``/api/c/<slug>/...`` or ``?community=`` for the
  API, else the one chosen in the menu (kept in the session), else the first the user may enter;
* **one MQTT subscription**: ``PipelineRouter`` hands each reading to the pipeline of the
  community its meter belongs to (each community keeps its own pipeline state and intervals);
* **one ingest thread**: the communities' pipelines share one ``ingest.pipeline.PipelineGroup``
  (``pipeline_group()``, passed to each ``IngestRuntime``), which handles every community's items
  and acknowledges them in rounds from one journal (``ingest_journal.sqlite`` beside the
  communities' folders), each community's store then written in larger writes, so 200 communities
  do not run 200 polling workers nor 200 store writes per MQTT acknowledgement.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
MAX_UNROUTED = 1000          # meter ids of no community that are remembered (and warned about once)


def instance_dir(configs: dict) -> Path:
    """The folder above the communities' own (``storage.data_dir``)."""
    return Path(next(iter(configs.values())).storage.data_dir).parent


def open_accounts(configs: dict):
    """(ledger, accounts) of the instance: ``accounts.sqlite`` beside the communities' folders."""
    from auth.accounts import Accounts
    from storage.ledger import Ledger
    ledger = Ledger(instance_dir(configs) / "accounts.sqlite")

    def known_houses() -> set[str]:
        out = set()
        for slug, cfg in configs.items():
            path = cfg.data_dir / "ledger.sqlite"
            if not path.exists():
                continue
            own = Ledger(path)
            try:
                out |= {f"{slug}:{h.house_id}" for h in own.houses(active_only=False)}
            finally:
                own.close()
        return out
    return ledger, Accounts(ledger, known_houses=known_houses, communities=list(configs))


def pipeline_group():
    """The one worker of every community's pipeline (``IngestRuntime(..., pipeline_options={"group": g})``)."""
    from ingest.pipeline import PipelineGroup
    return PipelineGroup()


class PipelineRouter:
    """The pipeline interface (``submit``, ``reject``, ``mark``) over the pipelines of several
    communities: each reading goes to the community that has its meter. A meter of no community is
    counted and warned about once (its readings are not stored: no community would bill them)."""

    def __init__(self, runtimes: dict, refresh_s: float = 10.0):
        self.runtimes = runtimes                       # slug -> ingest.runtime.IngestRuntime
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._owner: dict[str, str] = {}
        self._built = 0.0
        self.unrouted: dict[str, int] = {}
        self.unrouted_dropped = 0
        self._touched: dict[str, None] = {}          # communities handed something since the last mark

    def _rebuild(self) -> None:
        owner = {}
        for slug, rt in self.runtimes.items():
            for m in rt.community.ledger.meters():
                owner[m.meter_id] = slug
        self._owner, self._built = owner, time.monotonic()

    def _pipeline(self, meter_id: str):
        slug = self._slug(meter_id)
        if slug is None:
            return None
        self._touched[slug] = None
        return self.runtimes[slug].pipeline

    def _slug(self, meter_id: str):
        slug = self._owner.get(meter_id)
        if slug is None and time.monotonic() - self._built > self.refresh_s:   # a meter added since
            with self._lock:
                self._rebuild()
            slug = self._owner.get(meter_id)
        if slug is None:
            with self._lock:
                if meter_id in self.unrouted:
                    self.unrouted[meter_id] += 1
                elif len(self.unrouted) < MAX_UNROUTED:
                    self.unrouted[meter_id] = 1
                    log.warning("meter %s belongs to no community: its readings are not stored", meter_id[:64])
                else:
                    self.unrouted_dropped += 1
            return None
        return slug

    def start(self) -> "PipelineRouter":
        self._rebuild()
        return self

    def submit(self, reading, source: str) -> None:
        p = self._pipeline(reading.meter_id)
        if p is not None:
            p.submit(reading, source)

    def reject(self, meter_id: str | None, *rest) -> None:
        """A message that is no reading: counted by its meter's community; a message that names
        no meter (a topic that cannot be read) by the first community (the operator's view)."""
        if meter_id:
            p = self._pipeline(meter_id)
        else:
            first = next(iter(self.runtimes))
            self._touched[first] = None
            p = self.runtimes[first].pipeline
        if p is not None:
            p.reject(meter_id, *rest)

    def mark(self, callback) -> None:
        """``callback`` once every community's pipeline has handled what was submitted before: the
        pipelines handed something since the last mark (the others' earlier items have marks of
        their own), or every pipeline when nothing was handed (a source's last mark before it
        stops then follows everything queued before it). Called from the source's thread, as
        ``submit`` and ``reject`` are."""
        touched, self._touched = self._touched, {}
        slugs = list(touched) or list(self.runtimes)
        pending = [len(slugs)]
        lock = threading.Lock()

        def one():
            with lock:
                pending[0] -= 1
                last = pending[0] == 0
            if last:
                callback()
        for slug in slugs:
            self.runtimes[slug].pipeline.mark(one)
