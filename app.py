"""LEG-Invoicing: billing and analytics for local energy communities.

``python app.py --help`` lists the commands. Without a configuration file (``--config``,
``$LEG_CONFIG`` or ``./config.yaml``) every command works on the embedded demo community.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click
import pandas as pd

from billing.exports import invoices_csv
from billing.settlement import SettlementError, parse_period
from community import Community, ImportSummary
from config import ConfigError, load_config, prepare_data_dir
from ingest.csv_files import CsvFileError, parse_readings_csv, write_readings_csv

log = logging.getLogger("leg")

def _config_file(ctx, param, value):
    """``--config`` is taken wherever it is given (``app.py --config F token create`` or
    ``app.py token create --config F``); the one nearest the command wins."""
    if value is not None:
        ctx.meta["leg.config"] = value
    return ctx.meta.get("leg.config")


def _community_slug(ctx, param, value):
    """``--community`` like ``--config``: wherever it is given, the one nearest the command wins."""
    if value is not None:
        ctx.meta["leg.community"] = value
    return ctx.meta.get("leg.community")


# $LEG_CONFIG is read by config.load_config when no --config is given
_config_file_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
                                   callback=_config_file, expose_value=True,
                                   help="the configuration file (default: $LEG_CONFIG, ./config.yaml, else the demo)")
_community_option = click.option("--community", "community_slug", metavar="SLUG", callback=_community_slug,
                                 expose_value=False, help="the community (a slug under communities: of the file)")


def config_option(f):
    """``--config FILE`` and ``--community SLUG`` on a command or group."""
    return _config_file_option(_community_option(f))


def _config(config_path):
    ctx = click.get_current_context(silent=True)
    try:
        cfg = load_config(config_path, ctx.meta.get("leg.community") if ctx else None)
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    logging.basicConfig(level=cfg.logging.level, filename=cfg.logging.file,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.is_demo:
        cfg.storage.data_dir = str(Path(cfg.storage.data_dir) / "demo")
    try:
        prepare_data_dir(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    return cfg


# commands that need no more than the ledger, and so work while the app runs
BESIDE_THE_APP = "backup, export-readings, simulate, user, token and payment commands"


def _all_configs(config_path) -> dict:
    """Every community of the configuration (slug -> its configuration; one with slug None for a
    file without communities:), each data folder made ready."""
    from config import load_communities
    try:
        configs = load_communities(config_path)
        first = next(iter(configs.values()))
        logging.basicConfig(level=first.logging.level, filename=first.logging.file,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for cfg in configs.values():
            if cfg.is_demo:
                cfg.storage.data_dir = str(Path(cfg.storage.data_dir) / "demo")
            prepare_data_dir(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    return configs


def _refuse_if_running(cfg, what: str = "this command") -> None:
    """A one-line refusal when an app is running on the data folder and holds the embedded store
    (one process at a time); an InfluxDB server takes writers side by side (web and collector)."""
    from storage.backup import running_app
    if cfg.storage.backend == "influxdb":
        return
    control = running_app(cfg.data_dir)
    if control:
        pid = f" (pid {control['pid']})" if control.get("pid") else ""
        raise click.ClickException(f"the app is running{pid} on {cfg.data_dir} and holds the store: stop it "
                                   f"before {what} ({BESIDE_THE_APP} work beside it)")


def _open(config_path, cfg=None, what: str = "this command") -> Community:
    """The community with its ledger and store; a one-line reason when another process holds the
    store or a file cannot be opened."""
    import sqlite3

    import duckdb

    from storage.ledger import LedgerError
    cfg = cfg or _config(config_path)
    _refuse_if_running(cfg, what)
    try:
        return Community.open(cfg)
    except LedgerError as exc:                 # e.g. a ledger written by a newer release
        raise click.ClickException(str(exc))
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" not in text.lower():
            raise click.ClickException(f"the store {cfg.data_dir / 'timeseries.duckdb'} cannot be opened: {text}")
        import re
        pid = re.search(r"\(PID (\d+)\)", text)
        raise click.ClickException(
            f"another process{f' (pid {pid.group(1)})' if pid else ''} holds the store "
            f"{cfg.data_dir / 'timeseries.duckdb'} (the app or the collector): stop it before {what} "
            f"({BESIDE_THE_APP} work beside the app)")
    except duckdb.Error as exc:
        raise click.ClickException(f"the store {cfg.data_dir / 'timeseries.duckdb'} cannot be opened: {exc}")
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(f"the ledger {cfg.data_dir / 'ledger.sqlite'} cannot be opened: {exc}")


def _ledger(config_path, cfg=None):
    """The ledger alone: SQLite in WAL mode, safe beside the running app (which holds the
    time-series store). The registry is made to match the configuration first, unless an app is
    running on the data folder (it took the configuration at its start)."""
    import sqlite3

    from storage.backup import running_app
    from storage.ledger import Ledger, LedgerError
    cfg = cfg or _config(config_path)
    path = cfg.data_dir / "ledger.sqlite"
    try:
        ledger = Ledger(path)
    except LedgerError as exc:
        raise click.ClickException(str(exc))
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(f"the ledger {path} cannot be opened: {exc}")
    if not running_app(cfg.data_dir):
        try:
            ledger.sync_from_config(cfg)
        except BaseException:
            ledger.close()
            raise
    return ledger


@click.group(invoke_without_command=True)
@config_option
@click.pass_context
def cli(ctx, config_path):
    """LEG-Invoicing: meter data in, priced intervals, monthly invoices out."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run, config_path=config_path)


def _sigterm_stops() -> None:
    """From now on SIGTERM stops the command as Ctrl-C does: a KeyboardInterrupt in the main thread
    wherever it is, so the command's ``finally`` flushes and closes. Only the first one: a second
    SIGTERM does not break that clean stop (systemd sends SIGKILL after its stop timeout). A handler
    that sets an Event instead can deadlock with the main thread's own wait on that Event."""
    def terminate(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, terminate)


