"""The live view (server/web/live.py): the event history with filters and paging, the snapshot endpoint and
who may read it, the server-sent event stream fed by the server's real ingest path (events, then their
snapshots), bounded per-client queues, and clean-up of clients that went away.

The stream is read over real HTTP from uvicorn on a free loopback port (TestClient buffers whole responses,
so it cannot read an endless stream); the rest uses TestClient. Events enter through ``ServerBus._store_one``,
the store thread's own entry point, exactly as an MQTT delivery would hand them over.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import warnings
from dataclasses import replace
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.contract import EventMsg, Topics, parse_topic
from doorkeep.envelope import SnapshotRef, seal
from server.app import Server
from server.bus import _Work
from server.eventlog import EventLog
from server.web.live import CLIENT_QUEUE, Client, EventFilter, LiveHub
from simulators.wait import wait_until
from tests.unit import test_desk_visitors as visitor_tests
from tests.unit.test_desk_visitors import assert_error, check_in, login, register

# The same real server, app and client as the visitor tests (pytest finds fixtures by module attribute).
clock, server, app, client = visitor_tests.clock, visitor_tests.server, visitor_tests.app, visitor_tests.client

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"


def event(eid: str, seq: int, door: str = "lobby_in", **kw: Any) -> EventMsg:
    device = "pi-floor7" if door == "lab" else "pi-lobby"
    base = EventMsg(id=eid, seq=seq, ts=f"2026-11-30T09:00:{seq % 60:02d}.000Z", device=device, door=door,
                    type="access", decision="granted", reason="granted", decided_by="server", person="alice",
                    credential_hash="ab" * 32, credential_last4="B2C3", transaction=f"tx-{eid}", latency_ms=3.0,
                    snapshot=eid)
    return replace(base, **kw)  # type: ignore[arg-type]


def ingest(server: Server, ev: EventMsg) -> None:
    """Through the bus's store-thread entry point, as an MQTT delivery is handed over."""
    topic = parse_topic(Topics(server.site.id).event(ev.device, ev.door))
    server.bus._store_one(_Work("event", topic, ev.encode(), server.directory.clock.wall()))


def ingest_snapshot(server: Server, ev: EventMsg, jpeg: bytes = JPEG) -> None:
    assert server.store.keys is not None
    blob = seal(jpeg, server.store.keys.recipient, SnapshotRef(server.site.id, ev.device, ev.id))
    topic = parse_topic(Topics(server.site.id).snapshot(ev.device, ev.door, ev.id))
    server.bus._store_one(_Work("snapshot", topic, blob, server.directory.clock.wall()))


# ----------------------------------------------------------------- history


def test_history_pages_newest_first_and_filters(client: TestClient, server: Server) -> None:
    login(client, "dex")
    for i in range(1, 8):
        ingest(server, event(f"ev-{i}", i, door="lab" if i % 2 else "lobby_in",
                             decision="denied" if i == 3 else "granted", reason="no_access" if i == 3 else "granted",
                             person="bob" if i == 3 else "alice"))
    page = client.get("/api/v1/events?limit=3").json()
    assert [r["id"] for r in page["events"]] == ["ev-7", "ev-6", "ev-5"]
    older = client.get(f"/api/v1/events?limit=3&before={page['next_before']}").json()
    assert [r["id"] for r in older["events"]] == ["ev-4", "ev-3", "ev-2"]
    last = client.get(f"/api/v1/events?limit=3&before={older['next_before']}").json()
    assert [r["id"] for r in last["events"]] == ["ev-1"] and last["next_before"] is None

    row = page["events"][0]
    assert (row["door_name"], row["person_name"], row["decision"], row["snapshot"]) == \
        ("Floor 7 lab", "Alice Archer", "granted", "pending")
    assert [r["id"] for r in client.get("/api/v1/events?door=lobby_in").json()["events"]] == ["ev-6", "ev-4", "ev-2"]
    assert [r["id"] for r in client.get("/api/v1/events?decision=denied").json()["events"]] == ["ev-3"]
    assert [r["id"] for r in client.get("/api/v1/events?person=BAKER").json()["events"]] == ["ev-3"]
    assert client.get("/api/v1/events?person=nobody-at-all").json()["events"] == []
    assert_error(client.get("/api/v1/events?decision=maybe"), 422, "decision")


