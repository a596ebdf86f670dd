"""config.yaml validated by pydantic: ``config.parse_config`` and ``config.load_config``.

The seed's file (section 10.2) must load unchanged; every bad value must give a ConfigError whose
messages name the offending key by its path (``tariffs.p_pv: must be a number``).
Real YAML files in tmp_path, real environment variables (through monkeypatch), no mocks.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from config import CONFIG_ENV, DEMO_HOUSES, Config, ConfigError, load_config, parse_config

# The seed's section 10.2 config.yaml, verbatim (including the "more houses" comment).
SEED_CONFIG_YAML = """\
mqtt:
  broker: "provision.dhamstack.com"
  port: 8883
  use_tls: true
  username: "..."
  password: "..."

influxdb:
  url: "https://provision.dhamstack.com:8087"
  token: "..."
  org: "LEG"
  bucket: "energy"

houses:
  "B0-81-84-25-22-5C":
    id: 1
    name: "House 1"
    type: "real"
  # ... more houses

tariffs:
  p_pv: 20.0
  p_grid_del: 6.0
  p_grid_con: 30.0

collector:
  interval: 60

web:
  host: "0.0.0.0"
  port: 8060

logging:
  level: "INFO"
  file: null
"""

# The seed's section 8.4 table: house number, MAC, real/simulated.
SEED_HOUSES = {
    "B0-81-84-25-22-5C": (1, "real"),
    "AA-11-BB-22-CC-01": (2, "simulated"),
    "AA-11-BB-22-CC-02": (3, "simulated"),
    "AA-11-BB-22-CC-03": (4, "simulated"),
    "AA-11-BB-22-CC-04": (5, "simulated"),
}


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch, tmp_path):
    """No test may see the developer's $LEG_CONFIG or ./config.yaml."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(data) -> list[str]:
    """The messages of the ConfigError that ``data`` (YAML text or a mapping) must raise."""
    if isinstance(data, str):
        data = yaml.safe_load(textwrap.dedent(data))
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test.yaml")
    assert info.value.errors, "a ConfigError must carry at least one message"
    assert info.value.source == "test.yaml"
    return info.value.errors


def one_error(data) -> str:
    errors = errors_of(data)
    assert len(errors) == 1, errors
    return errors[0]


# -- the seed's file ------------------------------------------------------------------------------

def test_seed_config_loads_unchanged(tmp_path):
    path = write(tmp_path, SEED_CONFIG_YAML)
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.source == str(path) and not cfg.is_demo

    assert cfg.mqtt.broker == "provision.dhamstack.com"
    assert cfg.mqtt.port == 8883
    assert cfg.mqtt.use_tls is True
    assert cfg.mqtt.username == "..." and cfg.mqtt.password == "..."

    assert cfg.influxdb.url == "https://provision.dhamstack.com:8087"
    assert cfg.influxdb.token == "..."
    assert cfg.influxdb.org == "LEG" and cfg.influxdb.bucket == "energy"

    assert list(cfg.houses) == ["B0-81-84-25-22-5C"]
    house = cfg.houses["B0-81-84-25-22-5C"]
    assert (house.id, house.name, house.type) == (1, "House 1", "real")

    assert (cfg.tariffs.p_pv, cfg.tariffs.p_grid_del, cfg.tariffs.p_grid_con) == (20.0, 6.0, 30.0)
    assert cfg.collector.interval == 60
    assert (cfg.web.host, cfg.web.port) == ("0.0.0.0", 8060)
    assert cfg.logging.level == "INFO" and cfg.logging.file is None

    # the extensions take their defaults
    assert cfg.community.timezone == "Europe/Zurich"
    assert cfg.pricing.mode == "break_even" and cfg.pricing.interval_minutes == 15


def test_seed_config_with_all_five_houses_of_section_8_4(tmp_path):
    houses = "".join(
        f'  "{mac}":\n    id: {hid}\n    name: "House {hid}"\n    type: "{kind}"\n'
        for mac, (hid, kind) in SEED_HOUSES.items())
    text = SEED_CONFIG_YAML.replace(
        '  "B0-81-84-25-22-5C":\n    id: 1\n    name: "House 1"\n    type: "real"\n  # ... more houses\n', houses)
    cfg = load_config(write(tmp_path, text))
    assert {mac: (h.id, h.type) for mac, h in cfg.houses.items()} == SEED_HOUSES


