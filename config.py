"""Configuration: ``config.yaml`` validated by pydantic.

The seed's sections (``mqtt``, ``influxdb``, ``houses``, ``tariffs``, ``collector``, ``web``,
``logging``) load unchanged; ``community``, ``pricing`` and ``storage`` are extensions.
Every unknown or wrong key is reported with its path, e.g. ``tariffs.p_pv: must be a number``.

String values may name environment variables as ``${NAME}`` (for secrets such as
``mqtt.password: ${LEG_MQTT_PASSWORD}``); an unset variable is an error naming the key.
"""
from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pricing.tariffs import tariff_errors
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

CONFIG_ENV = "LEG_CONFIG"
DEFAULT_CONFIG_FILE = "config.yaml"


class ConfigError(Exception):
    """A configuration file that cannot be used; ``errors`` lists one message per bad key."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))

    def __str__(self) -> str:
        return f"invalid configuration in {self.source}:\n" + "\n".join(f"  {e}" for e in self.errors)


def _not_bool(kind: str):
    def check(v):
        if isinstance(v, bool):
            raise ValueError(f"must be {kind}, got {str(v).lower()}")
        return v
    return BeforeValidator(check)


Number = Annotated[float, _not_bool("a number")]
Port = Annotated[int, _not_bool("a whole number"), Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MqttConfig(_Strict):
    broker: str = "localhost"
    port: Port = 1883
    use_tls: bool = False
    username: str | None = None
    password: str | None = None
    topic: str = "+/SENSOR"
    client_id: str = "leg-invoicing"
    enabled: bool = True       # connect to the broker (the demo without a config does not)


class InfluxConfig(_Strict):
    url: str = "http://localhost:8086"
    token: str | None = None
    org: str = "LEG"
    bucket: str = "energy"
    username: str | None = None
    password: str | None = None
    database: str | None = None
    # read_only: settle and show dashboards from the house_energy deltas another collector writes
    # (the LEG stack's own); the app then never writes to InfluxDB and runs no ingest
    mode: Literal["read_write", "read_only"] = "read_write"


Language = Literal["de", "fr", "it", "en"]


class AddressConfig(_Strict):
    """A structured Swiss postal address (as the QR-bill wants it)."""
    name: str = Field(min_length=1, max_length=70)
    street: str = Field("", max_length=70)
    number: str = Field("", max_length=16)
    postcode: str = Field("", max_length=16)
    town: str = Field("", max_length=35)
    country: str = Field("CH", pattern=r"^[A-Z]{2}$")


class HouseConfig(_Strict):
    id: int | str
    name: str
    type: str = "real"
    pv_kwp: Annotated[float | None, _not_bool("a number")] = Field(None, ge=0)
    active_from: date | None = None
    max_power_kw: Annotated[float, _not_bool("a number")] = Field(100.0, gt=0)
    # the invoice's recipient; without it the house's name is used and the QR-bill has no debtor
    owner: AddressConfig | None = None
    email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    language: Language | None = None        # the invoice's language; default: community.language
    # the grid operator's metering points of the house (SDAT-CH data, pricing.mode leg); the key
    # under `houses` may itself be the consumption metering point's ID
    metering_points: list[str] = Field(default_factory=list, max_length=20)
    # where the house's credits are paid out (producers; `payouts`), validated
    iban: str | None = None

    @field_validator("iban")
    @classmethod
    def _iban(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from stdnum import iban as std_iban
        from stdnum.exceptions import ValidationError as StdnumError
        try:
            return std_iban.validate(v)
        except StdnumError as exc:
            raise ValueError(f"{v!r} is not a valid IBAN ({exc})") from None

    @field_validator("metering_points")
    @classmethod
    def _points(cls, v: list[str]) -> list[str]:
        from ingest.sdat import check_metering_point
        return [check_metering_point(p) for p in v]


class TariffConfig(_Strict):
    p_pv: Number = 20.0
    p_grid_del: Number = 6.0
    p_grid_con: Number = 30.0
    p_con: Number | None = None              # pricing.mode leg: the consumers' price (default p_pv)


class LegConfig(_Strict):
    """A Swiss LEG (StromVG Art. 17d/17e): the grid-fee reduction on the LEG share, for the saving
    shown to members (the DSO applies it on its own bill)."""
    grid_fee_reduction: Literal[0.4, 0.2] = 0.4          # 40 %: one transformer station and grid level
    grid_fee_ct_per_kwh: Number = Field(0.0, ge=0, le=1000)   # the eligible grid tariff (energy part)


class SdatConfig(_Strict):
    inbox: str | None = None                 # a folder the app watches for SDAT-CH files
    poll_s: Number = Field(60.0, ge=1, le=86400)


class RegisterSpec(_Strict):
    """Where a Modbus counter lives and how to read it."""
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: Literal["uint16", "int16", "uint32", "int32", "uint64", "float32", "float64"] = "float32"
    word_order: Literal["big", "little"] = "big"
    scale: Number = 1.0                      # kWh = raw value × scale


class ModbusSettings(_Strict):
    host: str = Field(min_length=1)
    port: Port = 502
    device_id: int = Field(1, ge=0, le=247)
    interval_s: Number = Field(60.0, ge=1)
    timeout_s: Number = Field(5.0, gt=0, le=60)
    import_: RegisterSpec | None = Field(None, alias="import")
    export: RegisterSpec | None = None
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class LoxoneHttpSettings(_Strict):
    url: str = Field(pattern=r"^https?://")
    field: str | None = None                 # else the first of power_kwh, power, value, kwh, energy
    interval_s: Number = Field(900.0, ge=1)
    timeout_s: Number = Field(10.0, gt=0, le=120)
    username: str | None = None
    password: str | None = None


class UdpSettings(_Strict):
    port: Port
    sender_ip: str | None = None             # only datagrams from this address
    format: Literal["json", "csv", "raw"] = "json"
    field: str | None = None
    host: str = "0.0.0.0"                    # the address to listen on


class PushSettings(_Strict):
    """Readings pushed to /api/meters/<id>/reading (Loxone virtual HTTP outputs)."""
    format: Literal["json", "csv", "raw"] = "raw"
    field: str | None = None


METER_TYPES = ("apartment", "total", "solar")
CONNECTIONS = ("mqtt", "loxone_http", "udp", "modbus", "http_push", "import")


class MeterConfig(_Strict):
    """A meter of the registry. An apartment meter is its house's import counter, a solar meter a
    production (export) counter of its owner house, a total meter the building's grid exchange
    (cross-checked, never billed). A Modbus meter names its import and export registers."""
    id: str = Field(pattern=r"^[A-Za-z0-9_:.-]{1,64}$")
    name: str | None = None
    type: Literal["apartment", "total", "solar"] = "apartment"
    house: str | None = None                 # the house's key under `houses` (or its id)
    connection: Literal["mqtt", "loxone_http", "udp", "modbus", "http_push", "import"] = "mqtt"
    active: bool = True
    max_power_kw: Annotated[float, _not_bool("a number")] = Field(100.0, gt=0)
    loxone_http: LoxoneHttpSettings | None = None
    udp: UdpSettings | None = None
    modbus: ModbusSettings | None = None
    http_push: PushSettings | None = None

    def settings(self):
        """The settings of its connection (None for mqtt and import)."""
        return getattr(self, self.connection, None) if self.connection in ("loxone_http", "udp", "modbus",
                                                                           "http_push") else None


class CollectorConfig(_Strict):
    interval: int = Field(60, ge=1)


class WebConfig(_Strict):
    host: str = "0.0.0.0"
    port: Port = 8060
    base_path: str = "/"     # e.g. /invoicing/ behind a reverse proxy beside LEG-Simulator
    # the reverse proxy whose X-Forwarded-For/-Proto/-Host headers are believed (none: ignore them)
    trusted_proxy: str | None = "127.0.0.1"
    # who may show the app in a frame (CSP frame-ancestors), e.g. ["'self'", "https://sim.example.org"]
    frame_ancestors: list[str] = Field(default_factory=lambda: ["'self'"])
    metrics_public: bool = False             # GET /metrics without a token (e.g. a scraper on localhost)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    file: str | None = None


class CommunityConfig(_Strict):
    name: str = "LEG Community"
    timezone: str = "Europe/Zurich"
    language: Language = "de"                # invoices of houses that name none
    address: AddressConfig | None = None     # the invoices' sender
    # the account that receives payments: with it (and the address), invoices carry a Swiss QR-bill
    iban: str | None = None
    payment_days: int = Field(30, ge=0, le=365)
    # what one invoice covers: a calendar month, quarter or year in the community's time zone
    billing_period: Literal["month", "quarter", "year"] = "month"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Zurich)")
        return v


class SmtpConfig(_Strict):
    """Mailing issued invoices; without ``host`` the settlement page offers no sending."""
    host: str | None = None
    port: Port = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str = "LEG-Invoicing <invoices@localhost>"
    timeout_s: float = Field(30.0, gt=0)


class PricingConfig(_Strict):
    mode: Literal["break_even", "static", "zev_proportional", "leg"] = "break_even"
    interval_minutes: Literal[15] = 15


class StorageConfig(_Strict):
    data_dir: str = "./data"
    backend: Literal["embedded", "influxdb"] = "embedded"
    # the embedded store's memory for caching and queries (beyond it, large queries spill to disk):
    # the app's memory then stays flat as the store grows
    memory_limit_mb: int = Field(512, ge=64)
    # the embedded store reopens its file after this many written readings, which gives back the
    # memory DuckDB keeps for a connection's own writes (0: never; see storage/duckdb_store.py)
    reopen_every_rows: int = Field(100_000, ge=0)


def _demo_owner(name: str, number: str) -> dict:
    return {"name": name, "street": "Sonnenweg", "number": number, "postcode": "3000", "town": "Bern"}


# Demo payment accounts: the QR-IBAN and IBAN of SIX's QR-bill examples (valid check digits, nobody's
# account), so every demo invoice that asks for money carries a QR-bill and credits can be paid out.
DEMO_QR_IBAN = "CH4431999123000889012"
DEMO_IBAN = "CH9300762011623852957"
DEMO_HOUSES: dict[str, dict] = {
    "B0-81-84-25-22-5C": {"id": 1, "name": "House 1", "type": "real", "pv_kwp": 6.0,  # PV: yes (size not in the seed)
                          "owner": _demo_owner("Anna Meier", "1"), "iban": DEMO_IBAN},
    "AA-11-BB-22-CC-01": {"id": 2, "name": "House 2", "type": "simulated", "pv_kwp": 10.0,
                          "owner": _demo_owner("Beat Keller", "3"), "iban": DEMO_IBAN},
    "AA-11-BB-22-CC-02": {"id": 3, "name": "House 3", "type": "simulated", "pv_kwp": 20.0,
                          "owner": _demo_owner("Chiara Rossi", "5"), "iban": DEMO_IBAN, "language": "it"},
    "AA-11-BB-22-CC-03": {"id": 4, "name": "House 4", "type": "simulated",
                          "owner": _demo_owner("Daniel Huber", "7")},
    "AA-11-BB-22-CC-04": {"id": 5, "name": "House 5", "type": "simulated",
                          "owner": _demo_owner("Élise Dubois", "9"), "language": "fr"},
}
DEMO_COMMUNITY = {"name": "LEG Demo Community", "iban": DEMO_QR_IBAN,
                  "address": {"name": "LEG Demo Community", "street": "Sonnenweg", "number": "2", "postcode": "3000",
                              "town": "Bern"}}


class Config(_Strict):
    mqtt: MqttConfig = MqttConfig()
    influxdb: InfluxConfig = InfluxConfig()
    houses: dict[str, HouseConfig] = Field(default_factory=dict)
    tariffs: TariffConfig = TariffConfig()
    collector: CollectorConfig = CollectorConfig()
    web: WebConfig = WebConfig()
    logging: LoggingConfig = LoggingConfig()
    community: CommunityConfig = CommunityConfig()
    pricing: PricingConfig = PricingConfig()
    storage: StorageConfig = StorageConfig()
    smtp: SmtpConfig = SmtpConfig()
    meters: list[MeterConfig] = Field(default_factory=list)
    leg: LegConfig = LegConfig()
    sdat: SdatConfig = SdatConfig()

    # Not a key of the file: where the configuration came from ("demo" when there is none).
    source: str = Field("demo", exclude=True)
    # Not a key of the file: the community's slug under ``communities:`` (None: a file of one community)
    slug: str | None = Field(None, exclude=True)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.community.timezone)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"


_MESSAGES = {
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
    "date_parsing": "must be a date (YYYY-MM-DD)",
    "date_type": "must be a date (YYYY-MM-DD)",
}


def _format_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    # For unions (house id: int | str) pydantic appends the member type; drop it.
    loc = [p for p in loc if p not in ("int", "str", "float")]
    path = ".".join(loc) or "(top level)"
    etype = err["type"]
    if etype in _MESSAGES:
        msg = _MESSAGES[etype]
    elif etype == "literal_error":
        msg = "must be one of " + err["ctx"]["expected"]
    elif etype in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[etype]
        limit = next(iter(err["ctx"].values()))
        msg = f"must be {words} {limit}, got {err['input']!r}"
    elif etype == "value_error":
        msg = str(err["ctx"]["error"])
    else:
        msg = err["msg"]
    return f"{path}: {msg}"


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(node, path: str, errors: list[str]):
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name not in os.environ:
                errors.append(f"{path}: environment variable {name} is not set")
                return ""
            return os.environ[name]
        return _ENV_REF.sub(repl, node)
    return node


def parse_config(data: dict | None, source: str = "config") -> Config:
    """Validate a parsed YAML mapping; raise ConfigError listing every bad key with its path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of sections"])
    errors: list[str] = []
    data = _expand_env(data, "", errors)
    cfg = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors += [_format_error(e) for e in exc.errors()]
    errors += _duplicate_house_ids(data.get("houses"))
    errors += _tariff_rule_errors(data.get("tariffs"), data.get("pricing"))
    if cfg is not None:
        errors += creditor_errors(cfg.community)
        errors += meter_errors(cfg)
        errors += metering_point_errors(cfg)
    if errors:
        raise ConfigError(source, list(dict.fromkeys(errors)))
    cfg.source = source
    return cfg