def _wait_for_signal(status=None, every_s: float = 60.0) -> None:
    """Block until SIGTERM or SIGINT; call ``status()`` every ``every_s`` seconds."""
    _sigterm_stops()
    try:
        while True:
            time.sleep(every_s)
            if status:
                status()
    except KeyboardInterrupt:
        pass


def _print_status(runtime) -> None:
    st = runtime.pipeline.status()
    accepted = sum(s.accepted for s in st.values())
    rejected = sum(s.rejected_total for s in st.values())
    unknown = runtime.pipeline.unknown_meters()
    click.echo(f"{pd.Timestamp.now(tz=runtime.community.tz):%Y-%m-%d %H:%M:%S}: {accepted} readings accepted, "
               f"{rejected} rejected, {len(unknown)} unknown meter(s), queue {runtime.pipeline.queued}")


@cli.command()
@config_option
@click.option("--once", is_flag=True, help="start ingest, print the settlements, stop (no web server)")
@click.option("--debug", is_flag=True, help="Flask's development server with reloading (never in production)")
@click.option("--no-ingest", is_flag=True, help="only the web app (InfluxDB deployments with a collector of their own)")
@click.option("--threads", type=int, default=8, show_default=True, help="web server worker threads")
def run(config_path, once, debug, no_ingest, threads):
    """Run the app: the web app on web.host:web.port, ingest (MQTT; the in-process simulator in the demo).
    With several communities and no --community: all of them in one app."""
    from ingest.runtime import IngestRuntime
    if not click.get_current_context().meta.get("leg.community"):
        configs = _all_configs(config_path)
        if len(configs) > 1:
            return _run_many(configs, config_path, once, debug, no_ingest, threads)
    community = _open(config_path, what="starting it again")
    cfg = community.cfg
    read_only = cfg.storage.backend == "influxdb" and cfg.influxdb.mode == "read_only"
    if no_ingest and cfg.storage.backend != "influxdb":
        community.close()
        raise click.ClickException("--no-ingest needs storage.backend: influxdb (the embedded store has one "
                                   "writing process: run the app with its ingest)")
    runtime = None if (read_only or no_ingest) else IngestRuntime(community, simulate=cfg.is_demo)

    _sigterm_stops()                                  # SIGTERM at any point: stop cleanly (finally below)
    try:
        if runtime:
            runtime.start()
        elif read_only:
            click.echo("influxdb.mode is read_only: settling from the house_energy another collector writes")
        else:
            click.echo("web app only: the collector (python app.py collect) ingests")
        if cfg.is_demo:
            click.echo(f"demo: {len(community.houses())} simulated houses publishing every 10 s; "
                       f"history in {cfg.data_dir}")
        for period_id in reversed(community.recent_periods(2)):
            _print_settlement(community.settle(period_id, allow_incomplete=True))
        if once:
            return
        from web import create_app
        accounts = _first_accounts(community)
        app = create_app(community, runtime, accounts)
        _control_routes(app)
        app.server.config["LEG_CONTROL_SECRET"] = _write_controls(app, {None: cfg})
        _serve(app, cfg, debug, threads)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping: writing buffered readings" if runtime else "stopping")
        from storage.backup import remove_control
        remove_control(cfg.data_dir)
        if runtime:
            runtime.stop()
        community.close()


def _write_controls(app, configs: dict) -> str:
    """data_dir/control.json of every community (slug -> config; {None: cfg} for one): where the
    commands on this host reach the running app for that community, and the app's one secret."""
    import secrets

    from storage.backup import write_control
    secret = secrets.token_urlsafe(32)
    for slug, cfg in configs.items():
        local = "127.0.0.1" if cfg.web.host in ("0.0.0.0", "::", "") else cfg.web.host
        root = f"http://{local}:{cfg.web.port}{app.config.url_base_pathname}"
        api, base = (f"{root}api/", root) if slug is None else (f"{root}api/c/{slug}/", f"{root}c/{slug}/")
        write_control(cfg.data_dir, f"{api}backup", base, secret)
    return secret


def _serve(app, cfg, debug: bool, threads: int) -> None:
    """Serve the web app on web.host:web.port until Ctrl-C or SIGTERM."""
    url = f"http://{cfg.web.host}:{cfg.web.port}{app.config.url_base_pathname}"
    click.echo(f"web app on {url}; stop with Ctrl-C")
    if debug:
        app.run(host=cfg.web.host, port=cfg.web.port, debug=True, use_reloader=False)
        return
    import waitress
    proxy = ({"trusted_proxy": cfg.web.trusted_proxy, "trusted_proxy_headers":
              {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}} if cfg.web.trusted_proxy else {})
    try:
        waitress.serve(app.server, host=cfg.web.host, port=cfg.web.port, threads=threads, **proxy)
    except KeyboardInterrupt:
        pass


