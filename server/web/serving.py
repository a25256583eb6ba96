"""How the desk is served by uvicorn: forwarded headers are trusted only from the proxies named.

uvicorn's own defaults trust ``X-Forwarded-For`` and ``X-Forwarded-Proto`` from 127.0.0.1 (``proxy_headers``
on, ``FORWARDED_ALLOW_IPS`` defaulting to the loopback). On a desk host any local process, or anything another
local service relays, could then name any client address: failed logins would be counted for an address of its
choosing (splitting the throttle) and the audit log would record a forged client. So every place that serves
the desk (``doorkeep desk``, ``doorkeep demo``, the documented ``uvicorn --factory`` command) goes through
:func:`uvicorn_config`, which turns forwarded headers off unless the operator lists the proxy addresses
(``--forwarded-allow-ips``, docs/desk.md "Behind a reverse proxy").
"""

from __future__ import annotations

import ipaddress
from typing import Any


def parse_allow_ips(value: str | None) -> list[str]:
    """The proxy addresses or networks to trust, from a comma-separated list; ``*`` is refused (it would trust
    every client to name its own address). Raises ValueError naming the bad entry."""
    out: list[str] = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item == "*":
            raise ValueError("--forwarded-allow-ips '*' would let every client forge its address: name the proxy's "
                             "address (e.g. 127.0.0.1)")
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"--forwarded-allow-ips: {item!r} is not an IP address or network") from exc
        out.append(item)
    return out


SHUTDOWN_GRACE_S = 2.0
"""How long a stopping desk lets open responses finish before it cancels them. Every page holds a live stream
open (the alarm counter), which never finishes by itself: without a bound, uvicorn would wait for each browser
to go away before stopping (systemd would kill it at TimeoutStopSec)."""


def uvicorn_config(app: Any, *, host: str, port: int, forwarded_allow_ips: str | None = None,
                   **options: Any) -> Any:
    """A ``uvicorn.Config`` for the desk: proxy headers only from the listed addresses, none by default."""
    import uvicorn

    trusted = parse_allow_ips(forwarded_allow_ips)
    options.setdefault("timeout_graceful_shutdown", SHUTDOWN_GRACE_S)
    # uvicorn's own logging config would give its loggers plain-text handlers of their own; without it they reach
    # the handler the command set up, so --log-format json covers the desk's lines too (docs/operations.md#logs).
    options.setdefault("log_config", None)
    return uvicorn.Config(app, host=host, port=port, proxy_headers=bool(trusted),
                          forwarded_allow_ips=",".join(trusted) if trusted else "", server_header=False,
                          **options)


def end_live_streams(app: Any) -> None:
    """End the desk's open live streams (every page keeps one for the alarm counter) as it starts to stop, so
    stopping takes a moment rather than :data:`SHUTDOWN_GRACE_S`."""
    live = getattr(getattr(app, "state", None), "live", None)
    if live is not None:
        live.end_all()


def desk_server(config: Any) -> Any:
    """A ``uvicorn.Server`` for the desk (tests and tools; ``doorkeep desk`` adds systemd's notifications)."""
    import uvicorn

    class DeskServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            end_live_streams(self.config.app)
            await super().shutdown(sockets=sockets)

    return DeskServer(config)
