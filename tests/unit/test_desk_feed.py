"""The live feed people can read (issue 16): plain reasons and local date, time and zone on each row, event kinds
as toggles, filters by door, area, person, decision, reason and time range, keyset paging that stays on an
index, and the CSV export of any filtered view (streamed, formula-safe, audited).

Events enter through the server's real ingest path (``ServerBus._store_one``), as in test_desk_live.py.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.contract import EventMsg
from server.app import Server
from server.eventlog import DEFAULT_KINDS, KINDS, event_kind, kind_types
from server.web.export import FORMULA_START, COLUMNS, csv_lines, export_rows, row_cells, safe_cell
from server.web.live import EventFilter, EventRowOut, build_filter, history
from server.web.audit import FilterError
from tests.unit import test_desk_live as live_tests
from tests.unit.test_desk_live import event, ingest
from tests.unit.test_desk_visitors import assert_error, login

clock, server, app, client = live_tests.clock, live_tests.server, live_tests.app, live_tests.client


def day_event(eid: str, seq: int, ts: str, **kw: Any) -> EventMsg:
    return event(eid, seq, ts=ts, **kw)


def ids(client: TestClient, query: str) -> list[str]:
    r = client.get("/api/v1/events?" + query)
    assert r.status_code == 200, r.text
    return [row["id"] for row in r.json()["events"]]


@pytest.fixture
def mixed(server: Server) -> None:
    """A week of Alice, a denial for Bob, door movements and a forced door, in November (London: GMT)."""
    seq = 0
    for day in range(20, 30):  # Alice badges in every day, 20th to 29th November
        seq += 1
        ingest(server, day_event(f"al-{day}", seq, f"2026-11-{day}T08:30:00.000Z"))
        seq += 1
        ingest(server, day_event(f"op-{day}", seq, f"2026-11-{day}T08:30:02.000Z", type="door_opened",
                                 decision=None, reason=None, person=None, snapshot=None, decided_by=None,
                                 credential_hash=None, credential_last4=None, transaction=None, latency_ms=None))
    seq += 1
    ingest(server, day_event("bob-lab", seq, "2026-11-29T09:00:00.000Z", door="lab", person="bob",
                             decision="denied", reason="credential_inactive"))
    seq += 1
    ingest(server, day_event("forced", seq, "2026-11-29T09:05:00.000Z", type="forced_open", decision=None,
                             reason=None, person=None, decided_by=None, credential_hash=None,
                             credential_last4=None, transaction=None, latency_ms=None))


# ----------------------------------------------------------------- rows


def test_kinds_are_derived_from_the_vocabulary() -> None:
    assert (event_kind("access"), event_kind("door_opened"), event_kind("rex"), event_kind("forced_open"),
            event_kind("reader_online"), event_kind("visitor_arrived"), event_kind("not_a_type")) == \
        ("badge", "door", "door", "alarm", "system", "system", "system")
    assert DEFAULT_KINDS == {"badge", "alarm", "system"} and list(KINDS) == ["badge", "alarm", "door", "system"]
    assert kind_types(set(KINDS)) is None
    assert "door_opened" not in (kind_types(DEFAULT_KINDS) or []) and "access" in (kind_types(DEFAULT_KINDS) or [])


def test_a_refused_badge_reads_in_plain_words_with_local_date_zone_and_a_why_link(
        client: TestClient, server: Server, mixed: None) -> None:
    login(client, "dex")
    (row,) = client.get("/api/v1/events?decision=denied").json()["events"]
    assert (row["reason"], row["reason_label"]) == ("credential_inactive", "Card not active (lost, revoked)")
    assert (row["local_date"], row["local_time"], row["zone"]) == ("2026-11-29", "09:00:00", "GMT")
    assert row["why_url"] == "/events/bob-lab#why" and row["kind"] == "badge"
    granted = client.get("/api/v1/events?decision=granted&limit=1").json()["events"][0]
    assert granted["why_url"] is None


# ----------------------------------------------------------------- filters


def test_door_movements_are_a_kind_that_can_be_left_out(client: TestClient, mixed: None) -> None:
    login(client, "dex")
    assert len(ids(client, "limit=500")) == 22  # no kinds: everything (the API's default)
    shown = ids(client, "kinds=badge,alarm,system&limit=500")
    assert len(shown) == 12 and not any(i.startswith("op-") for i in shown)
    assert ids(client, "kinds=alarm") == ["forced"]
    assert ids(client, "kinds=") == []
    assert_error(client.get("/api/v1/events?kinds=badge,parties"), 422, "kinds")


def test_filters_by_area_reason_and_time_range_in_the_sites_zone(client: TestClient, mixed: None) -> None:
    login(client, "dex")
    assert ids(client, "area=floor7") == ["bob-lab"]
    assert len(ids(client, "area=lobby&limit=500")) == 22  # every demo door leads into or out of the lobby
    assert ids(client, "area=nowhere") == []
    assert ids(client, "reason=credential_inactive") == ["bob-lab"]
    assert_error(client.get("/api/v1/events?reason=because"), 422, "reason")
    # since inclusive, until exclusive, both read in Europe/London
    assert ids(client, "kinds=badge&since=2026-11-22T00:00&until=2026-11-25T00:00") == ["al-24", "al-23", "al-22"]
    assert ids(client, "kinds=badge&since=2026-11-28T09:00:00Z") == ["bob-lab", "al-29"]
    assert_error(client.get("/api/v1/events?since=yesterday"), 422, "since")
    assert_error(client.get("/api/v1/events?since=2026-11-25&until=2026-11-24"), 422, "until")


def test_one_person_over_one_week_pages_without_overlap(client: TestClient, mixed: None) -> None:
    login(client, "dex")
    q = "person=archer&since=2026-11-22&until=2026-11-29"
    first = client.get(f"/api/v1/events?{q}&limit=3").json()
    seen = [r["id"] for r in first["events"]]
    before = first["next_before"]
    while before:
        page = client.get(f"/api/v1/events?{q}&limit=3&before={before}").json()
        seen += [r["id"] for r in page["events"]]
        before = page["next_before"]
    assert seen == [f"al-{d}" for d in range(28, 21, -1)]


def test_the_stream_applies_the_same_filters(server: Server) -> None:
    site = server.site
    flt = build_filter(site, area="floor7", kinds="badge,alarm", since="2026-11-29", until="2026-11-30")

    def row(**kw: Any) -> EventRowOut:
        base = dict(cursor=1, id="x", ts="2026-11-29T10:00:00.000Z", local_time="10:00:00", type="access",
                    door="lab", door_name="Floor 7 lab", person="bob", person_name="Bob Baker", person_kind=None,
                    decision="denied", reason="no_access", snapshot="none", snapshot_url=None, detail={},
                    kind="badge")
        return EventRowOut(**{**base, **kw})

    assert flt.matches(row(), site)
    assert not flt.matches(row(door="lobby_in"), site)                       # not a floor 7 door
    assert not flt.matches(row(kind="door", type="door_opened"), site)       # door movements off
    assert not flt.matches(row(ts="2026-11-30T00:00:00.000Z"), site)          # until is exclusive
    assert not build_filter(site, reason="granted").matches(row(), site)
    with pytest.raises(FilterError):
        build_filter(site, decision="perhaps")


def test_person_week_search_reads_the_person_ts_index(server: Server) -> None:
    """The plan, not only the answer: one person over a week uses events(person, ts) (migration 014), and the
    first page walks the rowid with no sort, whatever the store's size."""
    with server.store.connection_for_tests() as db:
        names = {i.name for i in db["events"].indexes}
        assert {"events_person_ts", "events_door"} <= names and "idx_events_person" not in names
    seen: list[str] = []
    real = server.store._db.execute

    def spy(sql: str, params: Any = None) -> Any:
        if sql.startswith("SELECT e.rowid FROM events"):  # the step that picks the rows: where the plan matters
            seen.append(" ".join(r[3] for r in real("EXPLAIN QUERY PLAN " + sql, params).fetchall()))
        return real(sql, params)

    server.store._db.execute = spy  # type: ignore[method-assign]
    try:
        history(_log(server), server.site,
                build_filter(server.site, person="alice", since="2026-11-22", until="2026-11-29"))
        history(_log(server), server.site, build_filter(server.site, kinds="badge,alarm,system"))
        history(_log(server), server.site, build_filter(server.site, door="lab"))
    finally:
        del server.store._db.execute
    assert "events_person_ts" in seen[0]
    assert "TEMP B-TREE" not in seen[1] and "SCAN e" in seen[1]
    assert "events_door" in seen[2] and "TEMP B-TREE" not in seen[2]