def _run_many(configs: dict, config_path, once: bool, debug: bool, no_ingest: bool, threads: int) -> None:
    """Every community of the file in one process (instance.py): a community each, one MQTT
    subscription routed by meter id, one web app with a community switcher, instance accounts."""
    from ingest.runtime import IngestRuntime
    from instance import PipelineRouter, instance_dir, open_accounts, pipeline_group
    from web import Services, create_app
    first = next(iter(configs.values()))
    if no_ingest and first.storage.backend != "influxdb":
        raise click.ClickException("--no-ingest needs storage.backend: influxdb (the embedded store has one "
                                   "writing process: run the app with its ingest)")
    read_only = first.storage.backend == "influxdb" and first.influxdb.mode == "read_only"
    communities, runtimes, mqtt = {}, {}, None
    accounts_ledger = None

    _sigterm_stops()
    group = pipeline_group()                         # one ingest thread for every community
    try:
        for slug, cfg in configs.items():
            communities[slug] = _open(config_path, cfg, what="starting it again")
            if not (read_only or no_ingest):
                runtimes[slug] = IngestRuntime(communities[slug], mqtt=False,
                                               pipeline_options={"group": group}).start()
        if runtimes and first.mqtt.enabled:
            from ingest.mqtt_process import MqttProcessSource
            router = PipelineRouter(runtimes).start()
            mqtt = MqttProcessSource(first.mqtt, router, anchors_path=instance_dir(configs) / "sensor_clock.json").start()
            for rt in runtimes.values():
                rt.mqtt = mqtt                       # health and the Meters page show the one connection
        click.echo(f"{len(communities)} communities: {', '.join(communities)}")
        for slug, c in communities.items():
            for period_id in reversed(c.recent_periods(2)):
                click.echo(f"[{slug}]", nl=False)
                _print_settlement(c.settle(period_id, allow_incomplete=True))
        if once:
            return
        accounts_ledger, accounts = open_accounts(configs)
        import os

        from auth.accounts import bootstrap_manager
        made = bootstrap_manager(accounts, os.environ)
        if made:
            click.echo(f"first start: manager account {made[0]!r} with password {made[1]} "
                       "(shown only now; change it under your name in the menu)")
        services = {slug: Services(c, runtimes.get(slug), slug=slug) for slug, c in communities.items()}
        app = create_app(next(iter(communities.values())), None, accounts, instance=services,
                         secret_dir=instance_dir(configs))
        _control_routes(app)
        app.server.config["LEG_CONTROL_SECRET"] = _write_controls(app, configs)
        _serve(app, first, debug, threads)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping: writing buffered readings" if runtimes else "stopping")
        from storage.backup import remove_control
        for cfg in configs.values():
            remove_control(cfg.data_dir)
        if mqtt:
            mqtt.stop()
        for rt in runtimes.values():
            rt.mqtt = None
            rt.stop()
        for c in communities.values():
            c.close()
        if accounts_ledger is not None:
            accounts_ledger.close()


@cli.command()
@config_option
def collect(config_path):
    """Run only the ingest (MQTT into the store), e.g. beside a separate web server."""
    from ingest.runtime import IngestRuntime
    from ingest.connections import Connections
    community = _open(config_path, what="collecting")
    cfg = community.cfg
    polled = sorted(Connections(community, None).wanted())
    if not cfg.mqtt.enabled and not cfg.sdat.inbox and not polled:
        community.close()
        raise click.ClickException("there is nothing to collect: mqtt.enabled is false, sdat.inbox is not set and "
                                   "no meter is polled or listened to (Loxone HTTP or UDP, Modbus)")
    if community.cfg.storage.backend == "influxdb" and community.cfg.influxdb.mode == "read_only":
        community.close()
        raise click.ClickException("influxdb.mode is read_only: another collector writes the data")
    runtime = IngestRuntime(community)
    _sigterm_stops()                                  # also while starting: the finally flushes
    try:
        runtime.start()
        sources = ([f"MQTT {cfg.mqtt.broker}:{cfg.mqtt.port} topic {cfg.mqtt.topic}"] if cfg.mqtt.enabled else []) \
            + ([f"SDAT-CH inbox {cfg.sdat.inbox}"] if cfg.sdat.inbox else []) \
            + ([f"{len(polled)} Loxone or Modbus connection(s)"] if polled else [])
        click.echo(f"collecting from {', '.join(sources)}; stop with SIGTERM")
        _wait_for_signal(lambda: _print_status(runtime))
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping: writing buffered readings")
        runtime.stop()
        community.close()


@cli.command()
@click.option("--broker", help="host[:port] of the MQTT broker (default: the config's mqtt section)")
@click.option("--seed", type=int, default=1, show_default=True, help="random seed (deterministic profiles)")
@click.option("--offset-months", type=int, default=0, show_default=True,
              help="follow the sun and season this many months ahead")
@click.option("--backfill", type=click.FloatRange(min=0), default=0,
              help="first write this many days of history to the store (through the running app if one runs)")
@click.option("--all-houses", is_flag=True, help="simulate every house, not only type: simulated")
@click.option("--interval", type=click.FloatRange(min=0.1), default=10, show_default=True,
              help="seconds between messages")
@config_option
def simulate(broker, seed, offset_months, backfill, all_houses, interval, config_path):
    """Publish simulated smart meters ({MAC}/SENSOR, section 8.3 format) to an MQTT broker."""
    import paho.mqtt.client as mqtt
    from simulator.live import HouseSimulator, SimulatorThread
    from simulator.profiles import profiles_for
    cfg = _config(config_path)
    profiles = profiles_for(cfg.houses, only_simulated=not all_houses)
    if not profiles:
        raise click.ClickException("no house has type: simulated (use --all-houses)")
    host, port = cfg.mqtt.broker, cfg.mqtt.port
    if broker:
        host, _, p = broker.partition(":")
        if p and not (p.isdigit() and 1 <= int(p) <= 65535):
            raise click.ClickException(f"--broker: {p!r} is not a port number (1-65535)")
        port = int(p) if p else 1883
    if backfill:
        request = {"days": backfill, "seed": seed, "offset_months": offset_months, "all_houses": all_houses}
        answer = _ask_app(cfg, "POST", "backfill", json=request)
        if answer is not None:
            n = answer.json()["readings"]
        else:
            community = _open(config_path, cfg, what="backfilling")
            try:
                n = _backfill(community, **request)
            except RuntimeError as exc:             # an unreadable simulator state
                raise click.ClickException(str(exc))
            finally:
                community.close()
        if n:
            click.echo(f"backfilled {n} readings ({backfill:g} days)" + (" through the running app" if answer else ""))
    try:
        sim = HouseSimulator(profiles, cfg.tz, cfg.data_dir / "simulator_state.json", seed, offset_months)
    except RuntimeError as exc:
        raise click.ClickException(str(exc))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"leg-simulator-{seed}")
    if cfg.mqtt.username and not broker:
        client.username_pw_set(cfg.mqtt.username, cfg.mqtt.password)
    if cfg.mqtt.use_tls and not broker:
        client.tls_set()
    client.reconnect_delay_set(1, 60)
    thread = SimulatorThread(sim, lambda mac, payload: client.publish(f"{mac}/SENSOR", payload, qos=1),
                             interval_s=interval)
    _sigterm_stops()                                  # from here a SIGTERM still saves the counters
    try:
        client.connect_async(host, port)
        client.loop_start()
        thread.start()
        click.echo(f"publishing {len(profiles)} houses to {host}:{port} every {interval:g} s; stop with Ctrl-C")
        _wait_for_signal()
    except KeyboardInterrupt:
        pass
    finally:
        thread.stop()
        client.disconnect()
        client.loop_stop()


