"""CSV import and export of readings: ``meter_id,timestamp,import_kwh,export_kwh``.

Timestamps are ISO 8601; without an offset they are community local time (a local time that
does not exist or occurs twice at a DST change is refused: add the offset). Either counter may be
empty. Optional columns ``power_in_kw`` and ``power_out_kw`` are read when present. Every bad
row is reported with its line number and reason; good rows are kept.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from ingest.readings import ReadingError, check_counter, check_power

REQUIRED = ["meter_id", "timestamp", "import_kwh", "export_kwh"]
OPTIONAL = ["power_in_kw", "power_out_kw"]


class CsvFileError(Exception):
    """The file as a whole cannot be read (missing header, wrong encoding)."""


@dataclass
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParsedCsv:
    readings: pd.DataFrame
    lines: dict[tuple[str, pd.Timestamp], int]    # (meter, ts) -> line number, for later reports
    rows: int = 0
    errors: list[RowError] = field(default_factory=list)


def parse_timestamp(text: str, tz: ZoneInfo) -> datetime:
    text = (text or "").strip()
    if not text:
        raise ReadingError("timestamp: is empty")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ReadingError(f"timestamp: {text!r} is not ISO 8601 (e.g. 2026-01-31T23:45:00+01:00)") from None
    if dt.tzinfo is None:
        early, late = dt.replace(tzinfo=tz, fold=0), dt.replace(tzinfo=tz, fold=1)
        if early.utcoffset() != late.utcoffset():
            back = early.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None)
            what = "does not exist" if back != dt else "occurs twice"
            raise ReadingError(f"timestamp: local time {text} {what} in {tz.key} (DST change); "
                               f"add the UTC offset")
        dt = early
    return dt.astimezone(timezone.utc)


def parse_readings_csv(source: str | Path | io.TextIOBase, tz: ZoneInfo, known_meters: set[str]) -> ParsedCsv:
    if isinstance(source, (str, Path)):
        try:
            text = Path(source).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CsvFileError(f"{source}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise CsvFileError(f"{source}: {exc.strerror}") from None
        handle = io.StringIO(text, newline="")
    else:
        handle = source
    reader = csv.reader(handle)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CsvFileError("the file is empty; expected a header " + ",".join(REQUIRED)) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CsvFileError(f"line 1: header lacks {', '.join(missing)}; expected {','.join(REQUIRED)}")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise CsvFileError(f"line 1: unknown column(s) {', '.join(unknown)}")
    pos = {name: header.index(name) for name in header}

    recs: list[tuple] = []
    lines: dict[tuple[str, pd.Timestamp], int] = {}
    first_values: dict[tuple[str, pd.Timestamp], tuple] = {}
    errors: list[RowError] = []
    rows = 0
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        rows += 1
        if len(row) != len(header):
            errors.append(RowError(line, f"expected {len(header)} fields, found {len(row)}"))
            continue
        try:
            meter = row[pos["meter_id"]].strip()
            if not meter:
                raise ReadingError("meter_id: is empty")
            if meter not in known_meters:
                raise ReadingError(f"meter_id: {meter!r} is not a configured meter")
            ts = parse_timestamp(row[pos["timestamp"]], tz)
            imp = check_counter("import_kwh", row[pos["import_kwh"]])
            exp = check_counter("export_kwh", row[pos["export_kwh"]])
            if imp is None and exp is None:
                raise ReadingError("import_kwh and export_kwh are both empty")
            p_in = check_power("power_in_kw", row[pos["power_in_kw"]]) if "power_in_kw" in pos else None
            p_out = check_power("power_out_kw", row[pos["power_out_kw"]]) if "power_out_kw" in pos else None
        except ReadingError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        key = (meter, pd.Timestamp(ts))
        if key in lines:
            first = lines[key]
            if first_values[key] != (imp, exp):
                errors.append(RowError(line, f"meter {meter} at {row[pos['timestamp']].strip()} conflicts "
                                             f"with line {first} (same time, other counter values)"))
                continue
        else:
            lines[key] = line
            first_values[key] = (imp, exp)
        recs.append((meter, ts, imp, exp, p_in, p_out))
    df = pd.DataFrame(recs, columns=["meter_id", "ts", "import_kwh", "export_kwh", "power_in_kw", "power_out_kw"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
    for c in ("import_kwh", "export_kwh", "power_in_kw", "power_out_kw"):
        df[c] = df[c].astype("float64")
    return ParsedCsv(df, lines, rows, errors)


def _num(x) -> str:
    if x is None or pd.isna(x):
        return ""
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


def _ts(ts: pd.Timestamp) -> str:
    ts = ts.tz_convert("UTC")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if ts.microsecond else "%Y-%m-%dT%H:%M:%S"
    return ts.strftime(fmt) + "Z"


def write_readings_csv(readings: pd.DataFrame, out: io.TextIOBase) -> int:
    """Write readings in the import format (UTC, ``Z``); returns the number of rows."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(REQUIRED)
    for r in readings.itertuples(index=False):
        w.writerow([r.meter_id, _ts(r.ts), _num(r.import_kwh), _num(r.export_kwh)])
    return len(readings)
