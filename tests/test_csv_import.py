"""``python app.py import-readings`` and ``export-readings``, run for real as subprocesses.

Each test works on its own temporary config.yaml (two houses keyed by MAC-like meter ids, time
zone Europe/Zurich) whose ``storage.data_dir`` is a tmp_path directory: real CSV files, real
stores, real processes, no mocks. Expensive runs are shared by module-scoped fixtures so that
the whole file stays well under a minute.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"

M1 = "AA-00-00-00-00-01"
M2 = "AA-00-00-00-00-02"
HEADER = "meter_id,timestamp,import_kwh,export_kwh"
SUMMARY = re.compile(r"^(?P<file>.+): (?P<rows>\d+) rows: (?P<imported>\d+) imported, "
                     r"(?P<stored>\d+) already stored, (?P<rejected>\d+) rejected"
                     r"(?:, (?P<quarantined>\d+) quarantined)?$")


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8")

    def summary(self) -> dict:
        lines = self.out.strip().splitlines()
        assert lines, f"no summary line on stdout; stderr:\n{self.stderr}"
        m = SUMMARY.match(lines[-1])
        assert m, f"last stdout line is not a summary: {lines[-1]!r}"
        # "quarantined" only appears when some readings were; none of these files has such readings
        return {k: (v if k == "file" else int(v)) for k, v in m.groupdict().items() if v is not None}

    def error_lines(self, csv_path: Path) -> dict[int, str]:
        """stderr's row reports ``FILE: line N: reason`` as {N: reason}; every line must be one."""
        found: dict[int, str] = {}
        for line in self.stderr.splitlines():
            m = re.match(re.escape(f"{csv_path}: line ") + r"(\d+): (.+)$", line)
            assert m, f"unexpected stderr line: {line!r}"
            n = int(m.group(1))
            assert n not in found, f"line {n} reported twice"
            found[n] = m.group(2)
        return found


class Community:
    """A temporary community: config.yaml plus its own data directory."""

    def __init__(self, base: Path):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.data_dir = base / "data"
        self.config = base / "config.yaml"
        self.config.write_text(
            "community:\n"
            "  name: Test LEG\n"
            "  timezone: Europe/Zurich\n"
            "houses:\n"
            f'  "{M1}":\n    id: 1\n    name: House 1\n    type: real\n    pv_kwp: 6.0\n'
            f'  "{M2}":\n    id: 2\n    name: House 2\n    type: simulated\n'
            "storage:\n"
            f"  data_dir: {json.dumps(str(self.data_dir))}\n",
            encoding="utf-8")

    def app(self, *args: str) -> Run:
        env = {k: v for k, v in os.environ.items() if k != "LEG_CONFIG"}
        p = subprocess.run([sys.executable, str(APP), *args, "--config", str(self.config)],
                           cwd=ROOT, env=env, capture_output=True, timeout=120)
        return Run(p.returncode, p.stdout, p.stderr.decode("utf-8"))

    def csv(self, name: str, *rows: str, header: str = HEADER) -> Path:
        path = self.base / name
        path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
        return path

    def import_(self, path: Path) -> Run:
        return self.app("import-readings", str(path))

    def export(self, *filters: str) -> Run:
        r = self.app("export-readings", *filters)
        assert r.returncode == 0, r.stderr
        return r


# -- every kind of bad row -----------------------------------------------------------------------