def _backfill(community, days: float, seed: int, offset_months: int, all_houses: bool) -> int:
    """``days`` of simulated history, up to now, of the simulated houses that have no simulator
    state yet, written to the store (their counters then continue from its end); how many readings."""
    from simulator.live import HouseSimulator
    from simulator.profiles import profiles_for
    cfg = community.cfg
    sim = HouseSimulator(profiles_for(cfg.houses, only_simulated=not all_houses), cfg.tz,
                         cfg.data_dir / "simulator_state.json", seed, offset_months)
    history = sim.backfill(days, pd.Timestamp.now(tz="UTC"))
    if len(history):
        community.store_readings(history)
    return len(history)


def _ask_app(cfg, method: str, name: str, **request):
    """The running app's answer to a request to its control endpoint ``control/<name>``, or None
    when no app runs on the data folder; a refusal, or an app that does not answer, is a one-line
    error."""
    import requests

    from storage.backup import running_app
    control = running_app(cfg.data_dir)
    if not control or not control.get("base"):
        return None
    try:
        r = requests.request(method, f"{control['base']}control/{name}", timeout=600,
                             headers={"X-Control-Secret": control["secret"]}, **request)
    except requests.ConnectionError:
        raise click.ClickException(f"the app (pid {control.get('pid', '?')}) runs on {cfg.data_dir} but does "
                                   f"not answer at {control['base']}: try again once it has started")
    if r.status_code >= 400:
        try:
            reason = r.json().get("error")
        except ValueError:
            reason = r.text[:200]
        raise click.ClickException(f"the running app (pid {control.get('pid', '?')}) answered {r.status_code}: {reason}")
    return r


def _control_routes(app) -> None:
    """What commands on this host ask of the running app, because it holds the store (beside
    ``api/backup``): ``control/readings`` (export-readings) and ``control/backfill`` (simulate
    --backfill). Only from the loopback address, with the secret of data_dir/control.json; with
    several communities at ``c/<slug>/control/...`` (the community's control.json says so)."""
    import io

    import flask

    from auth.web import access
    from ingest.pipeline import describe_store_error
    from web import current
    base = app.config.url_base_pathname

    def failed(exc, status=503):
        log.error("control request %s failed: %s", flask.request.path, exc)
        return flask.jsonify({"error": describe_store_error(exc)}), status

    @access("control")
    def readings():
        args = flask.request.args
        try:
            start, end = (pd.Timestamp(args[k]) if args.get(k) else None for k in ("start", "end"))
            if any(t is not None and t.tzinfo is None for t in (start, end)):
                raise ValueError("start and end need a UTC offset")
        except ValueError as exc:
            return flask.jsonify({"error": f"start/end: {exc}", "field": "start"}), 400
        try:
            frame = current().community.store.read_readings(args.get("meter") or None, start, end)
        except Exception as exc:
            return failed(exc)

        def chunks(step=50_000):
            for i in range(0, max(len(frame), 1), step):
                buf = io.StringIO()
                write_readings_csv(frame.iloc[i:i + step], buf)
                text = buf.getvalue()
                yield text if i == 0 else text.split("\n", 1)[1]
        return flask.Response(chunks(), mimetype="text/csv", headers={"X-Readings": str(len(frame))})

    @access("control")
    def backfill():
        body = flask.request.get_json(silent=True)
        kinds = {"days": (int, float), "seed": int, "offset_months": int, "all_houses": bool}
        if not isinstance(body, dict) or set(body) != set(kinds) or any(
                not isinstance(body[k], t) or (isinstance(body[k], bool) and t is not bool) for k, t in kinds.items()):
            return flask.jsonify({"error": "give days, seed, offset_months and all_houses", "field": "body"}), 400
        try:
            n = _backfill(current().community, **body)
        except RuntimeError as exc:
            return flask.jsonify({"error": str(exc), "field": "simulator_state"}), 409
        except Exception as exc:
            return failed(exc)
        return flask.jsonify({"readings": n}), 201

    app.server.add_url_rule(f"{base}control/readings", "control_readings", readings, methods=["GET"])
    app.server.add_url_rule(f"{base}control/backfill", "control_backfill", backfill, methods=["POST"])


