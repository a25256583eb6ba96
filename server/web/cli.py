"""``doorkeep user …`` (operator accounts and API tokens) and ``doorkeep desk`` (server + desk in one process).

Exit codes: 0 done, 1 refused (exists, unknown, no such token), 2 usage or configuration errors.
The user commands work while the server runs (SQLite WAL; each change is one short transaction).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from doorkeep.config import load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from server.admin_cli import UsageError, cli_actor
from server.errors import ServerError
from server.operators import (MIN_PASSWORD, OperatorConflict, OperatorError, OperatorExists, Operators,
                              UnknownOperator, check_password, operators_in)

log = logging.getLogger("doorkeep.server.desk")


@contextmanager
def _operators(args: argparse.Namespace, cmd: str) -> Iterator[Operators]:
    """The operator accounts in the server's store (``--data``, default var/SITE; created if new)."""
    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        raise UsageError(f"doorkeep {cmd}: {exc}") from exc
    data = args.data or Path("var") / bundle.site.id
    with ExitStack() as stack:
        try:
            ops = stack.enter_context(operators_in(data, site_dir=bundle.dir))
        except ServerError as exc:
            raise UsageError(f"doorkeep {cmd}: {exc}") from exc
        yield ops


def _run(cmd: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (UnknownOperator, OperatorExists, OperatorConflict) as exc:
        print(f"doorkeep {cmd}: {exc}", file=sys.stderr)
        return 1
    except OperatorError as exc:  # a bad name, role, label or password: usage
        print(f"doorkeep {cmd}: {exc}", file=sys.stderr)
        return 2


def read_password(args: argparse.Namespace, stdin: TextIO | None = None) -> str:
    """The new password: one line of stdin with ``--password-stdin``, else asked twice without echo."""
    if args.password_stdin:
        line = (stdin or sys.stdin).readline()
        password = line[:-1] if line.endswith("\n") else line
        check_password(password)
        return password
    if not sys.stdin.isatty():
        raise UsageError("doorkeep user add: no terminal to ask for the password "
                     "(fix: pipe it in with --password-stdin)")
    print(f"Choose a password of at least {MIN_PASSWORD} characters (a few unrelated words work well).",
          file=sys.stderr)
    first = getpass.getpass("Password: ")
    check_password(first)
    if getpass.getpass("Password again: ") != first:
        raise OperatorError("the two passwords differ; nothing was changed")
    return first


def user_add(args: argparse.Namespace) -> int:
    """``doorkeep user add NAME --role ROLE --site DIR``: a new operator account."""
    def body() -> int:
        with _operators(args, "user add") as ops:
            password = read_password(args)
            op = ops.add(args.name, args.role, password, actor=cli_actor())
        print(f"operator {op.name} added with role {op.role}; log in at the desk (doorkeep desk)")
        return 0
    return _run("user add", body)


def user_token(args: argparse.Namespace) -> int:
    """``doorkeep user token NAME --label L [--role ROLE] [--revoke]``: issue (printed once) or revoke."""
    def body() -> int:
        with _operators(args, "user token") as ops:
            if args.revoke:
                if not ops.revoke_token(args.name, args.label, actor=cli_actor()):
                    print(f"doorkeep user token: {args.name} has no live token labelled {args.label!r}",
                          file=sys.stderr)
                    return 1
                print(f"revoked {args.name}'s token {args.label!r}")
                return 0
            secret, token = ops.issue_token(args.name, args.label, role=args.role, actor=cli_actor())
        print(secret)
        print(f"token {token.id} ({token.label!r}, role {token.role}) for {token.operator}: shown this once; "
              "send it as 'Authorization: Bearer TOKEN'", file=sys.stderr)
        return 0
    return _run("user token", body)


def user_list(args: argparse.Namespace) -> int:
    """``doorkeep user list``: every operator, its role and state, and its live tokens (never their secrets)."""
    def body() -> int:
        with _operators(args, "user list") as ops:
            rows = [(op, [t for t in ops.tokens(op.name) if t.revoked_at is None]) for op in ops.all()]
        if not rows:
            print("no operators yet (fix: doorkeep user add NAME --role admin --site DIR)")
        for op, tokens in rows:
            created = datetime.fromtimestamp(op.created_at, timezone.utc).strftime("%Y-%m-%d")
            state = "active" if op.active else "disabled"
            labels = ", ".join(f"{t.label} ({t.role})" for t in tokens) or "-"
            print(f"{op.name:24} {op.role:8} {state:9} since {created}  tokens: {labels}")
        return 0
    return _run("user list", body)


def user_disable(args: argparse.Namespace) -> int:
    """``doorkeep user disable NAME``: the account, its sessions and its tokens stop working at once."""
    def body() -> int:
        with _operators(args, "user disable") as ops:
            changed = ops.disable(args.name, actor=cli_actor())
        print(f"operator {args.name} " + ("disabled" if changed else "was already disabled"))
        return 0
    return _run("user disable", body)


def desk(args: argparse.Namespace) -> int:
    """``doorkeep desk --site DIR``: the server (bus, store) and the security desk in one process."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        print(f"doorkeep desk: {exc} (fix: pip install -e .)", file=sys.stderr)
        return 2

    from doorkeep.policy import PolicyError
    from server.app import bootstrap
    from server.web.app import create_app
    from server.cli import broker_config, broker_log_watcher, cli_store_url, lead_first

    from server.web.serving import parse_allow_ips, uvicorn_config

    allow_ips = getattr(args, "forwarded_allow_ips", None)
    if allow_ips is None and getattr(args, "proxy_headers", False):
        allow_ips = "127.0.0.1,::1"  # the older flag: a proxy on this host
    try:
        parse_allow_ips(allow_ips)
    except ValueError as exc:
        print(f"doorkeep desk: {exc}", file=sys.stderr)
        return 2
    worker = None
    try:
        bundle = load_site_dir(args.site)
        data = args.data or Path("var") / bundle.site.id
        if getattr(args, "worker", None):
            worker = lead_first(args, bundle, data)
            if worker is None:
                return 0  # stopped while standing by
            assert worker.server is not None
            server = worker.server
        else:
            server = bootstrap(bundle, data, broker_config(args), store_url=cli_store_url(args, bundle))
    except (ConfigErrors, ConfigError, ServerError, PolicyError, ValueError) as exc:
        print(f"doorkeep desk: {exc}", file=sys.stderr)
        return 2
    watcher = None
    try:
        app = create_app(server)
        if worker is None:  # a worker's server started when it took the lead
            server.start()
        watcher = broker_log_watcher(args, server)
        print(f"security desk for site {bundle.site.id} on http://{args.host}:{args.port}/ (store in {data}); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        # Forwarded headers only from the proxies named (server/web/serving.py): by default nobody can name
        # another client address to the throttle or the audit log.
        config = uvicorn_config(app, host=args.host, port=args.port, log_level="warning",
                                forwarded_allow_ips=allow_ips)
        # uvicorn handles SIGINT / SIGTERM itself, then raises the signal again under the handler it found: with
        # the default one the process died right there, before the server below stopped its bus and store.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        _systemd_server(config, healthy=lambda: server.bus.healthy).run()
    finally:
        if watcher is not None:
            watcher.stop()
        if worker is not None:
            worker.stop()
        else:
            server.stop()
    return 0


def _systemd_server(config: Any, *, healthy: Callable[[], bool]) -> Any:
    """A uvicorn server that tells systemd (Type=notify, WatchdogSec=: firmware-config/systemd/doorkeep-desk.
    service) the desk is listening (READY=1) and pings the watchdog (WATCHDOG=1) from the event loop itself,
    while the server's store thread is alive: a hung loop or a dead store thread stops the pings and systemd
    restarts the desk, as it does `doorkeep server`. Without systemd every notification is a no-op."""
    import socket
    import time

    import uvicorn
    from sdnotify import SystemdNotifier

    from server.cli import _watchdog_interval
    from server.web.serving import end_live_streams

    notifier, interval = SystemdNotifier(), _watchdog_interval()

    class SystemdServer(uvicorn.Server):
        next_ping = 0.0

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                notifier.notify("READY=1")

        async def on_tick(self, counter: int) -> bool:
            now = time.monotonic()
            if interval and self.started and now >= self.next_ping and healthy():
                notifier.notify("WATCHDOG=1")
                self.next_ping = now + interval
            return await super().on_tick(counter)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            notifier.notify("STOPPING=1")
            end_live_streams(self.config.app)
            await super().shutdown(sockets=sockets)

    return SystemdServer(config)