def test_unknown_cards_show_their_last_digits(client: TestClient, server: Server) -> None:
    login(client, "dex")
    ingest(server, event("ev-x", 1, person=None, decision="denied", reason="unknown_credential",
                         credential_last4="FF01", snapshot=None))
    (row,) = client.get("/api/v1/events").json()["events"]
    assert row["person_name"] == "card …FF01" and row["snapshot"] == "none" and row["snapshot_url"] is None


# ----------------------------------------------------------------- snapshots


def test_snapshot_is_served_decrypted_to_admin_and_desk_only(client: TestClient, app: FastAPI,
                                                             server: Server) -> None:
    ev = event("ev-s", 1)
    ingest(server, ev)
    ingest_snapshot(server, ev)
    login(client, "dex")
    (row,) = client.get("/api/v1/events").json()["events"]
    assert row["snapshot"] == "ready" and row["snapshot_url"] == "/api/v1/snapshots/ev-s"
    r = client.get(row["snapshot_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == JPEG
    assert r.headers["cache-control"] == "no-store"
    assert_error(client.get("/api/v1/snapshots/ev-none"), 404, "no snapshot")
    assert_error(client.get("/api/v1/snapshots/a%20b"), 422, "snapshot_id")

    auditor = TestClient(app, raise_server_exceptions=False)
    login(auditor, "aud")
    assert_error(auditor.get("/api/v1/snapshots/ev-s"), 403, "needs admin or desk")
    assert_error(auditor.get("/api/v1/events"), 403, "needs admin or desk")
    assert_error(TestClient(app).get("/api/v1/snapshots/ev-s"), 401, "not logged in")


def test_a_visitor_who_declined_photos_has_their_snapshots_withheld(client: TestClient, server: Server) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf)["visitor"]["id"]
    assert check_in(client, csrf, vid, photo=False).status_code == 200
    ev = event("ev-v", 1, person=vid)
    ingest(server, ev)
    ingest_snapshot(server, ev)
    row = next(r for r in client.get("/api/v1/events").json()["events"] if r["id"] == "ev-v")
    assert row["person_name"] == "Grace Hopper" and row["snapshot"] == "withheld" and row["snapshot_url"] is None
    assert_error(client.get("/api/v1/snapshots/ev-v"), 404, "declined photos")


# ----------------------------------------------------------------- the stream


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    assert wait_until(lambda: srv.started, 10)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


class Reader:
    """Reads an SSE stream on a thread; ``messages`` are (event, id, data) as they arrive.

    http.client on a socket the test can shut down: closing a socket another thread is reading does not
    hang up the connection on Linux, but ``shutdown`` does, as a browser tab closing would.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.messages: list[tuple[str, str, Any]] = []
        self.status: int | None = None
        self.content_type = ""
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self._conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""), headers=headers)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            r = self._conn.getresponse()
            self.status, self.content_type = r.status, r.getheader("content-type", "")
            kind, mid = "message", ""
            while True:
                raw = r.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    mid = line[4:]
                elif line.startswith("data: "):
                    self.messages.append((kind, mid, json.loads(line[6:])))
                elif line == "":
                    kind, mid = "message", ""
        except (OSError, http.client.HTTPException, ValueError):
            return  # shut down by close()

    def close(self) -> None:
        if self._conn.sock is not None:
            self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._conn.close()


def token(app: FastAPI, name: str) -> dict[str, str]:
    secret = app.state.desk.operators.issue_token(name, f"live-{name}", actor="test")[0]
    return {"Authorization": f"Bearer {secret}"}


def test_stream_delivers_ingested_events_then_their_snapshot(app: FastAPI, server: Server, served: str) -> None:
    hub: LiveHub = app.state.live
    reader = Reader(f"{served}/api/v1/events/stream", token(app, "dex"))
    try:
        assert wait_until(lambda: hub.clients == 1, 5)
        assert reader.status == 200 and reader.content_type.startswith("text/event-stream")
        ev = event("ev-live", 1)
        ingest(server, ev)
        assert wait_until(lambda: any(m[0] == "row" for m in reader.messages), 5), reader.messages
        _, mid, row = reader.messages[0]
        assert row["id"] == "ev-live" and row["snapshot"] == "pending" and row["person_name"] == "Alice Archer"
        assert mid == str(row["cursor"])
        ingest_snapshot(server, ev)
        assert wait_until(lambda: any(m[0] == "snapshot" for m in reader.messages), 5), reader.messages
        snap = next(m[2] for m in reader.messages if m[0] == "snapshot")
        assert snap == {"id": "ev-live", "snapshot": "ready", "snapshot_url": "/api/v1/snapshots/ev-live"}
    finally:
        reader.close()
    assert wait_until(lambda: hub.clients == 0, 5), "a closed stream must be removed from the hub"


def test_stream_filters_and_resumes_after_a_cursor(app: FastAPI, server: Server, served: str) -> None:
    hub: LiveHub = app.state.live
    ingest(server, event("ev-1", 1))
    ingest(server, event("ev-2", 2, door="lab"))
    reader = Reader(f"{served}/api/v1/events/stream?door=lab&after=0", token(app, "ada"))
    try:
        assert wait_until(lambda: hub.clients == 1 and reader.messages, 5)
        ingest(server, event("ev-3", 3))            # lobby: filtered out
        ingest(server, event("ev-4", 4, door="lab"))
        assert wait_until(lambda: len(reader.messages) >= 2, 5)
        assert [m[2]["id"] for m in reader.messages] == ["ev-2", "ev-4"]
    finally:
        reader.close()


def test_stream_refuses_auditors_and_strangers(app: FastAPI, served: str) -> None:
    with httpx.Client(timeout=5) as c:
        r = c.get(f"{served}/api/v1/events/stream", headers=token(app, "aud"))
        assert r.status_code == 403 and "needs admin or desk" in r.json()["error"]
        assert c.get(f"{served}/api/v1/events/stream").status_code == 401


def test_server_events_reach_the_stream(app: FastAPI, server: Server, served: str) -> None:
    reader = Reader(f"{served}/api/v1/events/stream", token(app, "dex"))
    try:
        assert wait_until(lambda: app.state.live.clients == 1, 5)
        with TestClient(app) as c:
            csrf = login(c, "dex")
            vid = register(c, csrf, name="<img src=x onerror=alert(1)>")["visitor"]["id"]
            assert check_in(c, csrf, vid).status_code == 200
        assert wait_until(lambda: reader.messages, 5)
        row = reader.messages[0][2]
        # The name goes out as JSON data; live.js only ever sets it with textContent.
        assert row["type"] == "visitor_arrived" and row["person_name"] == "<img src=x onerror=alert(1)>"
    finally:
        reader.close()


# ----------------------------------------------------------------- bounded queues


def test_a_slow_client_is_cut_off_never_waited_for() -> None:
    loop = asyncio.new_event_loop()
    try:
        client = Client(loop, EventFilter())
        for i in range(CLIENT_QUEUE):
            client.offer(("row", str(i), "{}"))
        assert not client.dropped and client.queue.qsize() == CLIENT_QUEUE
        client.offer(("row", "overflow", "{}"))  # one too many: dropped, queue emptied but for the end mark
        assert client.dropped and client.queue.qsize() == 1 and client.queue.get_nowait() is None
        client.offer(("row", "later", "{}"))
        assert client.queue.empty()
    finally:
        loop.close()


def test_push_skips_clients_whose_loop_is_gone(server: Server, clock: FakeClock) -> None:
    events = EventLog(server.store, clock)
    hub = LiveHub(server, events)
    loop = asyncio.new_event_loop()
    gone = Client(loop, EventFilter())
    hub.add(gone)
    loop.close()
    ingest(server, event("ev-1", 1))
    from server.web.live import stored_row

    row = stored_row(events, server.site, "ev-1")
    assert row is not None
    hub.push("row", "1", "{}", row=row, site=server.site)  # must not raise, must not block
    assert hub.clients == 0


def test_a_stopping_desk_ends_its_open_streams_at_once_instead_of_waiting_for_the_browsers(app: FastAPI) -> None:
    """Every page holds a stream open for the alarm counter: the desk's server ends them as it stops (an ``end``
    message with the reason), rather than waiting for each browser, or SHUTDOWN_GRACE_S."""
    from server.web.serving import desk_server, uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = desk_server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    assert wait_until(lambda: srv.started, 10)
    hub: LiveHub = app.state.live
    reader = Reader(f"http://127.0.0.1:{port}/api/v1/events/stream", token(app, "dex"))
    try:
        assert wait_until(lambda: hub.clients == 1, 5)
        srv.should_exit = True
        thread.join(10)
        assert not thread.is_alive()
        # Cut off by the grace instead, the stream would end with no message at all.
        assert wait_until(lambda: ("end", "", {"reason": "the desk is stopping"}) in reader.messages, 5), \
            reader.messages
    finally:
        reader.close()


def test_a_lift_badge_shows_its_floors_and_a_floor_chosen_links_to_the_badge(client: TestClient,
                                                                             server: Server) -> None:
    """An access event at a lift names the floors it enabled; a floor_chosen names the floor and its grant's page,
    as a turnstile's passage does; the area filter finds the lift under each floor it serves."""
    login(client, "dex")
    ingest(server, event("ev-l1", 1, door="lift", device="pi-floor7", detail={"floors": ["office", "floor7"]}))
    ingest(server, event("ev-l2", 2, door="lift", device="pi-floor7", type="floor_chosen", decision=None,
                         reason=None, decided_by=None, person=None, credential_hash=None, credential_last4=None,
                         transaction=None, latency_ms=None, snapshot=None,
                         detail={"grant": "ev-l1", "floor": "floor7"}))
    rows = {r["id"]: r for r in client.get("/api/v1/events").json()["events"]}
    assert (rows["ev-l1"]["floors"], rows["ev-l1"]["floor"], rows["ev-l1"]["grant_url"]) == \
        (["Open-plan office", "Floor 7"], None, None)
    assert (rows["ev-l2"]["floor"], rows["ev-l2"]["grant_url"]) == ("Floor 7", "/events/ev-l1")
    for area in ("office", "floor7", "lobby"):
        found = {r["id"] for r in client.get(f"/api/v1/events?area={area}").json()["events"]}
        assert {"ev-l1", "ev-l2"} <= found, area
    assert not {r["id"] for r in client.get("/api/v1/events?area=outside").json()["events"]} & {"ev-l1", "ev-l2"}

    chosen = client.get("/events/ev-l2").text
    assert "<dt>Floor chosen</dt><dd>Floor 7" in chosen
    assert '<a href="/events/ev-l1">the badge used</a>' in chosen
    badge = client.get("/events/ev-l1").text
    assert "<dt>Floors enabled</dt><dd>Open-plan office, Floor 7</dd>" in badge and "Floor asked for" not in badge
    from server.web.floors import event_words
    from server.web.live import EventRowOut
    assert event_words(EventRowOut(**rows["ev-l1"])) == "Granted: Alice Archer (floors Open-plan office, Floor 7)"
    assert event_words(EventRowOut(**rows["ev-l2"])) == "Floor chosen: Floor 7"