def test_parse_config_and_load_config_agree(tmp_path):
    from_file = load_config(write(tmp_path, SEED_CONFIG_YAML))
    from_dict = parse_config(yaml.safe_load(SEED_CONFIG_YAML))
    assert from_file.model_dump() == from_dict.model_dump()


# -- one bad value, one message naming its path --------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("tariffs: {p_pv: abc}", "tariffs.p_pv: must be a number"),
    ("tariffs: {p_grid_con: [30]}", "tariffs.p_grid_con: must be a number"),
    ("tariffs: {p_grid_del: '6 ct'}", "tariffs.p_grid_del: must be a number"),
], ids=["word", "list", "with-unit"])
def test_non_numeric_tariff(text, expected):
    assert one_error(text) == expected


def test_unknown_top_level_key():
    assert one_error("tarifs: {p_pv: 20}") == "tarifs: unknown key"


@pytest.mark.parametrize("text, expected", [
    ("mqtt: {brokr: localhost}", "mqtt.brokr: unknown key"),
    ("influxdb: {bukket: energy}", "influxdb.bukket: unknown key"),
    ("tariffs: {p_grid: 30}", "tariffs.p_grid: unknown key"),
    ("web: {hots: 0.0.0.0}", "web.hots: unknown key"),
    ("storage: {datadir: /tmp}", "storage.datadir: unknown key"),
], ids=["mqtt", "influxdb", "tariffs", "web", "storage"])
def test_unknown_nested_key(text, expected):
    assert one_error(text) == expected


def test_unknown_key_inside_a_house():
    text = """
        houses:
          "B0-81-84-25-22-5C": {id: 1, name: House 1, colour: red}
    """
    assert one_error(text) == "houses.B0-81-84-25-22-5C.colour: unknown key"


def test_house_without_name():
    text = """
        houses:
          "AA-11-BB-22-CC-01": {id: 2, type: simulated}
    """
    assert one_error(text) == "houses.AA-11-BB-22-CC-01.name: is required"


def test_house_without_id():
    assert one_error('houses: {"AA-11-BB-22-CC-01": {name: House 2}}') == "houses.AA-11-BB-22-CC-01.id: is required"


def test_house_that_is_not_a_mapping():
    assert one_error('houses: {"AA-11-BB-22-CC-01": null}') == \
        "houses.AA-11-BB-22-CC-01: must be a mapping of keys to values"


def test_houses_as_a_list():
    assert one_error("houses: [House 1, House 2]") == "houses: must be a mapping of keys to values"


@pytest.mark.parametrize("section", ["mqtt", "web"])
@pytest.mark.parametrize("port, reason", [
    ("0", "must be at least 1"),
    ("70000", "must be at most 65535"),
    ("abc", "must be a whole number"),
    ("-1", "must be at least 1"),
    ("8060.5", "must be a whole number"),
], ids=["zero", "too-big", "word", "negative", "fraction"])
def test_bad_port(section, port, reason):
    msg = one_error(f"{section}: {{port: {port}}}")
    assert msg.startswith(f"{section}.port: "), msg
    assert reason in msg


@pytest.mark.parametrize("port", [1, 1883, 8883, 65535])
def test_good_ports(port):
    assert parse_config({"mqtt": {"port": port}}).mqtt.port == port


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe/Zürich", "CEST", ""])
def test_bad_timezone(zone):
    msg = one_error({"community": {"timezone": zone}})
    assert msg.startswith("community.timezone: unknown time zone"), msg
    assert "IANA" in msg


@pytest.mark.parametrize("zone", ["Europe/Zurich", "Europe/Berlin", "UTC"])
def test_good_timezone(zone):
    assert parse_config({"community": {"timezone": zone}}).tz.key == zone


def test_bad_pricing_mode():
    msg = one_error("pricing: {mode: cheapest}")
    assert msg.startswith("pricing.mode: must be one of"), msg
    for mode in ("break_even", "static", "zev_proportional"):
        assert mode in msg