# -- several communities in one file --------------------------------------------------------------
# ``communities:`` maps a slug to the sections that belong to one community; the other sections
# are shared by all. Each community keeps its data in ``storage.data_dir/<slug>/``.
COMMUNITY_SECTIONS = ("community", "pricing", "tariffs", "houses", "meters", "leg", "sdat")
SLUG_RE = re.compile(r"^[a-z0-9-]{1,40}$")
MAX_COMMUNITIES = 1000


def parse_communities(data: dict, source: str = "config") -> dict[str, Config]:
    """slug -> the configuration of that community, for a file with ``communities:``; one
    ConfigError lists every problem, each with its path (``communities.<slug>.houses...``). A meter
    id or metering point belongs to one community."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of sections"])
    blocks = data.get("communities")
    errors: list[str] = []
    if not isinstance(blocks, dict) or not blocks:
        raise ConfigError(source, ["communities: must map each community's slug to its sections "
                                   "(community, pricing, tariffs, houses, meters, leg, sdat)"])
    if len(blocks) > MAX_COMMUNITIES:
        raise ConfigError(source, [f"communities: {len(blocks)} communities, at most {MAX_COMMUNITIES} in one file"])
    shared = {k: v for k, v in data.items() if k != "communities"}
    errors += [f"{k}: belongs under communities.<slug> when the file has communities:" for k in COMMUNITY_SECTIONS
               if k in shared]
    configs: dict[str, Config] = {}
    for slug, block in blocks.items():
        where = f"communities.{slug}"
        if not isinstance(slug, str) or not SLUG_RE.match(slug):
            errors.append(f"communities.{str(slug)[:50]}: a slug is 1 to 40 characters a-z, 0-9 and -")
            continue
        if not isinstance(block, dict):
            errors.append(f"{where}: must be a mapping of the community's sections")
            continue
        errors += [f"{where}.{k}: is shared by all communities: put it at the top of the file" for k in block
                   if k not in COMMUNITY_SECTIONS]
        merged = {**{k: v for k, v in shared.items() if k not in COMMUNITY_SECTIONS},
                  **{k: v for k, v in block.items() if k in COMMUNITY_SECTIONS}}
        storage = dict(merged.get("storage") or {}) if isinstance(merged.get("storage") or {}, dict) else {}
        storage["data_dir"] = str(Path(storage.get("data_dir", StorageConfig().data_dir)) / slug)
        merged["storage"] = storage
        try:
            cfg = parse_config(merged, source)
        except ConfigError as exc:
            errors += [e if e.split(".")[0].split(":")[0].split("[")[0] not in COMMUNITY_SECTIONS else f"{where}.{e}"
                       for e in exc.errors]
            continue
        cfg.slug = slug
        configs[slug] = cfg
    owner: dict[str, str] = {}
    for slug, cfg in configs.items():
        ids = [*cfg.houses, *(m.id for m in cfg.meters), *metering_points(cfg)]
        for meter_id in dict.fromkeys(ids):
            if meter_id in owner:
                errors.append(f"communities.{slug}: meter or metering point {meter_id!r} belongs to "
                              f"communities.{owner[meter_id]} already (one community per meter)")
            else:
                owner[meter_id] = slug
    if errors:
        raise ConfigError(source, list(dict.fromkeys(errors)))
    return configs


def choose_community(configs: dict[str, Config], slug: str | None, source: str) -> Config:
    """The configuration of community ``slug``; the only one when the file has one."""
    if slug is None:
        if len(configs) == 1:
            return next(iter(configs.values()))
        raise ConfigError(source, [f"--community: the file configures {len(configs)} communities "
                                   f"({', '.join(configs)}): name one with --community SLUG"])
    if slug not in configs:
        raise ConfigError(source, [f"--community: no community {slug[:50]!r} (the file has {', '.join(configs)})"])
    return configs[slug]


def _duplicate_house_ids(houses) -> list[str]:
    if not isinstance(houses, dict):
        return []
    seen: dict[str, str] = {}
    out = []
    for mac, house in houses.items():
        if not isinstance(house, dict) or "id" not in house or isinstance(house["id"], (dict, list)):
            continue
        key = str(house["id"])
        if key in seen:
            out.append(f"houses.{mac}.id: {key!r} is already used by houses.{seen[key]}")
        else:
            seen[key] = mac
    return out


def _tariff_rule_errors(tariffs, pricing) -> list[str]:
    """The tariff rules of pricing.tariffs (finite, >= 0, ordered), checked when the section's
    types are right (type errors are already reported by the schema)."""
    try:
        values = TariffConfig.model_validate(tariffs if tariffs is not None else {}).model_dump()
    except ValidationError:
        return []
    mode = pricing.get("mode") if isinstance(pricing, dict) else None
    values["mode"] = mode if mode in ("break_even", "static", "zev_proportional", "leg") else "break_even"
    return [f"tariffs.{e.field}: {e.message}" for e in tariff_errors(values)]


def meter_errors(cfg: Config) -> list[str]:
    """The registry's rules that span keys: settings for the connection, a house for apartment and
    solar meters and none for the total meter, unique ids, one listener per UDP port and sender."""
    out, seen, udp = [], set(), {}
    houses = {**{mac: str(h.id) for mac, h in cfg.houses.items()}, **{str(h.id): str(h.id) for h in cfg.houses.values()}}
    for i, m in enumerate(cfg.meters):
        where = f"meters[{i}]"
        if m.id in seen or m.id in cfg.houses:
            out.append(f"{where}.id: {m.id!r} is used twice (meter ids and house MACs share one namespace)")
        seen.add(m.id)
        if m.connection in ("loxone_http", "udp", "modbus") and m.settings() is None:
            out.append(f"{where}.{m.connection}: required for connection {m.connection}")
        if m.type == "total" and m.house:
            out.append(f"{where}.house: a total meter measures the building and bills no house")
        if m.type != "total" and not m.house:
            out.append(f"{where}.house: required for a {m.type} meter (the house it bills)")
        if m.house and m.house not in houses:
            out.append(f"{where}.house: {m.house!r} is not a key under houses")
        if m.connection == "modbus" and m.modbus and not (m.modbus.import_ or m.modbus.export):
            out.append(f"{where}.modbus: name the import or the export register (or both)")
        if m.connection == "udp" and m.udp:
            key = (m.udp.port, m.udp.sender_ip)
            if key in udp or (m.udp.port, None) in udp or (m.udp.sender_ip is None and any(p == m.udp.port for p, _ in udp)):
                out.append(f"{where}.udp: port {m.udp.port} is shared; each meter on it needs its own sender_ip")
            udp[key] = m.id
    return out


def metering_points(cfg: Config) -> dict[str, str]:
    """Metering point ID -> house id: the houses' ``metering_points``, and a house key that is itself
    a metering point ID (its consumption point)."""
    from ingest.sdat import check_metering_point
    out: dict[str, str] = {}
    for key, h in cfg.houses.items():
        points = list(h.metering_points)
        try:
            points.insert(0, check_metering_point(key))
        except ValueError:
            pass
        for p in points:
            out.setdefault(p, str(h.id))
    return out


def metering_point_errors(cfg: Config) -> list[str]:
    """A metering point belongs to one house."""
    from ingest.sdat import check_metering_point
    owner: dict[str, str] = {}
    out = []
    for key, h in cfg.houses.items():
        points = list(dict.fromkeys(h.metering_points))
        try:
            if check_metering_point(key) not in points:
                points.insert(0, key)
        except ValueError:
            pass
        for p in points:
            if p in owner and owner[p] != key:
                out.append(f"houses.{key}.metering_points: {p} already belongs to houses.{owner[p]}")
            owner.setdefault(p, key)
    return out


def creditor_errors(community: CommunityConfig) -> list[str]:
    """The QR-bill's creditor, checked at start-up (not when an invoice is rendered)."""
    if community.iban is None:
        return []
    from documents.model import Party
    from documents.qr import creditor_errors as qr_errors
    if community.address is None:
        return ["community.address: is required with community.iban (the QR-bill names the creditor's address)"]
    a = community.address
    return [f"community.iban: {e}" for e in qr_errors(community.iban, Party(a.name, a.street, a.number, a.postcode,
                                                                             a.town, a.country))]


