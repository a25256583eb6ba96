"""``doorkeep server --site DIR``: run the central server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sdnotify import SystemdNotifier

from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.pki import OPERATOR, SERVER, check_transport, client_tls_context, pki_dir
from doorkeep.policy import PolicyError
from server.admin_cli import audit_show, audit_verify, cli_actor, retention_run, subject_erase, subject_export  # noqa: F401
from server.doctor import cli as doctor  # noqa: F401
from server.evidence import evidence_export  # noqa: F401
from server.replay import site_diff  # noqa: F401
from server.store_migrate import cli as store_migrate  # noqa: F401
from server.site_commands import site_export, site_history, site_import, site_rollback, site_show  # noqa: F401
from server.app import bootstrap
from server.errors import ServerError
from server.store_connection import describe_target
from server.store_url import open_store, resolve_store_url, store_present

log = logging.getLogger("doorkeep.server")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "worker", None):
        return run_worker(args)
    try:
        timeouts = _supervision_timeouts(args)
        bundle = load_site_dir(args.site)
        data = args.data or Path("var") / bundle.site.id
        warn_if_readable(bundle.dir / "people.toml", "it holds card numbers in clear")
        # --store, then $DOORKEEP_STORE_URL, then [store] url, else SQLite in --data (server/store_url.py)
        store_url = resolve_store_url(bundle.store, getattr(args, "store", None))
        server = bootstrap(bundle, data, broker_config(args), store_url=store_url, **timeouts)
    except (ConfigErrors, ConfigError, ServerError, PolicyError, ValueError) as exc:
        print(f"doorkeep server: {exc}", file=sys.stderr)
        return 2
    try:
        listener = metrics_listener(args, server)
    except ServerError as exc:
        print(f"doorkeep server: {exc}", file=sys.stderr)
        server.store.close()
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if listener is not None:
        listener.start()
        log.info("health and metrics on http://%s:%d/ (/healthz, /readyz, /metrics)", listener.host, listener.port)
    watcher = broker_log_watcher(args, server)
    log.info("server for site %s running; store in %s; Ctrl-C to stop", bundle.site.id,
             data if server.store.dialect == "sqlite" else f"PostgreSQL ({describe_target(store_url or '')}), "
                                                             f"files in {data}")
    notifier = SystemdNotifier()
    notifier.notify("READY=1")
    interval = _watchdog_interval()
    try:
        # Under systemd, ping the watchdog while the store thread is alive (events are being stored).
        while not stop.wait(interval or 3600):
            if interval and server.bus.healthy:
                notifier.notify("WATCHDOG=1")
    finally:
        notifier.notify("STOPPING=1")
        if watcher is not None:
            watcher.stop()
        if listener is not None:
            listener.stop()
        server.stop()
    return 0


#: ``doorkeep server --worker``'s exit status when it stopped because it could not confirm it still led (fencing,
#: server/workers.py): systemd's Restart=on-failure starts it again as a standby.
LOST_LEAD_EXIT = 3


def run_worker(args: argparse.Namespace) -> int:
    """``doorkeep server --worker NAME``: one of several workers on a PostgreSQL store (server/workers.py)."""
    from server.workers import Worker, WorkerError

    stop = threading.Event()
    lost = threading.Event()
    listeners: list[Any] = []

    def on_lost() -> None:  # from the worker's checker thread: nothing of this process may speak for the site
        lost.set()
        stop.set()

    def on_leader(server: Any) -> None:
        """Once leading: the health and metrics listener (a standby has no server to report on)."""
        try:
            listener = metrics_listener(args, server)
        except ServerError as exc:
            log.error("%s", exc)
            return
        if listener is not None:
            listener.start()
            listeners.append(listener)
            log.info("health and metrics on http://%s:%d/", listener.host, listener.port)

    try:
        timeouts = _supervision_timeouts(args)
        bundle = load_site_dir(args.site)
        data = args.data or Path("var") / bundle.site.id
        warn_if_readable(bundle.dir / "people.toml", "it holds card numbers in clear")
        worker = Worker(bundle, data, broker_config(args), args.worker, cli_store_url(args, bundle) or "",
                        on_lost=on_lost, on_leader=on_leader, **timeouts)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        worker.start()
    except (ConfigErrors, ConfigError, ServerError, WorkerError, PolicyError, ValueError) as exc:
        print(f"doorkeep server: {exc}", file=sys.stderr)
        return 2
    notifier = SystemdNotifier()
    notifier.notify("READY=1")
    interval = _watchdog_interval()
    try:
        while not stop.wait(interval or 3600):
            if interval and (worker.server is None or worker.server.bus.healthy):
                notifier.notify("WATCHDOG=1")
    finally:
        notifier.notify("STOPPING=1")
        if lost.is_set():
            # Not a word more on MQTT or to the store: another worker may lead already.
            logging.shutdown()
            os._exit(LOST_LEAD_EXIT)
        for listener in listeners:
            listener.stop()
        worker.stop()
    return 0


def cli_store_url(args: argparse.Namespace, bundle: Any) -> str | None:
    """``--store``, then ``$DOORKEEP_STORE_URL``, then site.toml ``[store] url`` (server/store_url.py); None: SQLite."""
    return resolve_store_url(bundle.store, getattr(args, "store", None))


def lead_first(args: argparse.Namespace, bundle: Any, data: Path) -> Any:
    """``doorkeep desk --worker NAME``: a worker (server/workers.py) that serves the desk only while it leads. A
    standby answers its share of the requests and waits; its port stays closed, so a proxy's health check finds the
    leader's desk. Returns the leading worker, or None when stopped while standing by. A leader that cannot confirm
    it leads exits at once (LOST_LEAD_EXIT), as ``doorkeep server --worker`` does."""
    from server.workers import Worker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def lost() -> None:  # nothing of this process may speak for the site any more
        logging.shutdown()
        os._exit(LOST_LEAD_EXIT)

    worker = Worker(bundle, data, broker_config(args), args.worker, cli_store_url(args, bundle) or "", on_lost=lost)
    worker.start()
    if not worker.leader:
        print(f"worker {args.worker} stands by for site {bundle.site.id}: it answers its share of the requests, and "
              "serves the desk once it leads", file=sys.stderr, flush=True)
    while not worker.promoted.wait(0.5):
        if stop.is_set():
            worker.stop()
            return None
    return worker


def metrics_listener(args: argparse.Namespace, server: Any) -> Any:
    """``--metrics-port PORT`` (``--metrics-host``, default loopback): the health and metrics listener
    (server/metrics.py MetricsHTTPServer), bound now but not started, so a port in use stops the command before
    anything runs (ServerError naming the fix); None without the flag."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    from server.metrics import MetricsHTTPServer

    try:
        return MetricsHTTPServer(server.metrics, args.metrics_host, port)
    except (OSError, OverflowError) as exc:
        raise ServerError(f"--metrics-port {port}: cannot listen on {args.metrics_host}: "
                          f"{getattr(exc, 'strerror', None) or exc} (fix: a free port, or another --metrics-host)") from None