@cli.command("import-readings")
@click.argument("file", type=click.Path(dir_okay=False))
@config_option
def import_readings(file, config_path):
    """Import meter readings from FILE (CSV: meter_id,timestamp,import_kwh,export_kwh). With several
    communities and no --community, each row goes to the community of its meter."""
    ctx = click.get_current_context()
    configs = None if ctx.meta.get("leg.community") else _all_configs(config_path)
    targets = list(configs.values()) if configs and len(configs) > 1 else [None]
    known: set[str] = set()
    if targets != [None]:                            # every community's meters, to route each row
        for cfg in targets:
            ledger = _ledger(config_path, cfg)
            try:
                known |= {m.meter_id for m in ledger.meters()}
            finally:
                ledger.close()
    summary = ImportSummary()
    for i, cfg in enumerate(targets):
        community = _open(config_path, cfg, what="importing")
        try:
            own = {m.meter_id for m in community.meters()}
            try:
                parsed = parse_readings_csv(file, community.tz, known or own)
            except CsvFileError as exc:
                raise click.ClickException(str(exc))
            if i == 0:                               # the file's own faults, reported once
                summary.rows, summary.errors = parsed.rows, [str(e) for e in parsed.errors]
            _import_rows(community, parsed, parsed.readings[parsed.readings["meter_id"].isin(own)], summary)
        finally:
            community.close()
    for e in sorted(summary.errors + summary.quarantined, key=_line_key):
        click.echo(f"{file}: {e}", err=True)
    click.echo(f"{file}: {summary.rows} rows: {summary.inserted} imported, {summary.duplicates} already "
               f"stored, {summary.rejected} rejected"
               + (f", {len(summary.quarantined)} quarantined" if summary.quarantined else ""))
    if summary.inserted + summary.duplicates == 0:
        sys.exit(1)


def _import_rows(community, parsed, readings, summary: ImportSummary) -> None:
    """Store ``readings`` (rows of ``parsed``) in ``community``; quarantined rows and conflicts go
    into ``summary`` with their line numbers."""
    result = community.store_readings(readings)
    summary.inserted += result.inserted
    summary.duplicates += result.duplicates
    if result.inserted:
        meters = set(readings["meter_id"])
        for q in community.store.read_quarantine().itertuples(index=False):
            line = parsed.lines.get((q.meter_id, pd.Timestamp(q.ts)))
            if q.meter_id in meters and line is not None:
                summary.quarantined.append(f"line {line}: quarantined, not billed: {q.reason}")
    for c in result.conflicts.itertuples(index=False):
        line = parsed.lines.get((c.meter_id, pd.Timestamp(c.ts)), "?")
        summary.errors.append(f"line {line}: meter {c.meter_id} at {c.ts.isoformat()} is already "
                              f"stored with other counter values; kept the stored reading")


@cli.command("import-sdat")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@config_option
def import_sdat(paths, config_path):
    """Import SDAT-CH metering data (E66 XML from the grid operator): files, or folders (every
    *.xml inside). Idempotent: per metering point, product and quarter hour the newest document wins."""
    from ingest.sdat_inbox import sdat_files
    files = sdat_files(paths)
    if not files:
        raise click.ClickException(f"no *.xml file in {', '.join(paths)}")
    community = _open(config_path, what="importing")
    imported = 0
    try:
        for f, summary in community.import_sdat_paths(files):
            for r in summary.refused:
                click.echo(f"{f}: refused: {r}", err=True)
            click.echo(summary.line(), err=summary.error is not None)
            imported += summary.imported_anything
    finally:
        community.close()
    if not imported:
        sys.exit(1)


class _LedgerOnly:
    """What commands that need only the ledger see of a community (``_ledger``)."""

    def __init__(self, cfg, ledger):
        self.cfg, self.tz, self.ledger = cfg, cfg.tz, ledger

    def close(self) -> None:
        self.ledger.close()


def _open_ledger(config_path) -> _LedgerOnly:
    cfg = _config(config_path)
    return _LedgerOnly(cfg, _ledger(config_path, cfg))


@cli.command("import-payments")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@config_option
def import_payments_cmd(files, config_path):
    """Import bank files (camt.054 notifications, camt.053 statements): payments whose reference
    names an issued invoice mark it paid or partially paid; the rest is listed. Idempotent."""
    from billing.payments import import_payments, open_items
    community = _open_ledger(config_path)
    ok = 0
    try:
        for f in files:
            result = import_payments(community, Path(f).name, Path(f).read_bytes(), "cli")
            click.echo(result.line(), err=result.error is not None)
            ok += result.error is None
        for t in open_items(community):
            click.echo(f"to assign by hand: {t['state']}: CHF {t['amount_chf']} reference {t['reference'] or '-'} "
                       f"({t['booking_date'] or '-'}, {t['debtor'] or '-'}, {t['file_name']}): transaction {t['tx_id']}")
    finally:
        community.close()
    if not ok:
        sys.exit(1)


@cli.command("assign-payment")
@click.argument("tx_id")
@click.argument("invoice_id")
@config_option
def assign_payment(tx_id, invoice_id, config_path):
    """Assign a listed bank credit (unmatched, or paid to a cancelled invoice; TX_ID as import-payments
    lists it) to an issued invoice by hand."""
    from storage.ledger import LedgerError
    community = _open_ledger(config_path)
    try:
        status = community.ledger.assign_bank_transaction(tx_id, invoice_id, "cli")
    except LedgerError as exc:
        raise click.ClickException(str(exc))
    finally:
        community.close()
    click.echo(f"{invoice_id}: {status.replace('_', ' ')}")


@cli.command()
@click.option("--period", required=True, help="a closed period: YYYY-MM, YYYY-Qn or YYYY")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True, help="folder for the files")
@config_option
def payouts(period, out, config_path):
    """Pay out the credits of a closed period: payouts-PERIOD.csv and a pain.001.001.09 credit
    transfer file (payouts-PERIOD.xml) for the houses with a credit and an IBAN."""
    from billing.payments import payouts as make_payouts
    community = _open_ledger(config_path)
    try:
        files = make_payouts(community, period)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    finally:
        community.close()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"payouts-{period}.csv").write_bytes(files.csv)
    if files.xml:
        (folder / f"payouts-{period}.xml").write_bytes(files.xml)
    click.echo(f"{period}: CHF {files.total_chf:.2f} to pay out" + (f" ({folder / f'payouts-{period}.xml'})" if files.xml else ""))
    for m in files.without_iban:
        click.echo(f"house {m['house_id']} ({m['name']}): credit CHF {m['amount_chf']} not paid out: no IBAN "
                   f"(houses.<key>.iban)", err=True)


