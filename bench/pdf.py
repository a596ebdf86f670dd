"""Invoice PDF benchmark: a 100-house period rendered with ``documents.render_many`` on all cores,
and one after another in this process for comparison.

The documents are synthetic but realistic (``documents.sample.sample_document``): one calendar
month with 30 daily bars, 2 tariff versions, footnotes on some houses, the four languages in turn,
and every second house owing money, so about half carry a QR-bill. Measured:

* parallel: ``render_many(docs)`` wall time with the default worker count (one per available
  core): the first call of the process, which starts the fork server (it imports WeasyPrint), and
  then ``--repeat`` calls with the fork server running (each starts a new pool);
* serial: ``render_pdf`` for each document in this process, after one warm-up render;
* the CPU time per document of the serial run, and a profile of where it goes.

Checks: every PDF starts with ``%PDF-`` and has at least one page, the parallel bytes equal the
serial bytes (rendering is deterministic), and the progress callback went from 0 to the total.

    .venv/bin/python bench/pdf.py                 # writes its section of BENCHMARKS.md
    .venv/bin/python bench/pdf.py --no-write --houses 20
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchfile import machine, write_section  # noqa: E402
from documents.render import default_workers, render_many, render_pdf  # noqa: E402
from documents.sample import sample_document  # noqa: E402

TARGET = 8.0  # invoices per second
LANGUAGES = ("de", "fr", "it", "en")


def documents(houses: int):
    docs = []
    for house in range(1, houses + 1):
        doc = sample_document(language=LANGUAGES[house % 4], house=house, owes=house % 2 == 0)
        docs.append(replace(doc, invoice_id=f"INV-2026-{house:03d}"))
    return docs


def page_count(pdf: bytes) -> int:
    """Pages of a PDF, from ``pdfinfo`` (poppler-utils); 1 when pdfinfo is missing."""
    if not shutil.which("pdfinfo"):
        return 1
    out = subprocess.run(["pdfinfo", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))


def busy_fraction(before, after) -> float:
    """Share of the machine's CPU time spent busy between two /proc/stat samples."""
    idle = (after[3] + after[4]) - (before[3] + before[4])
    total = sum(after) - sum(before)
    return 1 - idle / total if total else 0.0


def cpu_sample():
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return [0] * 8


