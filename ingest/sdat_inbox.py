"""The SDAT-CH inbox: a folder (``sdat.inbox``) the running app watches for the grid operator's
files. Each ``*.xml`` is imported (``Community.import_sdat_paths``) and moved to ``done/`` when
anything of it could be used, else to ``rejected/`` with a ``.reason.txt`` beside it saying why.
A file still being written (its size or time changed within the last poll) waits for the next."""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def sdat_files(paths) -> list[Path]:
    """The files among ``paths``, and every ``*.xml`` directly inside a folder among them, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(x for x in p.iterdir() if x.is_file() and x.suffix.lower() == ".xml")
        elif p.is_file():
            out.append(p)
    return out


class SdatInbox:
    def __init__(self, community, folder: str | Path, poll_s: float = 60.0):
        self.community = community
        self.folder = Path(folder)
        self.poll_s = poll_s
        self.imported = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._seen: dict[Path, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "SdatInbox":
        if self._thread is not None:
            raise RuntimeError("SDAT inbox already started")
        for sub in ("done", "rejected"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="sdat-inbox", daemon=True)
        self._thread.start()
        log.info("SDAT-CH inbox: watching %s every %g s", self.folder, self.poll_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:                      # never let one file end the watch
                log.exception("SDAT-CH inbox: unexpected error (continuing)")
            self._stop.wait(self.poll_s)

    def poll(self, settle: bool = True) -> int:
        """Import the files that are complete; returns how many were handled. With ``settle``, a
        file is taken only once its size and time were the same at the previous poll."""
        ready = []
        for f in sdat_files([self.folder]):
            st = f.stat()
            now = (st.st_size, st.st_mtime)
            if settle and self._seen.get(f) != now:
                self._seen[f] = now
                continue
            self._seen.pop(f, None)
            ready.append(f)
        handled = 0
        try:
            for f, summary in self.community.import_sdat_paths(ready, [f.name for f in ready]):
                self._done(f, summary)
                handled += 1
        except Exception as exc:                   # e.g. the store refused the write: retried next poll
            f = ready[handled]
            self.last_error = f"{f.name}: {exc}"
            log.exception("SDAT-CH inbox: %s could not be imported (retrying)", f.name)
        return handled

    def _done(self, f: Path, summary) -> None:
        for r in summary.refused:
            log.warning("SDAT-CH inbox: %s: refused: %s", f.name, r)
        if summary.imported_anything or summary.already_imported:
            self.imported += 1
            log.info("SDAT-CH inbox: %s", summary.line())
            self._move(f, "done")
        else:
            self.rejected += 1
            self.last_error = summary.line()
            log.warning("SDAT-CH inbox: %s", summary.line())
            dest = self._move(f, "rejected")
            dest.with_name(dest.name + ".reason.txt").write_text(
                summary.line() + "\n" + "".join(f"refused: {r}\n" for r in summary.refused), encoding="utf-8")

    def _move(self, f: Path, sub: str) -> Path:
        dest = self.folder / sub / f.name
        k = 1
        while dest.exists():                       # the same name again (file names are no identity)
            dest = self.folder / sub / f"{f.stem}.{k}{f.suffix}"
            k += 1
        shutil.move(str(f), dest)
        return dest