def demo_config(data_dir: str | None = None) -> Config:
    """The embedded demo: the seed's five houses (with owners' addresses and, for the producers, an
    IBAN for payouts), the community's address and QR-IBAN, default tariffs, embedded store."""
    cfg = parse_config({"houses": DEMO_HOUSES, "community": DEMO_COMMUNITY}, source="demo")
    cfg.mqtt.enabled = False
    if data_dir:
        cfg.storage.data_dir = data_dir
    return cfg


# Bounds of a configuration file: a real one has a few hundred keys, five or six levels deep. The
# bounds keep a damaged or hostile file (a binary, an alias that contains itself, "billion laughs"
# aliases, thousands of nested brackets) from exhausting memory or the stack.
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 50
MAX_VALUES = 200_000


class _ConfigLoader(yaml.SafeLoader):
    """YAML as written: duplicate keys are an error, and dates stay text for pydantic to check.
    Nesting is bounded and an alias may not stand inside the value it names."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"the alias *{event.anchor} stands inside the value &{event.anchor} it names "
                                "(a value that contains itself)", event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":      # <<: *defaults, merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of a composed document once its aliases are expanded (every alias counts
    as a copy of what it names); iterative, so it needs no stack of its own."""
    def children(node):
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return node.value if isinstance(node, yaml.SequenceNode) else []
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in size:
            continue
        kids = children(node)
        if ready:
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
    return size[id(root)], depth[id(root)]