@cli.command()
@click.option("--year", type=int, required=True, help="a calendar year with closed billing periods")
@click.option("--house", "houses", multiple=True, help="only this house id (repeatable; default: every house)")
@click.option("--language", type=click.Choice(["de", "fr", "it", "en"]),
              help="the PDFs' language (default: each house's, else the community's)")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True, help="folder for the files")
@config_option
def statements(year, houses, language, out, config_path):
    """Annual statements: per house, the year's invoices and credit notes and its energy by month,
    as statement-YEAR-house-H.pdf and .csv."""
    from billing import statements as st_mod
    community = _open(config_path, what="making statements")
    try:
        try:
            made = st_mod.statements(community, year, list(houses) or None)
        except ValueError as exc:
            raise click.ClickException(str(exc))
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for st in made:
            (folder / st_mod.csv_name(st)).write_bytes(st_mod.statement_csv(st))
            (folder / st_mod.pdf_name(st)).write_bytes(st_mod.statement_pdf(community, st, language))
            click.echo(f"house {st.house_id} ({st.house_name}): {len(st.months)} months, "
                       f"{len(st.invoices)} invoices -> {folder / st_mod.pdf_name(st)}")
    finally:
        community.close()


def _line_key(msg: str):
    try:
        return int(msg.split(":", 1)[0].split()[1])
    except (IndexError, ValueError):
        return 0


@cli.command("export-readings")
@click.option("--meter", help="only this meter")
@click.option("--start", help="from this time (ISO 8601; local time without an offset)")
@click.option("--end", help="until this time, exclusive")
@click.option("--out", type=click.Path(dir_okay=False), help="file to write (default: standard output)")
@config_option
def export_readings(meter, start, end, out, config_path):
    """Write stored readings as CSV in the import format (through the running app if one runs)."""
    from ingest.csv_files import parse_timestamp
    from ingest.readings import ReadingError
    cfg = _config(config_path)
    try:
        s = pd.Timestamp(parse_timestamp(start, cfg.tz)) if start else None
        e = pd.Timestamp(parse_timestamp(end, cfg.tz)) if end else None
    except ReadingError as exc:
        raise click.ClickException(str(exc).replace("timestamp", "--start/--end", 1))
    answer = _ask_app(cfg, "GET", "readings", stream=True, params={
        "meter": meter or "", "start": s.isoformat() if s is not None else "",
        "end": e.isoformat() if e is not None else ""})
    if answer is not None:
        import requests
        n = int(answer.headers.get("X-Readings", 0))
        try:
            with (open(out, "wb") if out else nullcontext(sys.stdout.buffer)) as fh:
                for chunk in answer.iter_content(chunk_size=1 << 16):
                    fh.write(chunk)
        except requests.RequestException as exc:
            raise click.ClickException(f"the running app stopped sending the readings: {exc}")
    else:
        community = _open(config_path, cfg, what="exporting")
        try:
            readings = community.store.read_readings(meter, s, e)
        finally:
            community.close()
        with (open(out, "w", encoding="utf-8", newline="") if out else nullcontext(sys.stdout)) as fh:
            n = write_readings_csv(readings, fh)
    if out:
        click.echo(f"{out}: {n} readings", err=True)


@cli.group()
@config_option
def tariffs(config_path):
    """List or add tariff versions (ct/kWh)."""


@tariffs.command("list")
@config_option
def tariffs_list(config_path):
    """Every tariff version, oldest first."""
    community = _open(config_path, what="listing tariffs")
    try:
        versions = community.ledger.tariff_versions()
    finally:
        community.close()
    click.echo(f"{'effective from':<26} {'mode':<17} {'p_pv':>7} {'p_grid_del':>11} {'p_grid_con':>11}")
    for t in versions:
        click.echo(f"{t.effective_from.astimezone(community.tz).isoformat():<26} {t.mode:<17} "
                   f"{t.p_pv:>7g} {t.p_grid_del:>11g} {t.p_grid_con:>11g}")


@tariffs.command("add")
@click.option("--p-pv", type=float, required=True, help="PV delivery price, ct/kWh")
@click.option("--p-grid-del", type=float, required=True, help="grid delivery price, ct/kWh")
@click.option("--p-grid-con", type=float, required=True, help="grid consumption price, ct/kWh")
@click.option("--mode", type=click.Choice(["break_even", "static", "zev_proportional", "leg"]), default=None,
              help="pricing mode (default: the current version's)")
@click.option("--effective-from", help="ISO 8601 time (local without an offset); default now")
@click.option("--p-con", type=float, default=None, help="mode leg: what consumers pay for their LEG share (default p_pv)")
@config_option
def tariffs_add(p_pv, p_grid_del, p_grid_con, mode, effective_from, p_con, config_path):
    """Add a tariff version, in force from --effective-from."""
    from ingest.csv_files import parse_timestamp
    from ingest.readings import ReadingError
    from pricing.tariffs import Tariff, TariffError
    community = _open(config_path, what="adding a tariff")
    try:
        try:
            eff = parse_timestamp(effective_from, community.tz) if effective_from else community.clock()
        except ReadingError as exc:
            raise click.ClickException(str(exc).replace("timestamp", "--effective-from", 1))
        mode = mode or community.ledger.tariff_versions()[-1].mode
        try:
            tariff = Tariff(p_pv, p_grid_del, p_grid_con, mode, eff, p_con)
            community.add_tariff(tariff, created_by="cli")
        except (TariffError, SettlementError) as exc:
            raise click.ClickException(str(exc))
    finally:
        community.close()
    click.echo(f"tariff version added, in force from {eff.astimezone(community.tz).isoformat()}")


