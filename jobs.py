"""Long-running work started from the web app (closing a period, rendering a period's documents):
run in a worker thread, with progress the page polls. One ``Jobs`` per app (no module state);
at most one job per key runs at a time, so a double click cannot close a period twice."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]   # (done, total, message)


@dataclass
class Job:
    job_id: str
    key: str
    label: str
    status: str = "running"       # running | done | failed
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    result: Any = None
    started: float = 0.0
    finished: float | None = None

    @property
    def percent(self) -> int:
        if self.status != "running":
            return 100
        return int(100 * self.done / self.total) if self.total else 0


class JobBusy(Exception):
    def __init__(self, job: Job):
        super().__init__(f"{job.label} is already running ({job.percent}%)")
        self.job = job


class Jobs:
    def __init__(self, workers: int = 1, keep: int = 50):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._keep = keep

    def start(self, key: str, label: str, fn: Callable[[Progress], Any],
              errors: tuple[type[BaseException], ...] = ()) -> Job:
        """Run ``fn(progress)`` in the background. Exceptions of the types in ``errors`` are shown
        as they are (they explain themselves); anything else is logged and shown as an internal error."""
        with self._lock:
            for job in self._jobs.values():
                if job.key == key and job.status == "running":
                    raise JobBusy(replace(job))
            job = Job(uuid.uuid4().hex, key, label, started=time.time())
            self._jobs[job.job_id] = job
            self._trim()

        def progress(done: int, total: int, message: str = "") -> None:
            with self._lock:
                job.done, job.total, job.message = done, total, message

        def run() -> None:
            try:
                result = fn(progress)
            except errors as exc:
                outcome = dict(status="failed", error=str(exc))
            except Exception as exc:          # the job fails; the app goes on
                log.exception("%s failed", label)
                outcome = dict(status="failed", error=f"internal error: {type(exc).__name__}: {exc}")
            else:
                outcome = dict(status="done", result=result)
            with self._lock:
                for k, v in outcome.items():
                    setattr(job, k, v)
                job.finished = time.time()

        self._pool.submit(run)
        return replace(job)

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id or "")
            return replace(job) if job else None

    def _trim(self) -> None:
        done = [j for j in self._jobs.values() if j.status != "running"]
        for j in sorted(done, key=lambda j: j.started)[:max(0, len(self._jobs) - self._keep)]:
            del self._jobs[j.job_id]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