@pytest.mark.parametrize("minutes", [5, 10, 30, 60, 0, -15, "quarter"])
def test_interval_other_than_15(minutes):
    msg = one_error({"pricing": {"interval_minutes": minutes}})
    assert msg.startswith("pricing.interval_minutes: "), msg
    assert "15" in msg


def test_interval_15_is_accepted():
    assert parse_config({"pricing": {"interval_minutes": 15}}).pricing.interval_minutes == 15


@pytest.mark.parametrize("second_id", ["1", "'1'"], ids=["int", "quoted"])
def test_duplicate_house_ids(second_id):
    text = f"""
        houses:
          "B0-81-84-25-22-5C": {{id: 1, name: House 1}}
          "AA-11-BB-22-CC-01": {{id: {second_id}, name: House 2}}
    """
    msg = one_error(text)
    assert msg.startswith("houses.AA-11-BB-22-CC-01.id: "), msg
    assert "already used by houses.B0-81-84-25-22-5C" in msg


def test_distinct_house_ids_are_accepted():
    cfg = parse_config({"houses": {"A": {"id": 1, "name": "a"}, "B": {"id": "b-2", "name": "b"}}})
    assert [h.id for h in cfg.houses.values()] == [1, "b-2"]


def test_p_grid_del_above_p_pv():
    msg = one_error("tariffs: {p_pv: 20, p_grid_del: 25, p_grid_con: 30}")
    assert msg.startswith("tariffs.p_grid_del: must not exceed p_pv"), msg
    assert "25.0 > 20.0" in msg


def test_p_pv_above_p_grid_con():
    msg = one_error("tariffs: {p_pv: 35, p_grid_del: 6, p_grid_con: 30}")
    assert msg.startswith("tariffs.p_pv: must not exceed p_grid_con"), msg
    assert "35.0 > 30.0" in msg


def test_ordering_against_defaults_names_the_field():
    # only p_pv given: it is compared with the default p_grid_con of 30
    assert one_error("tariffs: {p_pv: 31}").startswith("tariffs.p_pv: must not exceed p_grid_con")


def test_equal_tariffs_are_allowed():
    t = parse_config({"tariffs": {"p_pv": 20, "p_grid_del": 20, "p_grid_con": 20}}).tariffs
    assert (t.p_pv, t.p_grid_del, t.p_grid_con) == (20, 20, 20)


def test_zero_tariffs_are_allowed():
    t = parse_config({"tariffs": {"p_pv": 0, "p_grid_del": 0, "p_grid_con": 0}}).tariffs
    assert (t.p_pv, t.p_grid_del, t.p_grid_con) == (0, 0, 0)


@pytest.mark.parametrize("field", ["p_pv", "p_grid_del", "p_grid_con"])
@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "nan", "inf"],
                         ids=["yaml-nan", "yaml-NaN", "yaml-inf", "yaml-minus-inf", "text-nan", "text-inf"])
def test_non_finite_tariff(field, value):
    assert one_error(f"tariffs: {{{field}: {value}}}") == f"tariffs.{field}: must be a finite number"


@pytest.mark.parametrize("field", ["p_pv", "p_grid_del", "p_grid_con"])
def test_negative_tariff(field):
    msg = one_error(f"tariffs: {{{field}: -1}}")
    assert msg.startswith(f"tariffs.{field}: must be 0 or more"), msg


@pytest.mark.parametrize("text, expected", [
    ("mqtt: {use_tls: maybe}", "mqtt.use_tls: must be true or false"),
    ("logging: {level: LOUD}", "logging.level: must be one of"),
    ("houses: {A: {id: 1, name: a, active_from: '2026-02-30'}}", "houses.A.active_from: must be a date (YYYY-MM-DD)"),
    ("houses: {A: {id: 1, name: a, active_from: soon}}", "houses.A.active_from: must be a date (YYYY-MM-DD)"),
    ("houses: {A: {id: 1, name: a, pv_kwp: -5}}", "houses.A.pv_kwp: "),
    ("houses: {A: {id: 1, name: a, max_power_kw: 0}}", "houses.A.max_power_kw: "),
    ("collector: {interval: 0}", "collector.interval: "),
    ("storage: {backend: influx}", "storage.backend: must be one of"),
    ("mqtt: 5", "mqtt: must be a mapping of keys to values"),
], ids=["bool", "log-level", "date", "date-word", "pv-kwp", "max-power", "collector", "backend", "section-scalar"])
def test_other_bad_values_name_their_path(text, expected):
    assert one_error(text).startswith(expected)