def profile_shares(docs) -> dict[str, float]:
    """Where one invoice's time goes: shares of cProfile's cumulative time over ``docs``."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for doc in docs:
        render_pdf(doc)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    cumulative = {}
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
        cumulative[(path.replace(os.sep, "/").rsplit("site-packages/", 1)[-1], name)] = ct
    total = cumulative[(str(ROOT / "documents" / "render.py").replace(os.sep, "/"), "render_pdf")]
    layout = cumulative[("weasyprint/__init__.py", "render")]
    output = cumulative[("weasyprint/document.py", "write_pdf")]
    qr = cumulative[(str(ROOT / "documents" / "qr.py").replace(os.sep, "/"), "qr_svg")]
    return {"layout": layout / total, "output": output / total, "qr": qr / total,
            "rest": 1 - (layout + output + qr) / total}


def wait_for_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` s) until the machine has been less than ``threshold`` busy for two
    seconds; the machine is shared, and other work distorts the figures. Returns the last busy share."""
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_sample()
        time.sleep(2)
        busy = busy_fraction(before, cpu_sample())
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--houses", type=int, default=100)
    ap.add_argument("--workers", type=int, default=None, help="default: one per available core")
    ap.add_argument("--repeat", type=int, default=3, help="runs with the fork server already up")
    ap.add_argument("--wait-idle", type=float, default=120,
                    help="before each measurement wait up to this many seconds for an idle machine")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    started = time.perf_counter()
    docs = documents(args.houses)
    n = len(docs)
    with_qr = sum(1 for d in docs if d.net_amount_chf < 0)
    workers = args.workers or default_workers()

    # 1. parallel, first call: the fork server and the pool are started inside the measured call
    seen = []
    idle_before = [wait_for_idle(args.wait_idle)]
    load_before = os.getloadavg()[0]
    cpu0 = cpu_sample()
    t = time.perf_counter()
    parallel = render_many(docs, workers=workers, progress=lambda done, total: seen.append((done, total)))
    first_s = time.perf_counter() - t
    first_busy = busy_fraction(cpu0, cpu_sample())
    assert seen and seen[0] == (0, n) and seen[-1] == (n, n), seen[-3:]

    # 2. parallel again: a new pool each time, forked from the running fork server
    again = []
    for _ in range(args.repeat):
        idle_before.append(wait_for_idle(args.wait_idle))
        cpu0 = cpu_sample()
        t = time.perf_counter()
        result = render_many(docs, workers=workers)
        again.append((time.perf_counter() - t, busy_fraction(cpu0, cpu_sample())))
        assert result == parallel
    again.sort()
    median_s, median_busy = again[len(again) // 2]

    # 3. serial, warm, in this process
    render_pdf(docs[0])
    idle_before.append(wait_for_idle(args.wait_idle))
    cpu0 = cpu_sample()
    t, c = time.perf_counter(), time.process_time()
    serial = [render_pdf(d) for d in docs]
    serial_s, serial_cpu = time.perf_counter() - t, time.process_time() - c
    serial_busy = busy_fraction(cpu0, cpu_sample())
    cores = os.cpu_count() or 1
    serial_others = max(0.0, serial_busy - serial_cpu / serial_s / cores)

    shares = profile_shares(docs[:10])

    # checks
    assert all(p.startswith(b"%PDF-") for p in parallel)
    identical = sum(a == b for a, b in zip(parallel, serial))
    assert identical == n, f"{n - identical} PDFs differ between the parallel and serial runs"
    pages = [page_count(p) for p in serial]
    assert all(k >= 1 for k in pages), pages
    sizes = sorted(len(p) for p in serial)

    rate_first, rate_median, rate_best = n / first_s, n / median_s, n / again[0][0]
    verdict = lambda rate: "met" if rate >= TARGET else "**NOT met**"
    lines = [
        f"{n} synthetic invoices of one month (`documents.sample.sample_document`: 30 daily bars, 2 tariff "
        f"versions, footnotes on some houses, de/fr/it/en in turn); {with_qr} owe money and carry a QR-bill. "
        "Run `.venv/bin/python bench/pdf.py` (1-2 minutes on an idle machine; `--houses 20 --no-write` "
        "for a quick check that leaves this section alone).",
        "",
        "| measurement | invoices/s | time | machine busy | target |",
        "|---|---:|---:|---:|---|",
        f"| `render_many`, {workers} worker processes, fork server already running (the usual case: it "
        f"is started once per app process), median of {len(again)} | **{rate_median:.1f}** | "
        f"{median_s:.2f} s | {median_busy:.0%} | >= {TARGET:.0f}/s: {verdict(rate_median)} |",
        f"| the same, best run | {rate_best:.1f} | {again[0][0]:.2f} s | {again[0][1]:.0%} | |",
        f"| `render_many`, first call of the process: fork server start (imports WeasyPrint) included "
        f"| {rate_first:.1f} | {first_s:.2f} s | {first_busy:.0%} | {verdict(rate_first)} |",
        f"| `render_pdf` one after another in one process (warm) | {n / serial_s:.1f} | {serial_s:.2f} s "
        f"| {serial_busy:.0%} | |",
        "",
        f"- CPU time per invoice (serial run): {serial_cpu / n * 1000:.0f} ms; PDF size {sizes[0] / 1024:.0f}-"
        f"{sizes[-1] / 1024:.0f} KiB (median {sizes[n // 2] / 1024:.0f} KiB); pages per invoice: "
        f"{min(pages)}-{max(pages)}",
        f"- the machine is shared: each measurement waited for it to be idle (busy before each: "
        f"{', '.join(f'{b:.0%}' for b in idle_before)}; load average before the first: {load_before:.2f}); "
        f"other processes used about {serial_others:.0%} of it during the serial run. Runs disturbed by "
        "other work are slower, hence the median and the best run",
        f"- where an invoice's time goes (cProfile, 10 invoices): WeasyPrint parsing, styles and layout "
        f"{shares['layout']:.0%}, drawing and writing the PDF {shares['output']:.0%}, the QR-bill drawing "
        f"and QR code {shares['qr']:.0%}, template, chart and formatting {shares['rest']:.0%}",
        "- what keeps it fast: fonts subset with HarfBuzz (libharfbuzz-subset), not fontTools; the QR code "
        "as one 1-bit PNG instead of a vector square per module, and its mask chosen with numpy; the "
        "QR-bill's texts set as HTML lines (WeasyPrint lays out SVG text letter by letter); a "
        "user-agent stylesheet reduced to the elements the template uses; fixed table layouts; one "
        "font configuration per worker; workers forked from a fork server that has imported WeasyPrint",
        f"- checks passed: every PDF of the parallel runs equals the serial one byte for byte "
        f"({identical}/{n}), progress reported from 0/{n} to {n}/{n}",
        f"- wall time of the whole script {time.perf_counter() - started:.0f} s",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("pdf", "Invoice PDFs (`bench/pdf.py`)", machine() + "\n\n" + text)


if __name__ == "__main__":
    main()