def _log(server: Server) -> Any:
    from server.eventlog import EventLog
    return EventLog(server.store, server.directory.clock)


# ----------------------------------------------------------------- export


def test_export_streams_the_filtered_view_and_audits_who_asked(client: TestClient, server: Server,
                                                               mixed: None) -> None:
    login(client, "dex")
    r = client.get("/api/v1/events.csv?person=Archer&since=2026-11-22&until=2026-11-29&kinds=badge")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert tuple(rows[0]) == COLUMNS
    assert [row[4] for row in rows[1:]] == [f"al-{d}" for d in range(28, 21, -1)]
    assert rows[1][:3] == ["2026-11-28", "08:30:00", "GMT"] and rows[1][8] == "Alice Archer"
    (rec,) = [a for a in server.audit.records() if a["action"] == "events.export"]
    details = rec["details"] if isinstance(rec["details"], dict) else json.loads(rec["details"])
    text = json.dumps(details)
    assert rec["actor"] == "dex" and details["kinds"] == ["badge"] and details["people_matched"] == 1
    assert details["since"] == "2026-11-22T00:00:00.000Z" and details["people"][0].startswith("ps-")
    assert "Archer" not in text and "alice" not in text  # no names in the audit log
    assert_error(client.get("/api/v1/events.csv?kinds=nope"), 422, "kinds")


