"""A real webhook receiver for the tests: http.server on a free 127.0.0.1 port, in a thread.

It checks every request's signature the way docs/operations.md "Webhooks" tells a receiver to, written out here
from the documented scheme alone (not with server.webhooks), so a server whose signing drifted from its own
documentation fails. It records every request and answers with what the test sets: a status per path, or
nothing at all (the connection is dropped).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    answered: int | None

    @property
    def delivery(self) -> str:
        return self.headers.get("x-doorkeep-delivery", "")

    @property
    def event(self) -> str:
        return self.headers.get("x-doorkeep-event", "")

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


def documented_check(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """The receiver's check, as docs/operations.md writes it: ``t=<unix>,v1=<hex>``; HMAC-SHA256 under the secret's
    UTF-8 bytes over ``b"<t>." + raw body``; constant-time compare; ``t`` within the replay window."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs(now - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


@dataclass
class WebhookReceiver:
    """Records requests; ``secrets[path]`` is the secret a path checks with; ``status[path]`` what it answers
    (default 200; None: drop the connection without an answer). ``now`` gives the receiver's clock (default real
    time; a test on a fake clock passes its own). ``hold``: while set to an unset Event, each request waits for it
    (at most 10 s) before answering: a receiver that hangs."""

    secrets: dict[str, str] = field(default_factory=dict)
    status: dict[str, int | None] = field(default_factory=dict)
    now: Any = time.time
    tls: ssl.SSLContext | None = None
    hold: threading.Event | None = None
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                secret = receiver.secrets.get(self.path)
                ok = secret is not None and documented_check(secret, headers.get("x-doorkeep-signature", ""), body,
                                                             receiver.now())
                answer = receiver.status.get(self.path, 200)
                if receiver.hold is not None:
                    receiver.hold.wait(10)
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, ok, answer))
                if answer is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook-receiver", daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def accepted(self, path: str | None = None) -> list[Received]:
        """Requests answered 2xx with a good signature: what the receiver would act on."""
        return [r for r in self.requests(path) if r.signature_ok and r.answered is not None and 200 <= r.answered < 300]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