def _read_yaml(text: str, source: str):
    """The document of ``text`` (None when it holds nothing), within the bounds above."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        values, depth = _expanded_size(node)
        if values > MAX_VALUES:
            raise ConfigError(source, [f"(top level): its aliases expand to {values} values (at most {MAX_VALUES}: "
                                       "is it a configuration file?)"])
        if depth > MAX_DEPTH:
            raise ConfigError(source, [f"(top level): its aliases nest values {depth} levels deep "
                                       f"(at most {MAX_DEPTH})"])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: str | os.PathLike | None = None, community: str | None = None) -> Config:
    """Load ``path``, else ``$LEG_CONFIG``, else ``./config.yaml``; without any, the demo config.
    A file with ``communities:`` gives the community ``community`` (the only one when it has one)."""
    data, source = load_data(path)
    if data is None:
        if community is not None:
            raise ConfigError("demo", ["--community: the demo is one community; give a configuration file "
                                       "with communities:"])
        return demo_config()
    if isinstance(data, dict) and "communities" in data:
        return choose_community(parse_communities(data, source), community, source)
    if community is not None:
        raise ConfigError(source, [f"--community: the file configures one community (no communities: section); "
                                   f"leave --community out"])
    return parse_config(data, source=source)


def load_communities(path: str | os.PathLike | None = None) -> dict[str, Config]:
    """Every community of the file (slug -> configuration); a file without ``communities:`` (or
    the demo) is one community with the slug None."""
    data, source = load_data(path)
    if data is None:
        return {None: demo_config()}
    if isinstance(data, dict) and "communities" in data:
        return parse_communities(data, source)
    return {None: parse_config(data, source=source)}


def load_data(path: str | os.PathLike | None = None) -> tuple[object, str]:
    """The parsed YAML of ``path`` (else ``$LEG_CONFIG``, else ``./config.yaml``) and its name;
    (None, "demo") when there is no file."""
    explicit = path or os.environ.get(CONFIG_ENV)
    candidate = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    if not candidate.exists():
        if explicit:
            raise ConfigError(str(candidate), ["file not found"])
        return None, "demo"
    try:
        with open(candidate, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(candidate), [f"cannot be read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(str(candidate), [f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB: is it a configuration file?"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(candidate), [f"not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = _read_yaml(text, str(candidate))
    except yaml.reader.ReaderError as exc:     # a character YAML does not allow (a binary file)
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        raise ConfigError(str(candidate), [f"line {line + 1}, column {column + 1}: not valid YAML "
                                           f"(character {exc.character!r} is not allowed: is it a text file?)"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(candidate), [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    except RecursionError:                     # a safety net: the bounds above should come first
        raise ConfigError(str(candidate), [f"(top level): nested too deeply (at most {MAX_DEPTH} levels)"]) from None
    if data is None:
        raise ConfigError(str(candidate), ["(top level): the file is empty: it needs at least one section, such as "
                                           "houses: (see config.example.yaml)"])
    return data, str(candidate)


def prepare_data_dir(cfg: Config) -> Path:
    """``storage.data_dir``, created (mode 0700: it holds accounts and billing data) when it does not
    exist yet, and checked to be a folder this process can write to; a ConfigError naming the key
    otherwise."""
    path = cfg.data_dir

    def bad(why: str) -> ConfigError:
        return ConfigError(cfg.source, [f"storage.data_dir: {str(path)!r} {why}"])
    if path.exists() and not path.is_dir():
        raise bad("is a file, not a folder")
    if not path.is_dir():
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise bad(f"cannot be created: {str(above)!r} is a file, not a folder")
        try:
            path.mkdir(parents=True, mode=0o700)
            path.chmod(0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise bad(f"cannot be created ({exc.strerror or exc})") from None
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise bad(f"is not writable ({exc.strerror or exc})") from None
    return path
