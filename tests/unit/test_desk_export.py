"""The CSV export's shortcut (server/web/export.py ``_RowWriter``) writes the same bytes as the live view's own
rows (``history`` + ``row_cells``, the export's previous way): across daylight-saving switches, for visitors who
declined photos, a visitor's arrival with its host, cards of people no longer on the site, unknown doors,
formula-looking values and times that are not plain UTC.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from server.app import Server
from server.eventlog import EventLog
from server.web.export import COLUMNS, csv_lines, export_rows, row_cells
from server.web.live import EventFilter, build_filter, history
from tests.unit import test_desk_live as live_tests
from tests.unit.test_desk_live import event, ingest
from tests.unit.test_desk_visitors import check_in, login, register

clock, server, app, client = live_tests.clock, live_tests.server, live_tests.app, live_tests.client


def reference(log: EventLog, server: Server, flt: EventFilter) -> str:
    """The export as it was written before the shortcut: every row through the live view's model."""
    out = [csv_lines([list(COLUMNS)])]
    before: int | None = None
    while True:
        rows, more = history(log, server.site, flt, before=before, limit=7)
        if rows:
            out.append(csv_lines(row_cells(r) for r in rows))
        if not more or not rows:
            return "".join(out)
        before = rows[-1].cursor


def raw_event(server: Server, rowid_ts: str, eid: str, **cols: Any) -> None:
    """A row written straight into the store, for values the ingest path would refuse."""
    row: dict[str, Any] = {"id": eid, "seq": 0, "ts": rowid_ts, "device": "pi-lobby", "door": "lobby_in",
                           "type": "access", "decision": "granted", "reason": "granted", "person": "alice",
                           "detail": "{}", "received_at": 0.0, **cols}
    names = list(row)
    with server.store.connection_for_tests() as db, db.conn:
        db.conn.execute(f"INSERT INTO events ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                        [row[n] for n in names])


def test_the_export_is_byte_identical_to_the_live_views_rows(client: TestClient, server: Server) -> None:
    csrf = login(client, "dex")
    declined = register(client, csrf)["visitor"]["id"]
    assert check_in(client, csrf, declined, photo=False).status_code == 200  # also stores visitor_arrived
    seq = 0
    # Around both of London's 2026 switches (29 March 01:00 UTC, 25 October 01:00 UTC), and a quiet winter day.
    for ts in ("2026-03-29T00:59:59.999Z", "2026-03-29T01:00:00.000Z", "2026-03-29T00:30:00.000Z",
               "2026-10-25T00:59:59.000Z", "2026-10-25T01:00:00.000Z", "2026-10-25T01:30:00.500Z",
               "2025-12-31T23:59:59.000Z", "2026-01-01T00:00:00.000Z"):
        seq += 1
        ingest(server, event(f"ev-{seq}", seq, ts=ts))
    seq += 1
    ingest(server, event("ev-vis", seq, person=declined))  # snapshot expected: withheld
    seq += 1
    ingest(server, event("ev-bob", seq, door="lab", person="bob", decision="denied", reason="no_access",
                         snapshot=None))
    seq += 1
    ingest(server, event("ev-gone", seq, person="someone-gone", credential_last4="=9F1"))
    seq += 1
    ingest(server, event("ev-card", seq, person=None, credential_last4="7A7A", decision="denied",
                         reason="unknown_credential"))
    seq += 1
    ingest(server, event("ev-open", seq, type="door_opened", decision=None, reason=None, person=None,
                         snapshot=None, decided_by=None, credential_hash=None, credential_last4=None,
                         transaction=None, latency_ms=None))
    raw_event(server, "2026-11-30T10:00:00+00:00", "ev-offset")  # not plain UTC: the slow way
    raw_event(server, "yesterday", "ev-garbage")
    raw_event(server, "2026-11-30T10:00:00.000Z", "@ev-formula", door="-gate", reason="+odd", person="=x")
    raw_event(server, "2026-11-30T10:00:01.000Z", "ev-json", type="visitor_arrived", detail="not json",
              decision=None, reason=None)

    log = EventLog(server.store, server.directory.clock)
    site = server.site
    filters = [EventFilter(), build_filter(site, kinds="badge"), build_filter(site, person="Archer"),
               build_filter(site, door="lab", decision="denied"), build_filter(site, person="nobody at all"),
               build_filter(site, since="2026-03-29", until="2026-10-26")]
    for flt in filters:
        for page in (1, 3, 500):
            got = "".join(export_rows(log, site, flt, page=page))
            assert got == reference(log, server, flt), (flt, page)
    everything = "".join(export_rows(log, site, EventFilter()))
    assert everything.count("\r\n") == 1 + seq + 4 + 1  # header, ingested, raw, the check-in's visitor_arrived
    assert "\r\n2026-03-29,00:59:59,GMT," in everything and "\r\n2026-03-29,02:00:00,BST," in everything
    assert ",withheld\r\n" in everything and "'@ev-formula" in everything and "'-gate" in everything