@cli.command()
@click.option("--period", required=True, help="the billing period in the community time zone: YYYY-MM (month), YYYY-Qn (quarter) or YYYY (year), as community.billing_period says")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True,
              help="directory for invoices.csv")
@click.option("--close", is_flag=True, help="issue the invoices (numbered, immutable) and close the period")
@click.option("--allow-incomplete", is_flag=True, help="bill only the intervals present when data is missing")
@config_option
def settle(period, out, close, allow_incomplete, config_path):
    """Settle a period: one invoice per house, written to OUT/invoices.csv and OUT/<invoice>.pdf."""
    from billing import lifecycle
    community = _open(config_path, what="settling")
    try:
        try:
            parse_period(period, community.tz)
            if close:
                s = lifecycle.close_period(community, period, "cli", _progress_echo, allow_incomplete=allow_incomplete)
            else:
                s = community.settle(period, allow_incomplete=allow_incomplete)
            pdfs = lifecycle.period_pdfs(community, s, _progress_echo)
        except SettlementError as exc:
            raise click.ClickException(str(exc))
    finally:
        community.close()
    path = Path(out) / "invoices.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(invoices_csv(s.invoices))
    for name, pdf in pdfs.items():
        (Path(out) / name).write_bytes(pdf)
    _print_settlement(s)
    click.echo(f"wrote {path} and {len(pdfs)} PDFs")


def _first_accounts(community):
    """The accounts; on a first start a manager (LEG_ADMIN_USER / LEG_ADMIN_PASSWORD, or a random
    password printed once). The demo has a manager and one member per house, with new passwords
    printed at every start."""
    import os

    from auth.accounts import Accounts, bootstrap_manager, new_password
    accounts = Accounts(community.ledger)
    if community.cfg.is_demo:
        click.echo("demo accounts (new passwords at every start of the demo):")
        users = {u["username"] for u in accounts.users()}
        for name, role, houses in [("admin", "manager", [])] + [
                (f"house{h.house_id}", "member", [h.house_id]) for h in community.houses()]:
            password = new_password()
            if name in users:
                accounts.set_password(name, password, by="demo start")
            else:
                accounts.add_user(name, password, role, houses, by="demo start")
            click.echo(f"  {name:<10} {password}   ({role}{' of house ' + houses[0] if houses else ''})")
        return accounts
    made = bootstrap_manager(accounts, os.environ)
    if made:
        click.echo(f"first start: manager account {made[0]!r} with password {made[1]} "
                   "(shown only now; change it under your name in the menu)")
    return accounts


def _accounts(config_path):
    """The ledger and its accounts: user and token commands need no more, so they work while the
    app runs. With several communities, the instance's accounts (instance.py)."""
    from auth.accounts import Accounts
    configs = _all_configs(config_path)
    if len(configs) > 1:
        from instance import open_accounts
        return open_accounts(configs)
    ledger = _ledger(config_path)
    return ledger, Accounts(ledger)


def _qualified(config_path, houses: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(houses, communities) of a new account: with several communities, a member's houses are
    those of --community (``<slug>:<id>``) and a manager given --community is kept to it."""
    slug = click.get_current_context().meta.get("leg.community")
    if len(_all_configs(config_path)) <= 1:
        return list(houses), []
    if houses and not slug:
        raise click.ClickException("--community: name the community of the member's houses")
    return [f"{slug}:{h}" for h in houses], ([slug] if slug and not houses else [])


@cli.command()
@click.argument("dest", type=click.Path(file_okay=False))
@config_option
def backup(dest, config_path):
    """Write a consistent snapshot of the ledger and the embedded store into DEST (an empty or new
    folder), also while the app runs (it takes the snapshot itself)."""
    import requests

    from storage.backup import BackupError, running_app, snapshot
    cfg = _config(config_path)
    control = running_app(cfg.data_dir)         # None when the app that wrote control.json is gone
    if control:
        try:
            r = requests.post(control["url"], json={"dir": str(Path(dest).resolve())},
                              headers={"X-Control-Secret": control["secret"]}, timeout=600)
        except requests.ConnectionError:
            raise click.ClickException(f"the app (pid {control.get('pid', '?')}) runs on {cfg.data_dir} but does "
                                       f"not answer at {control['url']}: try again once it has started")
        if r.status_code != 201:
            raise click.ClickException(f"the running app refused: {r.json().get('error', r.text)}")
        manifest = r.json()
    else:
        community = _open(config_path, cfg, what="a backup")
        try:
            manifest = snapshot(community, dest)
        except BackupError as exc:
            raise click.ClickException(str(exc))
        finally:
            community.close()
    click.echo(f"backup in {dest}: ledger schema {manifest['ledger_schema']}, {manifest['issued_invoices']} "
               f"issued invoices, files: {', '.join(manifest['files'])}")


@cli.command()
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.option("--force", is_flag=True, help="replace a data folder that is not empty")
@config_option
def restore(src, force, config_path):
    """Bring the backup SRC back into storage.data_dir (stop the app first)."""
    from storage.backup import BackupError, restore as do_restore, running_app
    cfg = _config(config_path)
    control = running_app(cfg.data_dir)
    if control:
        raise click.ClickException(f"the app is running (pid {control.get('pid', '?')}) on {cfg.data_dir} "
                                   "(control.json); stop it first")
    try:
        manifest = do_restore(src, cfg.data_dir, force)
    except BackupError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"restored {len(manifest['files'])} files from {src} (taken {manifest['created_at']}) "
               f"into {cfg.data_dir}")


@cli.command("test-meter")
@click.argument("meter_id")
@click.option("--timeout", type=float, default=30, show_default=True, help="seconds to wait (UDP: for a datagram)")
@config_option
def test_meter(meter_id, timeout, config_path):
    """One read of a meter's connection: the value, or exactly what went wrong."""
    import registry
    community = _open(config_path, what="testing a meter")
    try:
        meter = community.ledger.meter(meter_id)
        if meter is None:
            raise click.ClickException(f"no meter {meter_id!r} (see the Meters page or meters: in config.yaml)")
        sample, error = registry.test_connection(meter, community.tz, timeout_s=timeout)
    finally:
        community.close()
    if error:
        raise click.ClickException(f"{meter_id}: {error}")
    parts = [f"import {sample.import_kwh} kWh" if sample.import_kwh is not None else "",
             f"export {sample.export_kwh} kWh" if sample.export_kwh is not None else ""]
    click.echo(f"{meter_id} ({meter.connection}): " + ", ".join(p for p in parts if p)
               + f" at {sample.ts_utc.astimezone(community.tz):%Y-%m-%d %H:%M:%S}")


@cli.group()
@config_option
def user(config_path):
    """Accounts: managers (everything) and members (their own houses)."""


@user.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["manager", "member"]), required=True)
@click.option("--house", "houses", multiple=True, help="a member's house id (repeat for several)")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input (else a random one is printed)")
@config_option
def user_add(username, role, houses, password_stdin, config_path):
    """Add an account (with several communities: a member's houses are in --community; a manager
    given --community manages that one only)."""
    qualified, communities = _qualified(config_path, houses)
    password = _with_password(config_path, password_stdin,
                              lambda a, pw: a.add_user(username, pw, role, qualified, by="cli",
                                                       communities=communities))
    click.echo(f"user {username} ({role}) added" + ("" if password_stdin else f"; password: {password}"))


