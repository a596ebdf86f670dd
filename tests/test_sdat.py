"""SDAT-CH E66 parsing: real structures (versions 12 - 16, see tests/sdat_files.py), DST days,
and every refusal naming the file, the metering point and the reason."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ingest.sdat import SdatError, check_metering_point, parse_sdat
from sdat_files import GRID, LEG, TOTAL, classic_document, leg_document, local_day, quarter_hours

P1 = "CH1007901234500000000000000000001"          # consumption point of house 1
P2 = "CH100790123450000000D011000800065"          # as in real deliveries: a letter in the last 20
CREATED = datetime(2026, 3, 3, 9, 30, tzinfo=timezone.utc)


def two_points(n: int) -> dict:
    return {P1: ("consumption", [0.1] * n, [0.2] * n), P2: ("production", [0.3] * n, [0.05] * n)}


def test_a_leg_delivery_reads_every_point_and_product():
    start, end = local_day(2026, 3, 1)
    doc = parse_sdat(leg_document("DOC-1", CREATED, start, end, two_points(96), conditions={5: "21"}), "a.xml")
    assert (doc.document_id, doc.creation, doc.business_reason, doc.community_id) == \
        ("DOC-1", CREATED, "C40", "101110-002726")
    assert doc.refused == []
    assert sorted((s.metering_point, s.direction, s.product) for s in doc.series) == sorted(
        [(P1, "consumption", p) for p in ("total", "leg", "grid")] + [(P2, "production", p) for p in ("total", "leg", "grid")])
    leg = next(s for s in doc.series if s.metering_point == P1 and s.product == "leg")
    assert start == datetime(2026, 2, 28, 23, 0, tzinfo=timezone.utc) and len(leg.values) == 96
    assert leg.values[start] == (Decimal("0.100"), None)
    assert leg.values[start + timedelta(minutes=60)] == (Decimal("0.100"), "21")       # sequence 5


@pytest.mark.parametrize("version", [12, 13, 14])
def test_a_classic_delivery_with_the_code_as_text_reads_alike(version):
    start, end = local_day(2026, 3, 1)
    doc = parse_sdat(classic_document("eslevu1_ID742", CREATED, start, end, P2, "consumption", [0.9] * 96,
                                      version=version), "b.xml")
    assert [(s.metering_point, s.direction, s.product, len(s.values)) for s in doc.series] == \
        [(P2, "consumption", "total", 96)]
    assert doc.business_reason == "E88"


@pytest.mark.parametrize("day, n", [((2026, 3, 29), 92), ((2026, 10, 25), 100), ((2026, 6, 1), 96)])
def test_dst_days_have_92_and_100_quarter_hours(day, n):
    start, end = local_day(*day)
    assert quarter_hours(start, end) == n
    doc = parse_sdat(leg_document("D", CREATED, start, end, two_points(n)), "dst.xml")
    assert doc.refused == [] and all(len(s.values) == n for s in doc.series)
    s = doc.series[0]
    assert max(s.values) == end - timedelta(minutes=15)


def refusal(data: bytes) -> list[str]:
    return [str(r) for r in parse_sdat(data, "bad.xml").refused]


def test_refusals_name_the_point_and_reason_and_the_rest_of_the_file_counts():
    start, end = local_day(2026, 3, 1)
    cases = {
        (P1, LEG): {"unit": "MWH"},
        (P2, GRID): {"resolution": "60"},
    }
    doc = parse_sdat(leg_document("D", CREATED, start, end, two_points(96), overrides=cases), "bad.xml")
    reasons = [str(r) for r in doc.refused]
    assert f"metering point {P1}: LEG share: unit 'MWH', only KWH is accepted" in reasons
    assert f"metering point {P2}: grid share: resolution 60 MIN, only 15 MIN is accepted" in reasons
    assert {(s.metering_point, s.product) for s in doc.series} == {(P1, "total"), (P1, "grid"), (P2, "total"), (P2, "leg")}


def test_a_sequence_outside_the_interval_is_refused():
    start, end = local_day(2026, 3, 1)
    seqs = list(range(1, 96)) + [97]
    r = refusal(leg_document("D", CREATED, start, end, two_points(96), overrides={(P1, TOTAL): {"sequences": seqs}}))
    assert r == [f"metering point {P1}: total: sequence 97 is outside the interval (96 quarter hours from 2026-02-28T23:00Z)"]


def test_a_total_that_is_not_leg_plus_grid_refuses_that_points_window():
    start, end = local_day(2026, 3, 1)
    total = [0.3] * 96
    total[10] = 0.303                                           # 0.003 kWh off
    doc = parse_sdat(leg_document("D", CREATED, start, end, two_points(96), overrides={(P1, TOTAL): {"volumes": total}}), "t.xml")
    assert len(doc.refused) == 1 and "differs from LEG share 0.100 + grid share 0.200" in str(doc.refused[0])
    assert {s.metering_point for s in doc.series} == {P2}
    total[10] = 0.302                                           # within 0.002 kWh: accepted
    doc = parse_sdat(leg_document("D", CREATED, start, end, two_points(96), overrides={(P1, TOTAL): {"volumes": total}}), "t.xml")
    assert doc.refused == []


@pytest.mark.parametrize("data, message", [
    (b"not xml at all", "not well-formed XML"),
    (b'<?xml version="1.0"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.08"/>',
     "root element 'Document' is not ValidatedMeteredData_NN"),
    (b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><x>&b;</x>', "entities are not allowed"),
    (b'<rsm:ValidatedMeteredData_14 xmlns:rsm="http://www.strom.ch"><rsm:ValidatedMeteredData_HeaderInformation>'
     b'<rsm:InstanceDocument><rsm:DocumentID>X</rsm:DocumentID><rsm:Creation>2026-01-01T10:00:00</rsm:Creation>'
     b'</rsm:InstanceDocument></rsm:ValidatedMeteredData_HeaderInformation></rsm:ValidatedMeteredData_14>',
     "has no time zone"),
])
def test_files_that_are_not_e66_documents_are_refused_whole(data, message):
    with pytest.raises(SdatError, match=message) as exc:
        parse_sdat(data, "x.xml")
    assert str(exc.value).startswith("x.xml: ")


@pytest.mark.parametrize("value, ok", [(P1, True), (P2, True), ("CH123", False), ("DE" + "1" * 31, False),
                                       ("CH" + "1" * 30 + "x", False)])
def test_metering_point_ids(value, ok):
    if ok:
        assert check_metering_point(value) == value
    else:
        with pytest.raises(ValueError):
            check_metering_point(value)


@pytest.mark.parametrize("data", [
    b'<!DOCTYPE x SYSTEM "http://example.com/x.dtd"><x/>',
    '<!DOCTYPE x SYSTEM "/etc/hostname"><x/>'.encode("utf-32"),            # no local file read either
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>',
    b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>',
])
def test_doctypes_external_entities_and_entity_expansion_are_refused(data):
    with pytest.raises(SdatError, match="x.xml: refused XML construct .*entities are not allowed"):
        parse_sdat(data, "x.xml")


def test_an_oversized_file_is_refused_before_parsing(monkeypatch):
    import ingest.sdat
    monkeypatch.setattr(ingest.sdat, "MAX_FILE_BYTES", 100)
    with pytest.raises(SdatError, match="exceeds the limit of 100"):
        parse_sdat(b"<x>" + b" " * 200 + b"</x>", "big.xml")


def _as_read(doc):
    return sorted((s.metering_point, s.product, s.direction, tuple(s.offsets.tolist()), tuple(s.texts),
                   tuple(sorted(s.conditions.items()))) for s in doc.series), [str(r) for r in doc.refused]


@pytest.mark.parametrize("change", [
    lambda d: d.replace(b"<rsm:Observation>", b"<!-- c --><rsm:Observation>", 5),      # comments: element by element
    lambda d: d.replace(b"<rsm:Volume>0.100", b"<rsm:Volume> 0.100 ", 7),              # padded volumes
    lambda d: d.replace(b"<rsm:Condition>21</rsm:Condition>", b"<rsm:Condition> 21 </rsm:Condition>"),
])
def test_the_fast_and_the_element_by_element_reading_agree(change):
    start, end = local_day(2026, 3, 1)
    data = leg_document("D", CREATED, start, end, two_points(96), conditions={5: "21", 96: "56"})
    fast, other = parse_sdat(data, "a.xml"), parse_sdat(change(data), "a.xml")
    assert _as_read(fast) == _as_read(other)
    assert fast.series[0].conditions == {4: "21", 95: "56"}


def test_sequences_out_of_order_or_with_gaps_read_element_by_element():
    start, end = local_day(2026, 3, 1)
    seqs = list(range(96, 0, -2))
    doc = parse_sdat(leg_document("D", CREATED, start, end, {P1: ("consumption", [0.1] * 48, [0.2] * 48)},
                                  overrides={(P1, TOTAL): {"sequences": seqs, "volumes": [0.3] * 48},
                                             (P1, LEG): {"sequences": seqs}, (P1, GRID): {"sequences": seqs}}), "g.xml")
    assert doc.refused == [] and all(len(s.values) == 48 for s in doc.series)
    assert min(doc.series[0].values) == start + timedelta(minutes=15)             # sequence 2
    seqs = [1, 2, 2] + list(range(4, 97))
    r = refusal(leg_document("D", CREATED, start, end, two_points(96), overrides={(P1, LEG): {"sequences": seqs}}))
    assert r == [f"metering point {P1}: LEG share: sequence 2 appears twice"]


def test_the_store_counts_new_revised_and_unchanged_values(tmp_path):
    from storage.sdat_store import SdatStore, content_digest
    store = SdatStore(tmp_path / "sdat.sqlite")
    try:
        start, end = local_day(2026, 3, 1, days=2)
        first = leg_document("D1", CREATED, start, end, two_points(192), conditions={190: "21"})
        s = store.import_document(parse_sdat(first, "1.xml"), content_digest(first), {P1})
        assert (s.points, s.inserted, s.updated, s.unchanged, s.unknown_points) == (1, 576, 0, 0, [P2])
        points = two_points(192)
        points[P1][1][189] = 0.25                                                   # LEG share revised
        second = leg_document("D2", CREATED + timedelta(days=1), start, end, points,
                              overrides={(P1, TOTAL): {"volumes": [0.3] * 189 + [0.45] + [0.3] * 2}})
        s = store.import_document(parse_sdat(second, "2.xml"), content_digest(second), {P1})
        assert (s.inserted, s.updated, s.unchanged) == (0, 3, 573)                  # total, LEG: value; grid: condition
        s = store.import_document(parse_sdat(first, "1.xml"), content_digest(first), {P1})         # older: nothing changes
        assert (s.already_imported, s.inserted, s.updated, s.unchanged) == (True, 0, 0, 576)
        v = store.values(start, end, [P1])
        row = v[(v["product"] == "leg") & (v["start"] == start + timedelta(minutes=15 * 189))].iloc[0]
        assert (row["volume_kwh"], row["condition"]) == (0.25, None)
        assert len(v) == 576 and store.documents() == 2
        # the unknown point's values are kept (not counted above, never billed): a house may list it later
        assert len(store.values(start, end, [P2])) == 576 and store.unknown()[0]["metering_point"] == P2
    finally:
        store.close()


def test_observations_outside_the_namespace_read_as_before():
    start, end = local_day(2026, 3, 1)
    data = leg_document("D", CREATED, start, end, two_points(96))
    mixed = data.replace(b"<rsm:Observation>", b"<Observation>", 1).replace(b"</rsm:Observation>", b"</Observation>", 1)
    assert _as_read(parse_sdat(mixed, "a.xml")) == _as_read(parse_sdat(data, "a.xml"))


def _pretty(d: bytes) -> bytes:
    return re.sub(rb"><", b">\n      <", d)


def _default_namespace(d: bytes) -> bytes:
    return d.replace(b"xmlns:rsm=", b"xmlns=").replace(b"<rsm:", b"<").replace(b"</rsm:", b"</")


def _in_an_observation(d: bytes) -> bytes:
    return d.replace(b"</rsm:Volume></rsm:Observation>", b"</rsm:Volume><rsm:Quality>A</rsm:Quality></rsm:Observation>", 1)


# shape -> (change, read straight from the bytes?)
SHAPES = {
    "compact": (lambda d: d, True),
    "pretty-printed": (_pretty, True),
    "default namespace": (_default_namespace, True),
    "pretty-printed, default namespace": (lambda d: _pretty(_default_namespace(d)), True),
    "padded volumes": (lambda d: d.replace(b"<rsm:Volume>0.100", b"<rsm:Volume> 0.100 ", 7), False),
    "a comment": (lambda d: d.replace(b"<rsm:Observation>", b"<!-- c --><rsm:Observation>", 1), False),
    "a character reference in a volume": (lambda d: d.replace(b"<rsm:Volume>0.100", b"<rsm:Volume>0&#46;100", 1), False),
    "a volume of 17 digits": (lambda d: d.replace(b"<rsm:Volume>0.100", b"<rsm:Volume>0.1000000000000001", 1), False),
    "another element in an observation": (_in_an_observation, False),
    "a Volume outside an observation": (lambda d: d.replace(b"<rsm:Role>MDR</rsm:Role>",
                                                            b"<rsm:Volume>1</rsm:Volume>", 1), False),
    "a tag of the same length, first and last letter": (
        lambda d: d.replace(b"<rsm:Position>", b"<rsm:Pxxxxxxn>", 1).replace(b"</rsm:Position>", b"</rsm:Pxxxxxxn>", 1),
        False),
    "a prefix of 40 characters": (lambda d: d.replace(b"xmlns:rsm=", b"xmlns:" + b"p" * 40 + b"=")
                                  .replace(b"<rsm:", b"<" + b"p" * 40 + b":").replace(b"</rsm:", b"</" + b"p" * 40 + b":"),
                                  False),
    "a prefix of 20 characters": (lambda d: d.replace(b"xmlns:rsm=", b"xmlns:" + b"p" * 20 + b"=")
                                  .replace(b"<rsm:", b"<" + b"p" * 20 + b":").replace(b"</rsm:", b"</" + b"p" * 20 + b":"),
                                  True),
    "a processing instruction": (lambda d: d.replace(b"<rsm:MeteringData>", b"<?pi x?><rsm:MeteringData>", 1), False),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_observations_read_from_the_bytes_agree_with_the_element_reading(shape):
    """The scan (ingest/sdat.py ``_scan``) reads the plain shape, pretty-printed or not, with or
    without a prefix; anything else goes element by element; both read every file alike, to the bit."""
    from ingest.sdat import _root_prefix, _scan
    change, scanned = SHAPES[shape]
    start, end = local_day(2026, 3, 1)
    points = two_points(96)
    points[P1][1][3] = 1234567.123456
    data = change(leg_document("D", CREATED, start, end, points, conditions={5: "21", 96: "56"},
                               overrides={(P1, TOTAL): {"volumes": [0.3] * 3 + [1234567.323] + [0.3] * 92}}))
    assert (_scan(data, _root_prefix(data)) is not None) == scanned
    fast, slow = parse_sdat(data, "a.xml"), parse_sdat(data, "a.xml", scan=False)
    assert all(isinstance(s._texts, tuple) == scanned for s in fast.series)     # as scanned, texts on demand
    assert _as_read(fast) == _as_read(slow)
    assert [s.volumes.tobytes() for s in fast.series] == [s.volumes.tobytes() for s in slow.series]
    if fast.refused:                                     # the changed tag name: that series, in both readings
        assert shape == "a tag of the same length, first and last letter" and len(fast.series) == 5
        return
    leg = next(s for s in fast.series if s.metering_point == P1 and s.product == "leg")
    assert leg.conditions == {4: "21", 95: "56"} and leg.volumes[3] == 1234567.123 and len(fast.series) == 6


def test_volumes_read_from_the_bytes_are_the_nearest_double_of_the_decimal():
    """Any decimal of up to 15 digits (up to 12 after the point) reads to float(text) exactly."""
    import random
    rnd = random.Random(7)
    texts = []
    for _ in range(5000):
        whole = rnd.randint(1, 7)                                    # volumes are at most 10,000,000 kWh
        frac = rnd.randint(0, min(12, 15 - whole))
        t = str(rnd.randrange(10 ** whole)) + ("." + "".join(rnd.choice("0123456789") for _ in range(frac)) if frac else "")
        texts.append(t)
    start = datetime(2026, 2, 28, 23, 0, tzinfo=timezone.utc)
    end = start + timedelta(minutes=15 * len(texts))
    obs = "".join(f"<rsm:Observation><rsm:Position><rsm:Sequence>{k}</rsm:Sequence></rsm:Position>"
                  f"<rsm:Volume>{t}</rsm:Volume></rsm:Observation>" for k, t in enumerate(texts, 1))
    data = classic_document("X", CREATED, start, end, P1, "consumption", [0.0] * len(texts))
    data = re.sub(rb"<rsm:Observation>.*</rsm:Observation>", obs.encode(), data, flags=re.S)
    from ingest.sdat import _root_prefix, _scan
    assert _scan(data, _root_prefix(data)) is not None
    (series,) = parse_sdat(data, "v.xml").series
    assert series.volumes.tolist() == [float(t) for t in texts] and series.texts == texts


# volume texts at the edges of the 8-bytes-at-a-time reading (ingest/sdat.py ``_decimals``)
EDGE_VOLUMES = ["0", "7", ".", "5.", "0.", "0.5", "12.5", "1234567.", ".5", "1..2", "1.2.3", "1a", "a1", "12345678", "1234567.8",
                "99999999", "123456789", "1234567.89", "0.000000000001", "00000.50", "1e3", "-1", "+1", "1/2",
                "1:2", "9" * 9 + ".5", "\u0661", "0.1234567"]


@pytest.mark.parametrize("text", EDGE_VOLUMES)
def test_edge_volume_texts_read_as_the_element_reading_does(text):
    """A volume among good ones, read from the bytes and element by element: the same values or
    the same refusal, whatever the text (digits, a point first or last, two points, letters)."""
    start, end = local_day(2026, 3, 1)
    data = leg_document("D", CREATED, start, end, two_points(96))
    data = data.replace(b"<rsm:Volume>0.100", f"<rsm:Volume>{text}".encode(), 1)
    assert f"<rsm:Volume>{text}<".encode() in data
    fast, slow = parse_sdat(data, "e.xml"), parse_sdat(data, "e.xml", scan=False)
    assert _as_read(fast) == _as_read(slow)
    assert [s.volumes.tobytes() for s in fast.series] == [s.volumes.tobytes() for s in slow.series]


@pytest.mark.parametrize("text", ["01", "0", "1x", "1234567", "96", " 1", "1.0"])
def test_edge_sequence_texts_read_as_the_element_reading_does(text):
    start, end = local_day(2026, 3, 1)
    data = leg_document("D", CREATED, start, end, two_points(96))
    data = data.replace(b"<rsm:Sequence>1</rsm:Sequence>", f"<rsm:Sequence>{text}</rsm:Sequence>".encode(), 1)
    assert f"<rsm:Sequence>{text}</rsm:Sequence>".encode() in data
    assert _as_read(parse_sdat(data, "q.xml")) == _as_read(parse_sdat(data, "q.xml", scan=False))


def test_refusals_read_from_the_bytes_are_those_of_the_element_reading():
    start, end = local_day(2026, 3, 1)
    for seqs, message in ((list(range(1, 96)) + [97], "total: sequence 97 is outside the interval"),
                          ([1, 2, 2] + list(range(4, 97)), "total: sequence 2 appears twice"),
                          (list(range(96, 0, -1)), None)):
        data = leg_document("D", CREATED, start, end, two_points(96), overrides={(P1, TOTAL): {"sequences": seqs}})
        fast, slow = parse_sdat(data, "a.xml"), parse_sdat(data, "a.xml", scan=False)
        assert _as_read(fast) == _as_read(slow)
        assert [str(r) for r in fast.refused] == ([f"metering point {P1}: {message} (96 quarter hours from "
                                                   "2026-02-28T23:00Z)"] if message and "outside" in message else
                                                  [f"metering point {P1}: {message}"] if message else [])


def test_a_store_of_the_earlier_layout_is_moved_to_day_rows_once(tmp_path):
    """sdat.sqlite as the previous version wrote it (a row per quarter hour in ``sdat_values``):
    opened, its values, conditions and documents are kept, and newest-creation-wins goes on."""
    import sqlite3

    from storage.sdat_store import SdatStore, content_digest
    path = tmp_path / "sdat.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE sdat_documents (sha256 TEXT PRIMARY KEY, document_id TEXT NOT NULL, creation TEXT NOT NULL,
            file_name TEXT NOT NULL, imported_at TEXT NOT NULL, summary TEXT NOT NULL);
        CREATE TABLE sdat_values (metering_point TEXT NOT NULL, product TEXT NOT NULL, start TEXT NOT NULL,
            direction TEXT NOT NULL, volume_kwh REAL NOT NULL, condition TEXT, document_id TEXT NOT NULL,
            creation TEXT NOT NULL, PRIMARY KEY (metering_point, product, start)) WITHOUT ROWID;""")
    start, end = local_day(2026, 3, 1)                      # 2026-02-28 23:00 UTC: two UTC days
    old_creation = CREATED.isoformat()
    con.execute("INSERT INTO sdat_documents VALUES ('x', 'D-OLD', ?, 'old.xml', ?, '{}')", (old_creation, old_creation))
    rows = [(P1, "leg", (start + timedelta(minutes=15 * k)).isoformat(), "consumption", 0.125,
             "21" if k == 5 else None, "D-OLD", old_creation) for k in range(96)]
    con.executemany("INSERT INTO sdat_values VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    store = SdatStore(path)
    try:
        assert store._con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sdat_values'").fetchone() == (0,)
        v = store.values(start, end).sort_values("start")
        assert len(v) == 96 and set(v["volume_kwh"]) == {0.125} and set(v["product"]) == {"leg"}
        assert [c if isinstance(c, str) else None for c in v["condition"]] == [None] * 5 + ["21"] + [None] * 90
        assert v["start"].iloc[0] == start and store.value_count() == 96
        assert store.points()[0]["document_id"] == "D-OLD"
        # an older document changes nothing, a newer one revises
        for doc_id, created, value, expect in (("D-0", CREATED - timedelta(days=1), 0.5, (192, 0, 96)),
                                               ("D-NEW", CREATED + timedelta(days=1), 0.25, (0, 192, 96))):
            data = leg_document(doc_id, created, start, end, {P1: ("consumption", [value] * 96, [0.0] * 96)})
            s = store.import_document(parse_sdat(data, f"{doc_id}.xml"), content_digest(data), {P1})
            assert (s.inserted, s.updated, s.unchanged) == expect, doc_id
        v = store.values(start, end, product="leg")
        assert set(v["volume_kwh"]) == {0.25} and v["condition"].isna().all()
    finally:
        store.close()


def test_a_point_twice_in_one_document_counts_its_first_values(tmp_path):
    """Two MeteringData of the same point and product whose windows overlap (a day, then the day
    and the next): the first one's values count where they overlap, the rest of the second's too."""
    from storage.sdat_store import SdatStore, content_digest
    start, end = local_day(2026, 3, 1)
    _, end2 = local_day(2026, 3, 1, days=2)
    one = leg_document("D", CREATED, start, end, {P1: ("consumption", [0.1] * 96, [0.2] * 96)})
    two = leg_document("D", CREATED, start, end2, {P1: ("consumption", [0.7] * 192, [0.2] * 192)})
    blocks = lambda d: d[d.index(b"<rsm:MeteringData>"):d.rindex(b"</rsm:MeteringData>") + len(b"</rsm:MeteringData>")]
    data = one.replace(blocks(one), blocks(one) + b"\n" + blocks(two))
    doc = parse_sdat(data, "twice.xml")
    assert doc.refused == [] and len(doc.series) == 6
    store = SdatStore(tmp_path / "sdat.sqlite")
    try:
        s = store.import_document(doc, content_digest(data), {P1})
        assert (s.inserted, s.updated, s.unchanged) == (576, 0, 288)          # the overlap of the second: unchanged
        v = store.values(start, end2, product="leg").sort_values("start")
        assert v["volume_kwh"].tolist() == [0.1] * 96 + [0.7] * 96
    finally:
        store.close()