def test_export_is_a_generator_reading_one_page_at_a_time(server: Server, mixed: None) -> None:
    calls: list[int] = []
    log = _log(server)
    real = log.rows_for_export

    def counting(**kw: Any) -> list[tuple[Any, ...]]:
        calls.append(kw["limit"])
        return real(**kw)

    log.rows_for_export = counting  # type: ignore[method-assign]
    chunks = export_rows(log, server.site, EventFilter(), page=5)
    assert next(chunks).startswith("date,time,zone")
    assert calls == []  # nothing read before the response asks for rows
    next(chunks)
    assert calls == [5]
    rest = list(chunks)
    assert len(rest) == 4 and len(calls) == 5  # 22 rows, 5 a page: 5 queries, each of one page (a short one ends)


def test_export_needs_admin_or_desk(app: FastAPI) -> None:
    auditor = TestClient(app, raise_server_exceptions=False)
    login(auditor, "aud")
    assert_error(auditor.get("/api/v1/events.csv"), 403, "needs admin or desk")


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_get_a_leading_apostrophe(text: str) -> None:
    assert safe_cell(text) == "'" + text
    assert safe_cell("Alice Archer") == "Alice Archer" and safe_cell(None) == ""


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=40), door=st.text(max_size=20), detail_host=st.text(max_size=20))
def test_no_exported_cell_starts_with_a_formula_character(name: str, door: str, detail_host: str) -> None:
    row = EventRowOut(cursor=1, id="ev", ts="2026-11-29T09:00:00.000Z", local_time="09:00:00",
                      local_date="2026-11-29", zone="GMT", type="visitor_arrived", door="", door_name=door,
                      person="v1", person_name=name, person_kind="visitor", decision=None, reason=None,
                      snapshot="none", snapshot_url=None, detail={"host_name": detail_host}, kind="system")
    text = csv_lines([row_cells(row)])
    (cells,) = list(csv.reader(io.StringIO(text)))
    assert len(cells) == len(COLUMNS)
    assert not any(c.startswith(FORMULA_START) for c in cells), cells
    assert cells[8] in (name, "'" + name)
