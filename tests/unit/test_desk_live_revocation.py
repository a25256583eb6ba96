"""Attack: a disabled operator keeps watching the live feed (issue 12, item 4).

The stream (server/web/live.py) used to re-check its caller's login only after 15 s without messages, so on a
busy site it never did: a disabled operator's open stream kept delivering rows with names for minutes. Now
a stream ends within 2 s of disable, token revocation, logout or session expiry, however busy the site: the
operator service tells the open streams at once, and each stream re-checks its login every second as a
backstop (a revocation made by another process, a session reaching its time limit on the injected clock).

Real parts: the real desk app served by uvicorn on a loopback port, read over HTTP by an SSE client; events
enter through the server bus's store-thread entry point while the stream is open, continuously (a busy site).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from fastapi import FastAPI

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from server.app import Server
from server import sessions as auth_mod
from server.web.live import RECHECK_S
from simulators.wait import wait_until
from tests.unit import test_desk_live as live_tests
from tests.unit.test_desk_live import Reader, event, ingest, token
from tests.unit.test_desk_visitors import DEMO, PASSWORDS

# The same real server, app and served desk as the live-view tests (pytest finds fixtures by module attribute).
clock, server, app, client, served = (live_tests.clock, live_tests.server, live_tests.app, live_tests.client,
                                      live_tests.served)

#: The promise: a stream ends within this many seconds of the login ending.
END_WITHIN_S = 2.0


class Feed:
    """A busy site: a new event every 20 ms on a thread, each id remembered with the moment it was stored."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stored: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            eid = f"busy-{seq}"
            ingest(self.server, event(eid, seq))
            self.stored.append((eid, time.monotonic()))
            self._stop.wait(0.02)

    def ids_after(self, moment: float) -> set[str]:
        return {eid for eid, at in self.stored if at > moment}

    def __enter__(self) -> Feed:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def feed(server: Server) -> Iterator[Feed]:
    with Feed(server) as f:
        yield f


def session_headers(base: str, name: str) -> tuple[dict[str, str], str]:
    """Log in over HTTP: the Cookie header for the stream, and the session's CSRF token."""
    r = httpx.post(f"{base}/api/v1/session", json={"name": name, "password": PASSWORDS[name]}, timeout=10)
    assert r.status_code == 200, r.text
    return {"Cookie": f"doorkeep_session={r.cookies['doorkeep_session']}"}, r.json()["csrf_token"]


def streaming(reader: Reader) -> bool:
    return reader._thread.is_alive()


def rows(reader: Reader) -> list[str]:
    return [m[2]["id"] for m in reader.messages if m[0] == "row"]


def assert_ends_promptly(reader: Reader, feed: Feed, revoked_at: float, reason: str, grace: float = 0.0) -> None:
    """The stream closed within END_WITHIN_S with an ``end`` message, and no row stored after the revocation
    (plus ``grace``) reached the client."""
    assert wait_until(lambda: not streaming(reader), END_WITHIN_S), \
        f"the stream still runs {END_WITHIN_S} s after: {reason}"
    kinds = [m[0] for m in reader.messages]
    assert kinds[-1] == "end" and reason in reader.messages[-1][2]["reason"], reader.messages[-3:]
    assert "end" not in kinds[:-1]
    leaked = set(rows(reader)) & feed.ids_after(revoked_at + grace)
    assert not leaked, f"rows stored after the revocation were delivered: {sorted(leaked)[:5]}"


def open_stream(base: str, headers: dict[str, str], app: FastAPI) -> Reader:
    reader = Reader(f"{base}/api/v1/events/stream", headers)
    assert wait_until(lambda: len(rows(reader)) >= 3, 5), "the busy feed does not reach the stream"
    return reader


def test_attack_disabled_operator_keeps_watching_the_live_feed_of_a_busy_site(app: FastAPI, served: str,
                                                                                feed: Feed) -> None:
    cookie, _ = session_headers(served, "dex")
    reader = open_stream(served, cookie, app)
    try:
        admin = token(app, "ada")
        r = httpx.post(f"{served}/api/v1/operators/dex/disable", headers=admin, timeout=10)
        revoked_at = time.monotonic()
        assert r.status_code == 200 and r.json()["disabled"] is True
        assert_ends_promptly(reader, feed, revoked_at, "operator disabled")
    finally:
        reader.close()
    assert wait_until(lambda: app.state.live.clients == 0, 5)


def test_a_revoked_token_ends_its_stream_even_when_revoked_by_another_process(app: FastAPI, served: str,
                                                                              feed: Feed, tmp_path: Path) -> None:
    reader = open_stream(served, token(app, "dex"), app)
    try:
        # `doorkeep user token --revoke` opens the store itself: no in-process notice, the periodic re-check ends it
        assert main(["user", "token", "dex", "--label", "live-dex", "--revoke", "--site", str(DEMO),
                     "--data", str(tmp_path / "data")]) == 0
        revoked_at = time.monotonic()
        # The re-check runs every second: rows of that second may still go out, none after it.
        assert_ends_promptly(reader, feed, revoked_at, "logged out", grace=RECHECK_S + 0.2)
    finally:
        reader.close()


def test_a_token_revoked_at_the_desk_ends_its_stream_at_once(app: FastAPI, served: str, feed: Feed) -> None:
    reader = open_stream(served, token(app, "dex"), app)
    try:
        assert app.state.desk.operators.revoke_token("dex", "live-dex", actor="ada")
        assert_ends_promptly(reader, feed, time.monotonic(), "token revoked")
    finally:
        reader.close()


def test_logging_out_ends_the_sessions_stream(app: FastAPI, served: str, feed: Feed) -> None:
    cookie, csrf = session_headers(served, "dex")
    other, _ = session_headers(served, "dex")  # the same operator's other session keeps its stream
    reader, survivor = open_stream(served, cookie, app), open_stream(served, other, app)
    try:
        r = httpx.delete(f"{served}/api/v1/session", headers={**cookie, "X-CSRF-Token": csrf}, timeout=10)
        revoked_at = time.monotonic()
        assert r.status_code == 204
        assert_ends_promptly(reader, feed, revoked_at, "logged out")
        count = len(rows(survivor))
        assert wait_until(lambda: len(rows(survivor)) > count + 3, 5) and streaming(survivor)
    finally:
        reader.close()
        survivor.close()


def test_a_session_reaching_its_time_limit_ends_its_stream(app: FastAPI, served: str, feed: Feed,
                                                          clock: FakeClock) -> None:
    cookie, _ = session_headers(served, "dex")
    reader = open_stream(served, cookie, app)
    try:
        clock.advance(auth_mod.SESSION_ABSOLUTE_S + 1)
        assert_ends_promptly(reader, feed, time.monotonic(), "logged out")
    finally:
        reader.close()