@user.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="read the new password from standard input (else a random one is printed)")
@config_option
def user_passwd(username, password_stdin, config_path):
    password = _with_password(config_path, password_stdin, lambda a, pw: a.set_password(username, pw, by="cli"))
    click.echo(f"password of {username} changed" + ("" if password_stdin else f": {password}"))


def _with_password(config_path, password_stdin: bool, action) -> str:
    """Run ``action(accounts, password)`` with a password from standard input or a random one."""
    from auth.accounts import AccountError, new_password
    ledger, accounts = _accounts(config_path)
    try:
        password = sys.stdin.readline().rstrip("\n") if password_stdin else new_password()
        action(accounts, password)
    except AccountError as exc:
        raise click.ClickException(str(exc))
    finally:
        ledger.close()
    return password


@user.command("list")
@config_option
def user_list(config_path):
    ledger, accounts = _accounts(config_path)
    try:
        for u in accounts.users():
            click.echo(f"{u['username']:<24} {u['role']:<8} houses: {', '.join(u['houses']) or '-'}"
                       + (f"  communities: {', '.join(u['communities'])}" if u["communities"] else ""))
    finally:
        ledger.close()


@cli.group()
@config_option
def token(config_path):
    """API tokens (Authorization: Bearer <token>)."""


@token.command("create")
@click.option("--scope", type=click.Choice(["read", "write"]), required=True)
@click.option("--label", default="", help="what the token is for")
@config_option
def token_create(scope, label, config_path):
    """Print a new token (alone on the last line; it is not shown again)."""
    ledger, accounts = _accounts(config_path)
    try:
        text = accounts.create_token(scope, by="cli", label=label)
    finally:
        ledger.close()
    click.echo(f"{scope} token created; store it now, it cannot be shown again:")
    click.echo(text)


@token.command("revoke")
@click.argument("token_id")
@config_option
def token_revoke(token_id, config_path):
    """Revoke a token by its id (the part after leg_, or the whole token)."""
    from auth.accounts import AccountError
    ledger, accounts = _accounts(config_path)
    try:
        accounts.revoke_token(token_id, by="cli")
    except AccountError as exc:
        raise click.ClickException(str(exc))
    finally:
        ledger.close()
    click.echo(f"token {token_id.removeprefix('leg_').split('_')[0]} revoked")


def _progress_echo(done: int, total: int, message: str = "") -> None:
    if total and (done == total or done % 10 == 0):
        click.echo(f"  {message} ({done}/{total})", err=True)


def _print_settlement(s) -> None:
    p = s.period
    click.echo(f"\nPeriod {p.period_id} ({p.start_local:%Y-%m-%d} to {p.end_local_inclusive:%Y-%m-%d}, "
               f"{p.hours:.0f} h): {s.status}")
    if s.missing:
        click.echo("  provisional: missing intervals for house(s) "
                   + ", ".join(f"{h} ({n})" for h, n in s.missing.items()))
    click.echo(f"  {'invoice':<22} {'house':<8} {'in kWh':>10} {'out kWh':>10} {'cost ct':>12} "
               f"{'credit ct':>12} {'net CHF':>10}")
    for inv in s.invoices:
        click.echo(f"  {inv['invoice_id']:<22} {inv['house_id']:<8} {inv['energy_imported_kwh']:>10} "
                   f"{inv['energy_exported_kwh']:>10} {inv['import_cost_ct']:>12} "
                   f"{inv['export_revenue_ct']:>12} {inv['net_amount_chf']:>10}")
    if s.summary:
        sm = s.summary
        ss = f"{sm.self_sufficiency:.0%}" if sm.self_sufficiency is not None else "n/a"
        sc = f"{sm.self_consumption:.0%}" if sm.self_consumption is not None else "n/a"
        click.echo(f"  community: consumption {sm.total_consumption_kwh:.1f} kWh, production "
                   f"{sm.total_production_kwh:.1f} kWh, grid import {sm.grid_import_kwh:.1f} kWh, "
                   f"export {sm.grid_export_kwh:.1f} kWh; self-sufficiency {ss}, self-consumption {sc}, "
                   f"balance {round(sm.balance_ct / 100, 2) + 0.0:.2f} CHF")


def main() -> None:
    # data files (ledger, store, backups, invoices, exports) are readable by this user only
    os.umask(0o077)
    cli()


if __name__ == "__main__":
    main()