# -- the file itself -------------------------------------------------------------------------------

def test_invalid_yaml_gives_the_line(tmp_path):
    path = write(tmp_path, """\
        mqtt:
          broker: localhost
         port: 1883
        tariffs:
          p_pv: 20
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    [msg] = info.value.errors
    assert msg.startswith("line 3, column "), msg
    assert "not valid YAML" in msg
    assert str(path) in str(info.value)


def test_unclosed_bracket_gives_the_line(tmp_path):
    path = write(tmp_path, "web:\n  host: [0.0.0.0\n  port: 8060\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [msg] = info.value.errors
    assert msg.startswith("line "), msg
    assert "not valid YAML" in msg


@pytest.mark.parametrize("text", ["- mqtt\n- houses\n", "just a sentence\n", "42\n"],
                         ids=["list", "string", "number"])
def test_top_level_not_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.errors == ["(top level): must be a mapping of sections"]


@pytest.mark.parametrize("text", ["", "# nothing configured yet\n", "---\n", "~\n"],
                         ids=["empty", "comment", "document-marker", "null"])
def test_an_empty_file_is_an_error(tmp_path, text):
    """An empty file is not the demo, nor an empty community: it says so."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.errors == ["(top level): the file is empty: it needs at least one section, such as "
                                 "houses: (see config.example.yaml)"]


def test_missing_file_given_explicitly(tmp_path):
    missing = tmp_path / "nowhere" / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.source == str(missing)
    assert info.value.errors == ["file not found"]


def test_missing_file_named_by_env_var(tmp_path, monkeypatch):
    missing = tmp_path / "missing.yaml"
    monkeypatch.setenv(CONFIG_ENV, str(missing))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.source == str(missing)
    assert info.value.errors == ["file not found"]