# (line, row, reason the report must contain); None as reason: a good row, kept and not reported.
MIXED = [
    (2, f"{M1},2026-01-15T12:00:00,100.5,20", None),
    (3, f"{M1},2026-01-15T12:15:00,101,", None),                   # export counter empty
    (4, f"{M1},2026-01-15T12:30:00,,21", None),                    # import counter empty
    (5, f"{M1},2026-01-15T12:45:00,102", "expected 4 fields, found 3"),
    (6, f"{M1},2026-01-15T12:45:00,102,21,5", "expected 4 fields, found 5"),
    (7, "", None),                                                 # blank line: skipped, still counted as a line
    (8, ",2026-01-15T12:45:00,102,21", "meter_id: is empty"),
    (9, "AA-00-00-00-00-09,2026-01-15T12:45:00,102,21",
     "meter_id: 'AA-00-00-00-00-09' is not a configured meter"),
    (10, f"{M1},,102,21", "timestamp: is empty"),
    (11, f"{M1},15.01.2026 12:45,102,21", "timestamp: '15.01.2026 12:45' is not ISO 8601"),
    (12, f"{M1},yesterday,102,21", "timestamp: 'yesterday' is not ISO 8601"),
    (13, f"{M1},2026-01-15T12:45:00,abc,21", "import_kwh: must be a number of kWh, got 'abc'"),
    (14, f'{M1},2026-01-15T12:45:00,102,"21,5"', "export_kwh: must be a number of kWh, got '21,5'"),
    (15, f"{M1},2026-01-15T12:45:00,-1,21", "import_kwh: a counter cannot be negative"),
    (16, f"{M1},2026-01-15T12:45:00,102,-0.5", "export_kwh: a counter cannot be negative"),
    (17, f"{M1},2026-01-15T12:45:00,nan,21", "import_kwh: must be a finite number"),
    (18, f"{M1},2026-01-15T12:45:00,102,inf", "export_kwh: must be a finite number"),
    (19, f"{M1},2026-01-15T12:45:00,-inf,21", "import_kwh: must be a finite number"),
    (20, f"{M1},2026-01-15T12:45:00,,", "import_kwh and export_kwh are both empty"),
    (21, f"{M2},2026-03-29T02:30:00,60,6",
     "local time 2026-03-29T02:30:00 does not exist in Europe/Zurich"),
    (22, f"{M2},2026-10-25T02:30:00,70,7",
     "local time 2026-10-25T02:30:00 occurs twice in Europe/Zurich"),
    (23, f"{M2},2026-01-15T12:00:00,51,5", "already stored with other counter values"),
    (24, f"{M2},2026-01-15T12:15:00,50.5,5", None),                # identical to a stored reading
    (25, f"{M2},2026-07-01T12:00:00,60,6", None),                  # summer time: UTC+2
    (26, f"{M2},2026-10-25T02:30:00+01:00,70,7", None),            # the ambiguous hour, with offset
]
BAD_LINES = {line: reason for line, _, reason in MIXED if reason}
# stored before the mixed file is imported: line 23 conflicts with the first, line 24 repeats the second
ALREADY_STORED = [f"{M2},2026-01-15T12:00:00,50,5", f"{M2},2026-01-15T12:15:00,50.5,5"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    c = Community(tmp_path_factory.mktemp("mixed"))
    first = c.import_(c.csv("stored.csv", *ALREADY_STORED))
    assert first.returncode == 0, first.stderr
    path = c.csv("mixed.csv", *(row for _, row, _ in MIXED))
    result = c.import_(path)
    export = c.export()
    again = c.import_(path)
    return c, path, result, export, again


@pytest.mark.parametrize("line", sorted(BAD_LINES))
def test_bad_row_is_reported_with_line_and_reason(mixed, line):
    _, path, result, _, _ = mixed
    reported = result.error_lines(path)
    assert line in reported, f"line {line} not reported; stderr:\n{result.stderr}"
    assert BAD_LINES[line] in reported[line]


def test_only_bad_rows_are_reported_in_line_order(mixed):
    _, path, result, _, _ = mixed
    reported = result.error_lines(path)
    assert list(reported) == sorted(BAD_LINES)
    assert result.stderr.count(f"{path}: line ") == len(BAD_LINES)


def test_conflict_names_the_stored_reading(mixed):
    _, path, result, _, _ = mixed
    msg = result.error_lines(path)[23]
    assert f"meter {M2} at 2026-01-15T11:00:00" in msg
    assert "kept the stored reading" in msg


def test_summary_line_and_exit_status_with_some_bad_rows(mixed):
    _, path, result, _, _ = mixed
    assert result.returncode == 0
    rows = sum(1 for _, row, _ in MIXED if row)
    assert result.summary() == {"file": str(path), "rows": rows, "imported": 5, "stored": 1,
                                "rejected": len(BAD_LINES)}


def test_good_rows_are_kept_and_local_times_converted(mixed):
    _, _, _, export, _ = mixed
    assert export.out == "\n".join([
        HEADER,
        f"{M1},2026-01-15T11:00:00Z,100.5,20",      # 12:00 local in winter (CET, UTC+1)
        f"{M1},2026-01-15T11:15:00Z,101,",
        f"{M1},2026-01-15T11:30:00Z,,21",
        f"{M2},2026-01-15T11:00:00Z,50,5",           # the stored reading, not line 23's 51
        f"{M2},2026-01-15T11:15:00Z,50.5,5",
        f"{M2},2026-07-01T10:00:00Z,60,6",           # 12:00 local in summer (CEST, UTC+2)
        f"{M2},2026-10-25T01:30:00Z,70,7",
    ]) + "\n"


def test_importing_the_same_file_again_adds_nothing(mixed):
    _, path, _, _, again = mixed
    assert again.returncode == 0
    s = again.summary()
    assert (s["imported"], s["stored"], s["rejected"]) == (0, 6, len(BAD_LINES))
    assert list(again.error_lines(path)) == sorted(BAD_LINES)


def test_timestamp_without_offset_is_community_local_time(mixed):
    _, _, _, export, _ = mixed
    # line 2 of the mixed file: 2026-01-15T12:00:00 without offset is Europe/Zurich time (CET)
    assert f"{M1},2026-01-15T11:00:00Z,100.5,20" in export.out.splitlines()


def test_either_counter_may_be_empty(mixed):
    _, path, result, export, _ = mixed
    assert 3 not in result.error_lines(path) and 4 not in result.error_lines(path)
    lines = export.out.splitlines()
    assert f"{M1},2026-01-15T11:15:00Z,101," in lines        # export_kwh empty
    assert f"{M1},2026-01-15T11:30:00Z,,21" in lines         # import_kwh empty


# -- exit status ------------------------------------------------------------------------------------

def test_all_rows_bad_exits_non_zero(tmp_path):
    c = Community(tmp_path)
    path = c.csv("bad.csv", f"{M1},2026-01-15T12:00:00,-1,0", "XX,2026-01-15T12:15:00,1,0",
                 f"{M2},2026-03-29T02:00:00,1,0")
    r = c.import_(path)
    assert r.returncode != 0
    assert r.summary() == {"file": str(path), "rows": 3, "imported": 0, "stored": 0, "rejected": 3}
    assert list(r.error_lines(path)) == [2, 3, 4]


@pytest.mark.parametrize("header, missing", [
    ("meter_id,timestamp,import_kwh", "export_kwh"),
    ("meter_id;timestamp;import_kwh;export_kwh", "meter_id, timestamp, import_kwh, export_kwh"),
], ids=["no-export", "semicolons"])
def test_missing_header_column_is_a_clear_error(tmp_path, header, missing):
    c = Community(tmp_path)
    path = c.csv("nohdr.csv", f"{M1},2026-01-15T12:00:00,1", header=header)
    r = c.import_(path)
    assert r.returncode != 0
    assert f"header lacks {missing}" in r.stderr
    assert HEADER in r.stderr                    # says what the header should be
    assert "Traceback" not in r.stderr
    assert r.stdout == b""                       # no summary: the file was refused as a whole


def test_missing_file_is_a_clear_error(tmp_path):
    c = Community(tmp_path)
    r = c.import_(tmp_path / "nowhere.csv")
    assert r.returncode != 0
    assert "nowhere.csv" in r.stderr and "No such file" in r.stderr
    assert "Traceback" not in r.stderr


# -- round trip ------------------------------------------------------------------------------------

SOURCE = [
    f"{M1},2026-03-29T01:45:00,10,1",                   # CET, before the spring gap
    f"{M1},2026-03-29T03:00:00,10.25,1",                # CEST, after the gap
    f"{M1},2026-03-29T03:15:00.5,10.300000000000002,",  # fractional seconds, 17 digits, export empty
    f"{M1},2026-10-25T02:30:00+02:00,20,2",             # the repeated hour, first pass
    f"{M1},2026-10-25T02:30:00+01:00,20.5,2.1",         # the repeated hour, second pass
    f"{M1},2026-10-25T03:00:00,,2.2",                   # import empty
    f"{M2},2025-12-01T00:00:00,4600.000001,0.00001",    # local midnight is 23:00Z the day before
    f"{M2},2026-01-15T12:00:00,4619.712,14089.216",     # the seed's message values
    f"{M2},2026-01-15T12:15:00Z,4619.8,14089.21600001",
    f"{M2},2026-01-15 13:30:00+01:00,4620,1.40892161e4",  # space separator, exponent
]
# counters rise slowly enough that nothing is quarantined (no warnings on stderr)
EXPORTED = [
    HEADER,
    f"{M1},2026-03-29T00:45:00Z,10,1",
    f"{M1},2026-03-29T01:00:00Z,10.25,1",
    f"{M1},2026-03-29T01:15:00.500000Z,10.300000000000002,",
    f"{M1},2026-10-25T00:30:00Z,20,2",
    f"{M1},2026-10-25T01:30:00Z,20.5,2.1",
    f"{M1},2026-10-25T02:00:00Z,,2.2",
    f"{M2},2025-11-30T23:00:00Z,4600.000001,1e-05",
    f"{M2},2026-01-15T11:00:00Z,4619.712,14089.216",
    f"{M2},2026-01-15T12:15:00Z,4619.8,14089.21600001",
    f"{M2},2026-01-15T12:30:00Z,4620,14089.2161",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A community holding SOURCE, imported twice, and its full export."""
    c = Community(tmp_path_factory.mktemp("source"))
    path = c.csv("source.csv", *SOURCE)
    first, second = c.import_(path), c.import_(path)
    out = c.base / "export.csv"
    full = c.export("--out", str(out))
    return c, path, first, second, full, out


def test_import_of_clean_file(source):
    _, path, first, _, _, _ = source
    assert first.returncode == 0 and first.stderr == ""
    assert first.summary() == {"file": str(path), "rows": len(SOURCE), "imported": len(SOURCE),
                               "stored": 0, "rejected": 0}


def test_importing_a_clean_file_twice_adds_nothing(source):
    c, path, _, second, _, out = source
    assert second.returncode == 0 and second.stderr == ""
    assert second.summary() == {"file": str(path), "rows": len(SOURCE), "imported": 0,
                                "stored": len(SOURCE), "rejected": 0}
    assert out.read_text(encoding="utf-8").count("\n") == len(SOURCE) + 1


def test_export_writes_utc_in_the_import_format(source):
    _, _, _, _, full, out = source
    assert out.read_bytes() == ("\n".join(EXPORTED) + "\n").encode()
    assert full.stdout == b""
    assert full.stderr.strip() == f"{out}: {len(SOURCE)} readings"


def _rows(*indexes: int) -> bytes:
    return ("\n".join([HEADER] + [EXPORTED[i] for i in indexes]) + "\n").encode()


# filters -> the rows of EXPORTED they select
ROUND_TRIPS = {
    "all": ([], _rows(*range(1, len(EXPORTED)))),
    "meter": (["--meter", M2], _rows(7, 8, 9, 10)),
    # local time without offset; --start inclusive, --end exclusive; 03:00 local on 25 Oct
    # (after the repeated hour) is 02:00Z
    "start-end-dst": (["--start", "2026-10-25T02:00:00+02:00", "--end", "2026-10-25T03:00:00"], _rows(4, 5)),
    # local midnight is 23:00Z the day before (inclusive); 13:30 local is 12:30Z (exclusive)
    "meter-start-end": (["--meter", M2, "--start", "2025-12-01", "--end", "2026-01-15T13:30:00"], _rows(7, 8, 9)),
}


@pytest.fixture(scope="module")
def round_trips(source, tmp_path_factory):
    """Per ROUND_TRIPS entry: export from the source community, import that file into a fresh
    community, export again with the same filters. The fresh communities run in parallel."""
    c = source[0]
    exported = {name: c.export(*filters).stdout for name, (filters, _) in ROUND_TRIPS.items()}

    def trip(name):
        filters = ROUND_TRIPS[name][0]
        fresh = Community(tmp_path_factory.mktemp(f"fresh-{name}"))
        path = fresh.base / "part.csv"
        path.write_bytes(exported[name])
        imported = fresh.import_(path)
        return name, (exported[name], imported, fresh.export(*filters).stdout)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(trip, ROUND_TRIPS))


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_export_filters_select_the_right_rows(round_trips, name):
    exported, _, _ = round_trips[name]
    assert exported == ROUND_TRIPS[name][1]


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_round_trip_is_byte_identical(round_trips, name):
    exported, imported, again = round_trips[name]
    assert imported.returncode == 0 and imported.stderr == ""
    assert imported.summary()["imported"] == exported.count(b"\n") - 1
    assert again == exported


def test_export_to_stdout_equals_export_to_file(round_trips, source):
    assert round_trips["all"][0] == source[-1].read_bytes()


@pytest.mark.parametrize("start", ["garbage", "2026-10-25T02:30:00"], ids=["not-iso", "ambiguous"])
def test_export_with_bad_start_is_a_clear_error(source, start):
    r = source[0].app("export-readings", "--start", start)
    assert r.returncode != 0
    assert "--start/--end" in r.stderr and "Traceback" not in r.stderr


# -- conflicts inside one file ---------------------------------------------------------------------

def test_conflict_within_one_file_names_the_rejected_line(tmp_path):
    c = Community(tmp_path)
    path = c.csv("dup.csv", f"{M1},2026-01-15T12:00:00,1,1", f"{M1},2026-01-15T12:15:00,2,1",
                 f"{M1},2026-01-15T12:00:00,9,1")
    r = c.import_(path)
    assert r.returncode == 0
    assert r.summary()["imported"] == 2
    reported = r.error_lines(path)
    assert list(reported) == [4], reported
