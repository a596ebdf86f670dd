"""Shared by the benchmarks: the machine description and BENCHMARKS.md sections.

Each benchmark owns one section between ``<!-- bench:KEY -->`` and ``<!-- /bench:KEY -->``;
writing it keeps every other section as it is.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures written by the scripts in `bench/`; each section says how to run it.\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        mem = "? GiB"
    try:
        mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        mosq = ""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Run {when} on {platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem} RAM; "
            f"Python {platform.python_version()}" + (f"; {mosq}" if mosq else "") + ".")


def write_section(key: str, title: str, body: str) -> None:
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    block = f"<!-- bench:{key} -->\n## {title}\n\n{body.strip()}\n<!-- /bench:{key} -->"
    pattern = re.compile(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def counting_publisher(port: int, client_id: str):
    """(client, acked): a started paho client on 127.0.0.1:``port`` with up to 1000 messages in
    flight and no queue of its own, and a one-item list counting the broker's acknowledgements."""
    import paho.mqtt.client as mqtt
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[0] += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, acked