def test_config_error_text_lists_every_message(tmp_path):
    path = write(tmp_path, "tariffs: {p_pv: abc}\nweb: {port: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"invalid configuration in {path}:")
    for e in info.value.errors:
        assert f"  {e}" in text.splitlines()


# -- ${ENV} expansion ----------------------------------------------------------------------------

def test_env_expansion_of_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("LEG_TEST_MQTT_PASSWORD", "s3cr#t: {not yaml}")
    monkeypatch.setenv("LEG_TEST_INFLUX_TOKEN", "tok-123")
    monkeypatch.setenv("LEG_TEST_HOST", "provision.dhamstack.com")
    monkeypatch.setenv("LEG_TEST_PORT", "8883")
    path = write(tmp_path, """\
        mqtt:
          broker: ${LEG_TEST_HOST}
          port: ${LEG_TEST_PORT}
          password: ${LEG_TEST_MQTT_PASSWORD}
        influxdb:
          url: "https://${LEG_TEST_HOST}:8087"
          token: "${LEG_TEST_INFLUX_TOKEN}"
    """)
    cfg = load_config(path)
    assert cfg.mqtt.password == "s3cr#t: {not yaml}"     # inserted verbatim, never re-parsed as YAML
    assert cfg.mqtt.broker == "provision.dhamstack.com"
    assert cfg.mqtt.port == 8883
    assert cfg.influxdb.url == "https://provision.dhamstack.com:8087"
    assert cfg.influxdb.token == "tok-123"


def test_env_expansion_of_unset_variable_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("LEG_TEST_UNSET_SECRET", raising=False)
    path = write(tmp_path, "mqtt:\n  password: ${LEG_TEST_UNSET_SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["mqtt.password: environment variable LEG_TEST_UNSET_SECRET is not set"]


def test_env_expansion_set_to_empty_string(tmp_path, monkeypatch):
    monkeypatch.setenv("LEG_TEST_EMPTY", "")
    cfg = load_config(write(tmp_path, "influxdb:\n  token: ${LEG_TEST_EMPTY}\n"))
    assert cfg.influxdb.token == ""


def test_text_without_braces_is_not_expanded(monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    assert parse_config({"mqtt": {"password": "$HOME"}}).mqtt.password == "$HOME"


def test_env_expansion_inside_a_house(monkeypatch):
    monkeypatch.setenv("LEG_TEST_HOUSE_NAME", "Haus Sonnenhang")
    cfg = parse_config({"houses": {"A": {"id": 1, "name": "${LEG_TEST_HOUSE_NAME}"}}})
    assert cfg.houses["A"].name == "Haus Sonnenhang"


def test_env_expansion_result_is_validated(monkeypatch):
    monkeypatch.setenv("LEG_TEST_PORT", "not-a-port")
    assert one_error({"mqtt": {"port": "${LEG_TEST_PORT}"}}) == "mqtt.port: must be a whole number"


# -- which file ------------------------------------------------------------------------------------

def test_leg_config_env_var_selects_the_file(tmp_path, monkeypatch):
    chosen = write(tmp_path, "community: {name: From Env}\nweb: {port: 9001}\n", name="chosen.yaml")
    write(tmp_path, "community: {name: From Cwd}\n")    # ./config.yaml must lose against $LEG_CONFIG
    monkeypatch.setenv(CONFIG_ENV, str(chosen))
    cfg = load_config()
    assert cfg.source == str(chosen)
    assert cfg.community.name == "From Env" and cfg.web.port == 9001


def test_explicit_path_wins_over_leg_config(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, "community: {name: From Env}\n", name="env.yaml")))
    explicit = write(tmp_path, "community: {name: Explicit}\n", name="explicit.yaml")
    assert load_config(explicit).community.name == "Explicit"


def test_config_yaml_in_working_directory_is_used(tmp_path):
    write(tmp_path, "community: {name: From Cwd}\n")
    cfg = load_config()
    assert cfg.community.name == "From Cwd" and cfg.source == "config.yaml"


def test_no_file_at_all_gives_the_demo_with_the_seeds_five_houses(tmp_path):
    assert not (tmp_path / "config.yaml").exists()
    cfg = load_config()
    assert cfg.is_demo and cfg.source == "demo"
    assert {mac: (h.id, h.type) for mac, h in cfg.houses.items()} == SEED_HOUSES
    assert [h.name for h in cfg.houses.values()] == [f"House {i}" for i in range(1, 6)]
    # section 8.4: houses 2 and 3 have 10 and 20 kWp, houses 4 and 5 none
    assert cfg.houses["AA-11-BB-22-CC-01"].pv_kwp == 10.0
    assert cfg.houses["AA-11-BB-22-CC-02"].pv_kwp == 20.0
    assert cfg.houses["AA-11-BB-22-CC-03"].pv_kwp is None
    assert cfg.houses["AA-11-BB-22-CC-04"].pv_kwp is None
    assert cfg.houses["B0-81-84-25-22-5C"].pv_kwp   # "PV: yes"
    assert (cfg.tariffs.p_pv, cfg.tariffs.p_grid_del, cfg.tariffs.p_grid_con) == (20.0, 6.0, 30.0)
    assert set(DEMO_HOUSES) == set(SEED_HOUSES)


def test_the_demo_invoices_carry_a_qr_bill_and_the_page_warns_of_nothing(tmp_path):
    """The demo's community has an address and a QR-IBAN, every house an owner's address: an
    invoice that asks for money has its QR-bill (with a QR reference), and the settlement page's
    setup notes are empty."""
    from datetime import datetime, timezone

    import pandas as pd

    from billing.invoice_documents import invoice_documents
    from community import Community
    from components.views import invoice_setup_notes
    from config import demo_config
    from documents.qr import has_qr_bill, payment_reference
    cfg = demo_config(str(tmp_path))
    assert invoice_setup_notes(cfg) == []
    c = Community.open(cfg, clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    try:
        meters = list(cfg.houses)
        ts = pd.to_datetime(["2026-03-01T00:00+01:00", "2026-04-01T00:00+02:00"], utc=True).astype("datetime64[us, UTC]")
        df = pd.DataFrame({"meter_id": [m for m in meters for _ in ts], "ts": list(ts) * len(meters),
                           "import_kwh": [v for _ in meters for v in (0.0, 300.0)],
                           "export_kwh": [v for m in meters for v in ((0.0, 900.0) if m.endswith("02") else (0.0, 0.0))]})
        df["power_in_kw"] = df["power_out_kw"] = float("nan")
        c.store_readings(df)
        s = c.settle("2026-03", allow_incomplete=True, close=True, closed_by="test")   # drafts carry none
        docs = {d.house_id: d for d in invoice_documents(c, s)}
        owing = [h for h, d in docs.items() if d.net_amount_chf < 0]
        assert owing and all(has_qr_bill(docs[h]) and payment_reference(docs[h]) for h in owing)
        assert docs["5"].recipient.name == "Élise Dubois" and docs["5"].language == "fr"
    finally:
        c.close()


def test_demo_config_is_not_shared_between_loads():
    a = load_config()
    a.community.name = "changed"
    a.storage.data_dir = "/elsewhere"
    b = load_config()
    assert b.community.name != "changed" and b.storage.data_dir != "/elsewhere"


# -- several errors at once ----------------------------------------------------------------------

def test_several_errors_are_all_reported(tmp_path):
    path = write(tmp_path, """\
        mqtt:
          port: 70000
          brokr: localhost
        houses:
          "AA-11-BB-22-CC-01": {id: 2}
          "AA-11-BB-22-CC-02": {id: 3, name: House 3, colour: blue}
        tariffs:
          p_pv: abc
        community:
          timezone: Mars/Olympus_Mons
        pricing:
          mode: cheapest
          interval_minutes: 10
        web:
          port: abc
        colour: red
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    paths = sorted(e.split(": ", 1)[0] for e in info.value.errors)
    assert paths == sorted([
        "mqtt.port", "mqtt.brokr", "houses.AA-11-BB-22-CC-01.name", "houses.AA-11-BB-22-CC-02.colour",
        "tariffs.p_pv", "community.timezone", "pricing.mode", "pricing.interval_minutes", "web.port",
        "colour"])


def test_both_tariff_ordering_errors_are_reported_together():
    errors = errors_of("tariffs: {p_pv: 35, p_grid_del: 36, p_grid_con: 30}")
    assert [e.split(":", 1)[0] for e in errors] == ["tariffs.p_grid_del", "tariffs.p_pv"]


def test_several_non_finite_tariffs_are_reported_together():
    errors = errors_of("tariffs: {p_pv: .nan, p_grid_del: -1, p_grid_con: .inf}")
    assert sorted(errors) == sorted(["tariffs.p_pv: must be a finite number",
                                     "tariffs.p_grid_del: must be 0 or more, got -1.0",
                                     "tariffs.p_grid_con: must be a finite number"])


def test_several_unset_variables_are_reported_together(monkeypatch):
    for name in ("LEG_TEST_U1", "LEG_TEST_U2"):
        monkeypatch.delenv(name, raising=False)
    errors = errors_of({"mqtt": {"password": "${LEG_TEST_U1}"}, "influxdb": {"token": "${LEG_TEST_U2}"}})
    assert sorted(errors) == ["influxdb.token: environment variable LEG_TEST_U2 is not set",
                              "mqtt.password: environment variable LEG_TEST_U1 is not set"]


# -- errors reported together, booleans, duplicate keys, unreadable files, impossible dates --------


@pytest.mark.parametrize("data, expected", [
    ({"tariffs": {"p_pv": 35}, "web": {"port": 0}}, ["tariffs.p_pv", "web.port"]),
    ({"houses": {"A": {"id": 1, "name": "a"}, "B": {"id": 1, "name": "b"}}, "web": {"port": 0}},
     ["houses.B.id", "web.port"]),
    ({"mqtt": {"password": "${LEG_TEST_UNSET_SECRET}"}, "web": {"port": 0}}, ["mqtt.password", "web.port"]),
], ids=["ordering+schema", "duplicate-id+schema", "unset-env+schema"])
def test_errors_of_every_kind_are_reported_together(monkeypatch, data, expected):
    monkeypatch.delenv("LEG_TEST_UNSET_SECRET", raising=False)
    assert sorted(e.split(":", 1)[0] for e in errors_of(data)) == expected


@pytest.mark.parametrize("text, path", [
    ("tariffs: {p_pv: true, p_grid_del: 0}", "tariffs.p_pv"),
    ("tariffs: {p_grid_del: false}", "tariffs.p_grid_del"),
    ("web: {port: true}", "web.port"),
], ids=["p_pv-true", "p_grid_del-false", "port-true"])
def test_booleans_are_not_numbers(text, path):
    msg = one_error(text)
    assert msg.startswith(f"{path}: must be a")


@pytest.mark.parametrize("text, where", [
    ("tariffs:\n  p_pv: 20\n  p_pv: 25\n", "line 3"),
    ('houses:\n  "AA-11-BB-22-CC-01": {id: 2, name: House 2}\n'
     '  "AA-11-BB-22-CC-01": {id: 3, name: House 3}\n', "line 3"),
    ("web: {port: 8060}\nweb: {host: localhost}\n", "line 2"),
], ids=["tariff", "house-mac", "section"])
def test_duplicate_yaml_keys_are_an_error(tmp_path, text, where):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert any(where in e and "duplicate" in e for e in info.value.errors), info.value.errors


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_file_is_a_config_error(tmp_path, kind):
    if kind == "directory":
        path = tmp_path / "config.d"
        path.mkdir()
    else:
        path = tmp_path / "latin1.yaml"
        path.write_bytes("community:\n  name: Gemeinschaft Zürich\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize("day", ["2026-02-30", "2026-13-01"])
def test_impossible_unquoted_date_is_a_config_error(tmp_path, day):
    path = write(tmp_path, f'houses:\n  "AA-11-BB-22-CC-01": {{id: 2, name: House 2, active_from: {day}}}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("line 2" in e or "houses.AA-11-BB-22-CC-01.active_from" in e for e in info.value.errors)


def test_invoice_addresses_languages_and_creditor_are_checked_at_start():
    ok = parse_config({"community": {"name": "Sonnenhof", "language": "fr", "iban": "CH44 3199 9123 0008 8901 2",
                                     "address": {"name": "LEG Sonnenhof", "street": "Hauptstrasse", "number": "1",
                                                 "postcode": "8000", "town": "Zürich"}},
                       "houses": {"M1": {"id": 1, "name": "One", "language": "it", "email": "a@example.ch",
                                         "owner": {"name": "Anna Rossi", "street": "Via Nassa", "number": "5",
                                                   "postcode": "6900", "town": "Lugano"}}},
                       "smtp": {"host": "localhost", "port": 2525, "security": "none"}}, source="t")
    assert ok.community.language == "fr" and ok.houses["M1"].owner.town == "Lugano"
    with pytest.raises(ConfigError) as e:
        parse_config({"community": {"iban": "CH00 1234", "address": {"name": "X", "street": "S", "postcode": "1",
                                                                      "town": "T"}}}, source="t")
    assert any(m.startswith("community.iban: IBAN") for m in e.value.errors)
    with pytest.raises(ConfigError) as e:
        parse_config({"community": {"iban": "CH44 3199 9123 0008 8901 2"}}, source="t")
    assert e.value.errors == ["community.address: is required with community.iban (the QR-bill names the "
                              "creditor's address)"]
    with pytest.raises(ConfigError) as e:
        parse_config({"community": {"iban": "CH44 3199 9123 0008 8901 2", "address": {"name": "X"}}}, source="t")
    assert any("street: missing" in m for m in e.value.errors)
    with pytest.raises(ConfigError) as e:
        parse_config({"houses": {"M1": {"id": 1, "name": "One", "language": "rm", "email": "nope"}}}, source="t")
    assert any(m.startswith("houses.M1.language: must be one of") for m in e.value.errors)
    assert any(m.startswith("houses.M1.email") for m in e.value.errors)
