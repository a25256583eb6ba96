"""The desk's reports (issue 16, docs/desk.md "Reports"): exact counts from a real SQLite store filled with known
badges, bucketed into the site's days and hours (Europe/London: across midnight in summer time, and over both
daylight-saving changes of 2026), each query on the index it names, and the pages and CSV downloads with their
roles, charts, formula-safe cells and audit records.

Real parts: the demo site's ``Server`` (its store, site model and audit log), the desk app through TestClient.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from dataclasses import replace
from datetime import date, datetime, timezone
from typing import Any, Callable

import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.contract import EventMsg
from server.app import Server
from server.audit import subject_ref
from server.reports import ReportError, Reports, period, site_zone
from server.store_reports import STEER_CAP
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    app,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)

BASE = EventMsg(id="x", seq=1, ts="2026-11-30T09:00:00.000Z", device="pi-lobby", door="lobby_in", type="access",
                decision="granted", reason="granted", decided_by="server", person="alice",
                credential_hash="ab" * 32, credential_last4="B2C3", transaction="tx", latency_ms=3.0, snapshot=None)
_seq = iter(range(1, 1_000_000))


def put(server: Server, ts: str, door: str = "lobby_in", person: str | None = "alice", decision: str | None = "granted",
        reason: str | None = None, etype: str = "access") -> str:
    """Store one event as the bus does (``Store.ingest_event``); its id."""
    n = next(_seq)
    reason = reason if reason is not None else ("granted" if decision == "granted" else "no_access" if decision else None)
    ev = replace(BASE, id=f"ev-{n}", seq=n, ts=ts, door=door, person=person, decision=decision, reason=reason,
                 type=etype, device="pi-floor7" if door == "lab" else "pi-lobby", transaction=f"tx-{n}")
    assert server.store.ingest_event(ev, 0.0) is not None
    return ev.id


@pytest.fixture
def reports(server: Server) -> Reports:
    return Reports(server.store)


def span(server: Server, first: str, last: str) -> Any:
    return period(date.fromisoformat(first), date.fromisoformat(last), site_zone(server.site))


# ----------------------------------------------------------------- bucketing


def test_activity_per_day_counts_in_site_days_so_a_late_utc_badge_lands_on_the_next_local_day(
        server: Server, reports: Reports) -> None:
    put(server, "2026-07-01T22:59:59.999Z")                      # 23:59 BST on the 1st
    put(server, "2026-07-01T23:00:00.000Z")                      # 00:00 BST on the 2nd
    put(server, "2026-07-02T12:00:00.000Z", decision="denied")
    put(server, "2026-07-02T22:30:00.000Z", door="lab")          # 23:30 BST on the 2nd
    put(server, "2026-07-03T23:00:00.000Z")                      # the 4th: outside the period
    put(server, "2026-07-02T10:00:00.000Z", etype="door_opened", decision=None, person=None)  # not a badge
    days = reports.activity(server.site, None, span(server, "2026-07-01", "2026-07-03"))
    assert [(b.key, b.granted, b.denied) for b in days] == [
        ("2026-07-01", 1, 0), ("2026-07-02", 2, 1), ("2026-07-03", 0, 0)]
    assert [(b.key, b.total) for b in reports.activity(server.site, ["lab"], span(server, "2026-07-01",
                                                                                  "2026-07-03"))] == [
        ("2026-07-01", 0), ("2026-07-02", 1), ("2026-07-03", 0)]


def test_the_autumn_change_day_has_25_hours_and_each_0100_keeps_its_own_badges(
        server: Server, reports: Reports) -> None:
    put(server, "2026-10-25T00:30:00.000Z")  # 01:30 BST
    put(server, "2026-10-25T00:45:00.000Z", decision="denied")  # 01:45 BST
    put(server, "2026-10-25T01:30:00.000Z")  # 01:30 GMT, the hour again
    put(server, "2026-10-24T23:10:00.000Z")  # 00:10 BST on the 25th
    hours = reports.activity(server.site, None, span(server, "2026-10-25", "2026-10-25"), by="hour")
    assert len(hours) == 25
    assert [(b.label, b.granted, b.denied) for b in hours[:4]] == [
        ("Sun 00:00 BST", 1, 0), ("Sun 01:00 BST", 1, 1), ("Sun 01:00 GMT", 1, 0), ("Sun 02:00 GMT", 0, 0)]
    assert sum(b.total for b in hours) == 4


def test_the_spring_change_day_has_23_hours_and_no_0100(server: Server, reports: Reports) -> None:
    put(server, "2026-03-29T00:59:59.000Z")  # 00:59 GMT
    put(server, "2026-03-29T01:00:00.000Z")  # 02:00 BST (01:00 never happens)
    hours = reports.activity(server.site, None, span(server, "2026-03-29", "2026-03-29"), by="hour")
    assert len(hours) == 23 and not any(" 01:00 " in b.label for b in hours)
    assert [(b.label, b.total) for b in hours[:2]] == [("Sun 00:00 GMT", 1), ("Sun 02:00 BST", 1)]
    day = reports.activity(server.site, None, span(server, "2026-03-28", "2026-03-30"))
    assert [b.total for b in day] == [0, 2, 0]


def test_traffic_grid_is_local_weekday_by_local_hour(server: Server, reports: Reports) -> None:
    put(server, "2026-07-06T07:15:00.000Z")  # Monday 08:15 BST
    put(server, "2026-07-13T07:45:00.000Z")  # the next Monday 08:45 BST
    put(server, "2026-07-12T23:30:00.000Z", decision="denied")  # Monday 00:30 BST (Sunday in UTC)
    put(server, "2026-11-30T08:15:00.000Z")  # a Monday in GMT: outside the period
    grid = reports.traffic(None, span(server, "2026-07-06", "2026-07-19"))
    assert grid[0][8] == 2 and grid[0][0] == 1 and grid[6][23] == 0 and sum(map(sum, grid)) == 3
    assert sum(map(sum, reports.traffic(None, span(server, "2026-07-06", "2026-07-19"), "denied"))) == 1
    with pytest.raises(ReportError, match="granted or denied"):
        reports.traffic(None, span(server, "2026-07-06", "2026-07-19"), "maybe")


def test_a_period_is_checked(server: Server) -> None:
    zone = site_zone(server.site)
    with pytest.raises(ReportError, match="must not be before"):
        period(date(2026, 11, 30), date(2026, 11, 1), zone)
    with pytest.raises(ReportError, match="at most 92 days"):
        period(date(2026, 1, 1), date(2026, 6, 1), zone)
    summer = period(date(2026, 7, 1), date(2026, 7, 1), zone)
    assert (summer.since, summer.until) == ("2026-06-30T23:00:00.000Z", "2026-07-01T23:00:00.000Z")


# ----------------------------------------------------------------- movements, refusals, occupancy


def test_a_persons_movements_are_their_badges_oldest_first_with_areas_and_plain_reasons(
        server: Server, reports: Reports) -> None:
    a = put(server, "2026-11-24T08:00:00.000Z")
    b = put(server, "2026-11-24T12:00:00.000Z", door="lab", decision="denied", reason="outside_schedule")
    c = put(server, "2026-11-25T17:00:00.000Z", door="lobby_out")
    put(server, "2026-11-24T08:00:01.000Z", person="bob")                  # someone else
    put(server, "2026-11-20T08:00:00.000Z")                                # before the period
    put(server, "2026-11-24T08:00:02.000Z", etype="door_opened", decision=None)  # not a badge
    rows, more = reports.movements(server.site, "alice", span(server, "2026-11-23", "2026-11-29"))
    assert [r.id for r in rows] == [a, b, c] and not more
    assert (rows[1].door_name, rows[1].from_area, rows[1].to_area, rows[1].decision) == \
        ("Floor 7 lab", "Lobby", "Floor 7", "denied")
    assert rows[1].reason_label == "Outside schedule" or "schedule" in rows[1].reason_label.lower()
    assert (rows[0].date, rows[0].time, rows[0].zone) == ("2026-11-24", "08:00:00", "GMT")
    pages = list(reports.all_movements(server.site, "alice", span(server, "2026-11-23", "2026-11-29"), page=2))
    assert [[r.id for r in p] for p in pages] == [[a, b], [c]]


def test_refusals_count_by_reason_and_door_largest_first(server: Server, reports: Reports) -> None:
    for _ in range(3):
        put(server, "2026-11-24T09:00:00.000Z", door="lab", decision="denied", reason="no_access")
    put(server, "2026-11-24T09:00:00.000Z", door="lobby_in", decision="denied", reason="no_access")
    put(server, "2026-11-24T09:00:00.000Z", door="lobby_in", decision="denied", reason="unknown_credential",
        person=None)
    put(server, "2026-11-24T09:00:00.000Z", door="lab")  # a grant
    found = reports.refusals(server.site, None, span(server, "2026-11-23", "2026-11-29"))
    assert found.total == 5
    assert [(code, n) for code, _, n in found.by_reason] == [("no_access", 4), ("unknown_credential", 1)]
    assert [(d, n) for d, _, n in found.by_door] == [("lab", 3), ("lobby_in", 2)]
    assert found.rows[0] == ("Floor 7 lab", "no_access", found.by_reason[0][1], 3)
    assert found.by_reason[0][1] != "no_access"  # the live feed's plain words, not the code
    assert reports.refusals(server.site, ["lobby_in"], span(server, "2026-11-23", "2026-11-29")).total == 2


def test_occupancy_starts_from_who_was_in_at_midnight_and_steps_with_each_passage(
        server: Server, reports: Reports) -> None:
    put(server, "2026-11-20T08:00:00.000Z", door="lab", person="alice")   # in floor 7 since the 20th
    put(server, "2026-11-20T08:00:00.000Z", door="lab", person="chen")
    put(server, "2026-11-21T08:00:00.000Z", door="lobby_out", person="chen")  # ... chen left on the 21st
    put(server, "2026-11-24T09:00:00.000Z", door="lab", person="bob")     # bob in
    put(server, "2026-11-24T09:30:00.000Z", door="lab", person="dana", decision="denied")  # refused: no change
    put(server, "2026-11-24T10:00:00.000Z", door="lab", person="bob")     # again: already in, no change
    put(server, "2026-11-24T12:00:00.000Z", door="lobby_out", person="alice")  # alice out (via the exit)
    put(server, "2026-11-24T13:00:00.000Z", door="lab", person="ghost")   # not a person of the site
    put(server, "2026-11-25T09:00:00.000Z", door="lobby_out", person="bob")  # the next day
    occ = reports.occupancy(server.site, "floor7", date(2026, 11, 24), site_zone(server.site))
    assert occ.at_start == 1
    assert [(s.local.strftime("%H:%M"), s.person, s.entered, s.count) for s in occ.steps] == [
        ("09:00", "Bob Baker", True, 2), ("12:00", "Alice Archer", False, 1)]
    assert (occ.peak, occ.at_end) == (2, 1)
    with pytest.raises(ReportError, match="no area"):
        reports.occupancy(server.site, "mars", date(2026, 11, 24), site_zone(server.site))


# ----------------------------------------------------------------- indexes


def plans(server: Server, call: Callable[[], Any]) -> list[str]:
    """The query plans of the report statements ``call`` runs (traced, then explained)."""
    seen: list[str] = []
    with server.store.connection_for_tests() as db:
        db.conn.set_trace_callback(seen.append)
        try:
            call()
        finally:
            db.conn.set_trace_callback(None)
        out = []
        for sql in seen:
            if "FROM events" in sql and "count(*) FROM (SELECT 1" not in sql:
                out.append(" | ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()))
    return out


def test_each_query_walks_the_index_it_names(server: Server, reports: Reports) -> None:
    put(server, "2026-11-24T09:00:00.000Z")
    week = span(server, "2026-11-23", "2026-11-29")
    (person,) = plans(server, lambda: reports.movements(server.site, "alice", week))
    assert "events_person_ts" in person and "TEMP B-TREE" not in person  # no sort: the index is in order
    (counts,) = plans(server, lambda: reports.activity(server.site, None, week))
    assert "events_badge_quarters" in counts and "TEMP B-TREE" not in counts  # migration 021: grouped in order
    (occupancy_start, day, lifts) = plans(server, lambda: reports.occupancy(server.site, "floor7",
                                                                            date(2026, 11, 24), week.zone))
    assert "events_person_ts" in occupancy_start and "idx_events_ts" in day
    assert "idx_events_ts" in lifts  # the day's floor_chosen and lift badges: the day's range, then the lift
    assert not any("SCAN e" in p and "INDEX" not in p for p in [person, counts, occupancy_start, day, lifts])


def test_a_quiet_door_reads_its_own_index_and_a_busy_one_the_time_range(server: Server, reports: Reports) -> None:
    put(server, "2026-11-24T09:00:00.000Z", door="lab")
    for n in range(30):  # the lobby is busy this week
        put(server, f"2026-11-24T10:{n:02d}:00.000Z", door="lobby_in")
    week = span(server, "2026-11-23", "2026-11-29")
    (lab,) = plans(server, lambda: reports.refusals(server.site, ["lab"], week))
    assert "events_door" in lab
    for n in range(40):  # ... and had badges every week before
        put(server, f"2026-10-0{1 + n % 9}T10:{n:02d}:00.000Z", door="lobby_in")
    (lobby,) = plans(server, lambda: reports.refusals(server.site, ["lobby_in"], week))
    assert "idx_events_ts" in lobby
    assert STEER_CAP >= 10_000  # the choice costs little, but is not skipped on a real site


# ----------------------------------------------------------------- pages and CSV


def test_every_role_reads_reports_and_the_nav_shows_them(app: FastAPI, client: TestClient, server: Server) -> None:
    toks = tokens(app)
    for name in ("ada", "dex", "aud"):
        page = client.get("/reports", headers=bearer(toks[name]))
        assert page.status_code == 200 and re.search(r'<a href="/reports"[^>]*>Reports</a>', page.text)
        assert client.get("/reports/refusals", headers=bearer(toks[name])).status_code == 200
    assert client.get("/reports").status_code in (303, 307, 401)  # no login: to the login page


def test_the_movements_page_draws_a_mark_per_badge_and_offers_the_picker_to_desk_roles(
        app: FastAPI, client: TestClient, server: Server) -> None:
    for ts in ("2026-11-24T08:00:00.000Z", "2026-11-25T08:00:00.000Z", "2026-11-26T08:00:00.000Z"):
        put(server, ts)
    put(server, "2026-11-26T12:00:00.000Z", door="lab", decision="denied", reason="outside_schedule")
    toks = tokens(app)
    page = client.get("/reports/movements?person=Alice&from=2026-11-23&to=2026-11-29", headers=bearer(toks["dex"]))
    assert page.status_code == 200
    svg = page.text[page.text.index('<svg class="chart"'):page.text.index("</svg>")]
    assert svg.count('<circle class="mark mark-granted"') == 3 and svg.count('class="mark mark-denied"') == 1
    assert 'role="img"' in svg and "<title id=" in svg and "<desc id=" in svg
    assert len(re.findall(r'<tr data-id="ev-\d+">', page.text)) == 4
    assert 'data-picker="/api/v1/people/search"' in page.text
    audit = client.get("/reports/movements?person=alice", headers=bearer(toks["aud"])).text
    assert "data-picker" not in audit  # the people search is not the auditor's (docs/desk.md)
    several = client.get("/reports/movements?person=a", headers=bearer(toks["dex"])).text
    assert "Several people match" in several and "person=alice" in several
    nobody = client.get("/reports/movements?person=zzz", headers=bearer(toks["dex"]))
    assert nobody.status_code == 422 and "nobody matches" in nobody.text


def test_a_bad_filter_is_explained_never_a_500(app: FastAPI, client: TestClient) -> None:
    toks = tokens(app)
    for path, words in (("/reports/activity?from=2026-11-30&to=2026-11-01", "must not be before"),
                        ("/reports/activity?from=nope", "not a date"),
                        ("/reports/activity?from=2026-01-01&to=2026-02-01&by=hour", "at most 7 days"),
                        ("/reports/traffic?door=lab&area=lobby", "door or an area"),
                        ("/reports/refusals?door=%3Cscript%3E", "no door"),
                        ("/reports/occupancy?area=mars", "no area"),
                        ("/reports/occupancy?area=lobby&date=9999-12-31", "between 1971 and 9998"),
                        ("/reports/movements?person=alice&from=0001-01-01&to=0001-01-02", "between 1971")):
        r = client.get(path, headers=bearer(toks["ada"]))
        assert r.status_code == 422 and words in r.text and "<script>" not in r.text, path
        api = client.get("/api/v1/reports/" + path.split("/")[2].replace("?", ".csv?"), headers=bearer(toks["ada"]))
        assert api.status_code == 422 and words in api.json()["error"], path


def test_csv_downloads_are_the_pages_rows_formula_safe_and_audited_with_a_pseudonym(
        app: FastAPI, client: TestClient, server: Server) -> None:
    put(server, "2026-11-24T08:00:00.000Z")
    put(server, "2026-11-24T09:00:00.000Z", door="lab", decision="denied", reason="=HYPERLINK(1)")
    toks = tokens(app)
    r = client.get("/api/v1/reports/movements.csv?person=alice&from=2026-11-23&to=2026-11-29",
                   headers=bearer(toks["aud"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [(t["date"], t["time"], t["zone"], t["door"], t["to_area"], t["decision"]) for t in table] == [
        ("2026-11-24", "08:00:00", "GMT", "Lobby entrance", "Lobby", "granted"),
        ("2026-11-24", "09:00:00", "GMT", "Floor 7 lab", "Floor 7", "denied")]
    assert table[1]["reason_code"] == "'=HYPERLINK(1)"  # a spreadsheet shows it, never runs it
    refusals = list(csv.DictReader(io.StringIO(client.get(
        "/api/v1/reports/refusals.csv?from=2026-11-23&to=2026-11-29", headers=bearer(toks["ada"])).text)))
    assert refusals == [{"door": "Floor 7 lab", "reason": "'=HYPERLINK(1)", "reason_code": "'=HYPERLINK(1)",
                         "refusals": "1"}]
    traffic = list(csv.reader(io.StringIO(client.get("/api/v1/reports/traffic.csv?from=2026-11-23&to=2026-11-29",
                                                     headers=bearer(toks["dex"])).text)))
    assert traffic[0][:3] == ["day", "00", "01"] and traffic[2][0] == "Tuesday" and traffic[2][9:11] == ["1", "1"]
    records = [a for a in server.audit.records() if a["action"] == "reports.export"][::-1]  # oldest first
    assert [(a["actor"], a["details"]["report"]) for a in records] == [
        ("aud", "movements"), ("ada", "refusals"), ("dex", "traffic")]
    assert records[0]["details"]["person"] == subject_ref(server.directory.key, "alice")
    assert "alice" not in str(records[0]["details"]) and "Alice" not in str(records[0]["details"])


def test_todays_occupancy_line_stops_at_now_and_a_past_day_runs_to_midnight(server: Server,
                                                                           reports: Reports) -> None:
    from server.web.report_charts import WIDTH, steps

    put(server, "2026-11-24T09:00:00.000Z", door="lab", person="bob")
    zone = site_zone(server.site)
    noon = datetime(2026, 11, 24, 12, tzinfo=timezone.utc).timestamp()  # "now" on that day (GMT)
    today = reports.occupancy(server.site, "floor7", date(2026, 11, 24), zone, now=noon)
    past = reports.occupancy(server.site, "floor7", date(2026, 11, 24), zone, now=noon + 86400)
    assert today.now is not None and today.now.strftime("%H:%M") == "12:00" and past.now is None
    end_today = float(steps("c", "t", today).path.split("H")[-1])
    assert end_today == pytest.approx(44 + (WIDTH - 44) / 2, abs=0.5)  # half the day drawn, then nothing
    assert steps("c", "t", past).path.endswith(f"H{WIDTH:.1f}")
    assert [(s.count, s.entered) for s in today.steps] == [(1, True)]


def test_badge_counts_read_by_quarter_hour_match_the_time_range_query(server: Server) -> None:
    """Migration 021's index answers what the ``events(ts)`` range did, group for group, at the edges of the
    period too (quarter-hour ends: a 05:30 zone's midnight), with doors, and without a decision."""
    import random

    rng = random.Random(21)
    for _ in range(300):
        day, hour, minute = rng.randrange(20, 30), rng.randrange(24), rng.randrange(60)
        put(server, f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
            door=rng.choice(("lobby_in", "lobby_out", "lab")), decision=rng.choice(("granted", "denied")),
            etype=rng.choice(("access", "access", "door_opened")))
    put(server, "2026-11-22T10:00:00.000Z", decision=None, reason="", person=None)
    put(server, "2026-11-22T18:29:59.999Z")  # the last moment before an edge below, and the edge itself
    put(server, "2026-11-22T18:30:00.000Z")
    store = server.store

    def by_range(since: str, until: str, doors: list[str] | None) -> list[tuple[Any, ...]]:
        with store.connection_for_tests() as db:
            where = "e.ts >= ? AND e.ts < ?" + (f" AND e.door IN ({', '.join('?' for _ in doors)})" if doors else "")
            return sorted(tuple(r) for r in db.execute(
                "SELECT substr(e.ts, 1, 13), CAST(substr(e.ts, 15, 2) AS INTEGER) / 15, coalesce(e.decision, ''), "
                f"count(*) FROM events e WHERE {where} AND e.type = 'access' GROUP BY 1, 2, 3",
                [since, until, *(doors or [])]).fetchall())

    cases = [("2026-11-20T00:00:00.000Z", "2026-11-30T00:00:00.000Z"),
             ("2026-11-22T18:30:00.000Z", "2026-11-25T18:30:00.000Z"),  # Asia/Kolkata's midnights
             ("2026-11-21T05:45:00.000Z", "2026-11-21T06:15:00.000Z"),  # a quarter-hour zone, within one hour
             ("2026-11-22T18:29:59.999Z", "2026-11-24T07:07:07.000Z")]  # not on quarters: the range query
    for since, until in cases:
        for doors in (None, ["lab"], ["lobby_in", "lobby_out"]):
            assert sorted(store.badge_counts(since, until, doors)) == by_range(since, until, doors), (since, doors)
    assert sum(n for *_, n in store.badge_counts(*cases[0])) > 150