def broker_log_watcher(args: argparse.Namespace, server: Any) -> Any:
    """``--broker-log FILE``: watch the broker's log for refused certificates (server/brokerlog.py); None without."""
    path = getattr(args, "broker_log", None)
    if path is None:
        return None
    from server.brokerlog import BrokerLogWatcher

    watcher = BrokerLogWatcher(path, server.store)
    watcher.start()
    return watcher


def broker_config(args: argparse.Namespace, identity: str = SERVER) -> BrokerConfig:
    """``--broker URL`` with, for ``mqtts://``, ``--ca/--cert/--key`` (default: the site's pki/ca.crt,
    pki/IDENTITY.crt and pki/IDENTITY.key, as ``doorkeep pki issue IDENTITY`` writes them; ``server`` for
    the server, ``operator`` for the command-line tools that run beside it).

    A plain ``mqtt://`` URL is refused (ConfigError naming the fix) unless ``--allow-plain-mqtt`` is given.
    """
    url = args.broker
    flags = {name: getattr(args, name, None) for name in ("ca", "cert", "key")}
    if not BrokerConfig(url).tls:
        given = [f"--{name}" for name, value in flags.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need a TLS broker URL (fix: --broker mqtts://HOST:8883)")
        plain = BrokerConfig(url, allow_plain=bool(getattr(args, "allow_plain_mqtt", False)))
        check_transport(plain)  # refused without the flag; the client logs the WARNING when it starts
        return plain
    pki = pki_dir(args.site)
    return BrokerConfig(url, ca_file=flags["ca"] or pki / "ca.crt", cert_file=flags["cert"] or pki / f"{identity}.crt",
                        key_file=flags["key"] or pki / f"{identity}.key")


def warn_if_readable(path: Path, why: str) -> bool:
    """Log a WARNING when group or others may read ``path``; True if so (docs/privacy.md)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return False
    if mode & 0o077:
        log.warning("%s is readable by group or others (mode %03o) and %s (fix: chmod 600 %s)", path, mode, why, path)
        return True
    return False


def _watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), or None when no watchdog is asked for."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def _supervision_timeouts(args: argparse.Namespace) -> dict[str, float]:
    """``--device-timeout S`` and ``--gap-timeout S`` (docs/alarms.md); absent flags keep the defaults."""
    out = {}
    for flag, name in (("device_timeout", "device_timeout_s"), ("gap_timeout", "gap_timeout_s")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if not value > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number of seconds, got {value}")
        out[name] = float(value)
    return out


#: seconds ``doorkeep door unlock`` / ``doorkeep lockdown`` wait for the edges' results
CLI_COMMAND_TIMEOUT_S = 5.0


def door_unlock(args: argparse.Namespace) -> int:
    """``doorkeep door unlock DOOR --site DIR``: a signed momentary unlock; prints the edge's result."""
    return _send_command(args, "door unlock",
                         lambda sender, actor: [sender.unlock(args.door, actor=actor, timeout=CLI_COMMAND_TIMEOUT_S)],
                         door=args.door)


def lockdown(args: argparse.Namespace) -> int:
    """``doorkeep lockdown on|off [--area AREA] --site DIR``: signed lockdown commands to the edges it covers.

    Only the edges hear it (at once): a running server's directory is not changed, so its decisions
    and the policy it publishes do not carry this lockdown; persistent lockdowns belong to the server.
    """
    scope = args.area or "site"
    return _send_command(args, "lockdown",
                         lambda sender, actor: sender.lockdown(scope, args.state == "on", actor=actor,
                                                               timeout=CLI_COMMAND_TIMEOUT_S, persist=False),
                         scope=scope)


def _send_command(args: argparse.Namespace, name: str, send: Any, *, door: str | None = None,
                  scope: str | None = None) -> int:
    """A short-lived MQTT client: sign with SITE/keys/policy-signing.key, publish, await ``cmd/result``.

    Exit 0 every result ok; 1 refused, failed, timed out or broker unreachable; 2 usage or configuration.
    Each command is first recorded in the server's audit log (``--data``), as ``cli:USER``.
    """
    from doorkeep.clock import SystemClock
    from doorkeep.policy import load_private_key
    from server.audit import AuditLog
    from server.commands import CommandSendError, CommandSender

    try:
        bundle = load_site_dir(args.site)
        key = load_private_key(bundle.dir / "keys" / "policy-signing.key")
        # The command client has an identity of its own, `operator` (the ACL: commands and their results only):
        # client ids are bound to certificates, so connecting as `server` would drop the running server.
        broker = broker_config(args, OPERATOR)
        tls = client_tls_context(broker)
    except (ConfigErrors, ConfigError, PolicyError, ValueError, IndexError) as exc:
        print(f"doorkeep {name}: {exc}", file=sys.stderr)
        return 2
    data = getattr(args, "data", None) or Path("var") / bundle.site.id
    store_url = resolve_store_url(bundle.store)  # the store the server uses (server/store_url.py)
    if not store_present(data, store_url):
        print(f"doorkeep {name}: no server store in {data}: a remote command is recorded in the server's audit log "
              "before it is sent (fix: pass the server's --data directory)", file=sys.stderr)
        return 2
    store = open_store(data, store_url)
    try:
        audit = AuditLog(store, SystemClock())
        door_devices = {d: dev.id for dev in bundle.devices.values() for d in dev.doors}
        sender = CommandSender(bundle.site, door_devices, key, SystemClock(), lambda t, p: None, audit=audit)
        try:
            if door is not None and door not in door_devices:
                raise CommandSendError(f"no door {door!r} on any device (known: {', '.join(sorted(door_devices))})")
            if scope is not None and not sender.devices_for(scope):
                raise CommandSendError(f"no device has a door into {scope!r}")
        except CommandSendError as exc:
            print(f"doorkeep {name}: {exc}", file=sys.stderr)
            return 2
        return _run_command(args, name, sender, send, bundle.site.id, broker, tls)
    finally:
        store.close()


def _run_command(args: argparse.Namespace, name: str, sender: Any, send: Any, site_id: str, broker: BrokerConfig,
                 tls: Any) -> int:
    """Connect, subscribe to the results, send as the operator running this command, print each result."""
    import json
    import uuid

    import paho.mqtt.client as mqtt

    from doorkeep.contract import CommandResult, Topics, parse_topic
    from doorkeep.errors import MessageError

    topics = Topics(site_id)
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"doorkeep-cli-{uuid.uuid4().hex}",
                         clean_session=True)

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            c.subscribe(topics.all_cmd_results(), qos=1)

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
            if topic.kind == "cmd_result":
                sender.on_result(topic.device, CommandResult.decode(msg.payload))
        except MessageError as exc:
            log.warning("dropped %s: %s", msg.topic, exc)

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    sender.publish = lambda topic, payload: client.publish(topic, payload, qos=1)
    if tls is not None:
        client.tls_set_context(tls)
    else:
        log.warning("doorkeep %s: plain MQTT without TLS to %s:%d: development only; anyone on the network "
                    "can read and forge door traffic", name, broker.host, broker.port)
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive)
    except OSError as exc:
        print(f"doorkeep {name}: cannot reach the broker at {args.broker}: {exc}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        if not subscribed.wait(CLI_COMMAND_TIMEOUT_S):
            print(f"doorkeep {name}: the broker at {args.broker} did not accept the subscription", file=sys.stderr)
            return 1
        results = send(sender, cli_actor())
    finally:
        client.disconnect()
        client.loop_stop()
    for result in results:
        print(json.dumps(result, sort_keys=True))
    return 0 if results and all(r["status"] == "ok" for r in results) else 1


def muster(args: argparse.Namespace) -> int:
    """Roll call from the server's store: who is in which area now, visitors with their hosts."""
    from datetime import datetime
    from zoneinfo import ZoneInfo


    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep muster: {exc}", file=sys.stderr)
        return 2
    site = bundle.site
    data = args.data or Path("var") / site.id
    store_url = resolve_store_url(bundle.store)
    if not store_present(data, store_url):
        print(f"doorkeep muster: no store in {data} (fix: pass the server's --data directory)", file=sys.stderr)
        return 2
    store = open_store(data, store_url)
    try:
        visitors = {v["id"]: v for v in store.visitor_records()}
        presence = sorted(store.all_presence(), key=lambda r: (r["area"], r["person"]))
        # The store holds the site's people (server/people.py); people.toml only until the server first ran.
        names = {pid: p.name for pid, p in bundle.people.items()}
        names.update({r["id"]: r["name"] for r in store.people_rows()})
    finally:
        store.close()
    tz = ZoneInfo(site.timezone)
    print(f"Muster for {site.name} — {datetime.now(tz):%Y-%m-%d %H:%M} {site.timezone}")
    inside = [r for r in presence if r["area"] != "outside"]
    for area_id in sorted({r["area"] for r in inside}):
        rows = [r for r in inside if r["area"] == area_id]
        area = site.areas.get(area_id)
        print(f"\n{area.name if area else area_id} ({len(rows)})")
        for r in rows:
            since = datetime.fromtimestamp(r["since"], tz).strftime("%H:%M")
            v = visitors.get(r["person"])
            if v is not None:
                host = names.get(v["host"], v["host"])
                print(f"  {v['name']:28} visitor, host {host}, since {since}")
            else:
                print(f"  {names.get(r['person'], r['person']):28} since {since}")
    print(f"\n{len(inside)} on site")
    return 0


def key_rotate(args: argparse.Namespace) -> int:
    """``doorkeep key rotate``: a new current site data key, every snapshot's key re-wrapped, the old one retired.

    Safe while the server runs: it reloads the key file when it changes, and each batch of re-wraps is one
    short transaction on the same store (docs/security.md, "Encryption at rest").
    """
    from doorkeep.envelope import DATA_KEYS_ENV, EnvelopeError, load_snapshot_keys
    from server.audit import AuditLog

    if os.environ.get(DATA_KEYS_ENV):
        print(f"doorkeep key rotate: the data keys come from ${DATA_KEYS_ENV}, which this command cannot change "
              f"(fix: keep them in SITE/keys/data-keys.json, or rotate them in your secret store)", file=sys.stderr)
        return 2
    try:
        bundle = load_site_dir(args.site)
        keys = load_snapshot_keys(bundle.dir / "keys", source=str(bundle.dir))
    except (ConfigErrors, ConfigError, EnvelopeError) as exc:
        print(f"doorkeep key rotate: {exc}", file=sys.stderr)
        return 2
    data = args.data or Path("var") / bundle.site.id
    store_url = resolve_store_url(bundle.store)
    if not store_present(data, store_url):
        print(f"doorkeep key rotate: no store in {data} (fix: pass the server's --data directory)", file=sys.stderr)
        return 2
    store = open_store(data, store_url, keys=keys)
    try:
        old = keys.keyring.current()[0]
        new = keys.keyring.rotate()
        print(f"new current data key {new} (was {old}); re-wrapping snapshot keys", flush=True)
        rewrapped, retired = store.rewrap_snapshot_keys()
        AuditLog(store).record(cli_actor(), "key.rotate", new,
                               {"previous": old, "rewrapped": rewrapped, "retired": retired})
    except (EnvelopeError, ServerError) as exc:
        print(f"doorkeep key rotate: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"re-wrapped {rewrapped} snapshot key(s); retired {', '.join(retired) or 'no key'}")
    return 0


# ------------------------------------------------------------------ backups (server/backup.py, docs/backups.md)


def backup(args: argparse.Namespace) -> int:
    """``doorkeep backup --site DIR [--data DIR] --to FILE [--recovery-key PUBFILE] [--with-keys]``: one online,
    encrypted backup while the server runs; exit 0 written, 1 it failed, 2 usage or configuration."""
    from server.backup import BackupError, create_backup, load_public_key, seal_keys

    if args.site is None or args.to is None:
        print("doorkeep backup: --site DIR and --to FILE are required", file=sys.stderr)
        return 2
    try:
        bundle = load_site_dir(args.site)
        if resolve_store_url(bundle.store) is not None:
            raise BackupError("the store is in PostgreSQL ([store] url or $DOORKEEP_STORE_URL) and this command copies "
                              "the SQLite store (fix: back the database up with pg_dump, or base backups with WAL "
                              "archiving: docs/backups.md \"PostgreSQL\")")
        pub = args.recovery_key or bundle.backup.recovery_key
        if pub is None:
            raise BackupError("no recovery key: pass --recovery-key PUBFILE or set [backup] recovery_key in "
                              "site.toml (fix: `doorkeep backup keygen --out FILE` makes one)")
        recipient = load_public_key(pub)
        keys_to = load_public_key(args.keys_to) if args.keys_to else None
        passphrase = os.environ.get("DOORKEEP_BACKUP_PASSPHRASE") or None
        if args.with_keys and (keys_to is None) == (passphrase is None):
            raise BackupError("--with-keys needs exactly one of --keys-to PUBFILE (not the recovery key) or "
                              "$DOORKEEP_BACKUP_PASSPHRASE")
        if keys_to is not None and keys_to.public_bytes_raw() == recipient.public_bytes_raw():
            raise BackupError("--keys-to is the recovery key itself: seal the keys to another key, so one stolen "
                              "secret never opens both the data and the keys")
    except (ConfigErrors, ConfigError, BackupError) as exc:
        print(f"doorkeep backup: {exc}", file=sys.stderr)
        return 2
    data = args.data or Path("var") / bundle.site.id
    try:
        result = create_backup(data, args.to, site_id=bundle.site.id, recipient=recipient)
        print(result.line())
        if args.with_keys:
            out = args.to.with_name(args.to.name + ".keys")
            names = seal_keys(bundle.dir / "keys", out, recipient=keys_to, passphrase=passphrase)
            print(f"keys {out}: {', '.join(names)} (sealed to {'a passphrase' if passphrase else args.keys_to})")
    except (BackupError, ServerError, OSError) as exc:
        print(f"doorkeep backup: {exc}", file=sys.stderr)
        return 1
    return 0


def backup_keygen(args: argparse.Namespace) -> int:
    """``doorkeep backup keygen --out FILE``: FILE.key (private, keep offline) and FILE.pub (for the server)."""
    from server.backup import generate_recovery_key

    if args.out is None:
        print("doorkeep backup keygen: --out FILE is required", file=sys.stderr)
        return 2
    try:
        priv, pub, kid = generate_recovery_key(args.out)
    except FileExistsError as exc:
        print(f"doorkeep backup keygen: {exc} already exists; not overwriting a key", file=sys.stderr)
        return 1
    print(f"wrote {priv} (mode 0600: keep it OFFLINE, e.g. on paper or a safe's USB stick: without it no backup "
          f"can be read) and {pub} (give it to the server: [backup] recovery_key); key id {kid}")
    return 0


def restore(args: argparse.Namespace) -> int:
    """``doorkeep restore FILE --site DIR --to DATA --recovery-key PRIVFILE``: restore into a new directory and
    verify it; exit 0 restored and verified, 1 refused or not verified (one line saying why), 2 usage."""
    from server.backup import BackupError, load_private_key, open_keys, restore_backup

    try:
        bundle = load_site_dir(args.site)
        private = load_private_key(args.recovery_key)
    except (ConfigErrors, ConfigError, BackupError) as exc:
        print(f"doorkeep restore: {exc}", file=sys.stderr)
        return 2
    try:
        report = restore_backup(args.file, args.to, site_id=bundle.site.id, private=private)
    except (BackupError, ServerError, OSError) as exc:
        print(f"doorkeep restore: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    print(f"restored into {args.to} in {report.seconds:.2f} s; start the server with --data {args.to}")
    if args.keys is not None:
        try:
            keys_key = load_private_key(args.keys_key) if args.keys_key else None
            files = open_keys(args.keys, private=keys_key, passphrase=os.environ.get("DOORKEEP_BACKUP_PASSPHRASE"))
            out = args.keys_out or args.to.with_name(args.to.name + "-keys")
            out.mkdir(mode=0o700, parents=True, exist_ok=False)
            for name, data in files.items():
                fd = os.open(out / Path(name).name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            print(f"keys: {', '.join(sorted(files))} written to {out} (mode 0600; move them to SITE/keys)")
        except (BackupError, OSError, ValueError) as exc:
            print(f"doorkeep restore: the data is restored, but the keys were not: {exc}", file=sys.stderr)
            return 1
    return 0
