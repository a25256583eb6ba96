"""server/store_reports.py on both engines: badge counts by UTC quarter hour (from ``events_badge_quarters`` or
the events), refusals, a person's badges paged on ``(ts, rowid)``, last passages, passages and check-outs.
SQLite's index hints (``INDEXED BY``, unary ``+``) are SQLite's only; the rows must be the same on both, and the
same as a plain count over the events in Python.

PostgreSQL comes from tests/pg.py (a fresh database per test; skipped with the reason when none answers).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.contract import EventMsg
from server.store import Store
from tests.pg import engine_url, pg_url  # noqa: F401  (fixtures)

# (ts, door, type, decision, reason, person): quarters 09:00-09:14, 09:15-09:29, 10:45-10:59, the next day.
EVENTS = [
    ("2026-03-30T09:00:00.000Z", "lobby_in", "access", "granted", "granted", "alice"),
    ("2026-03-30T09:14:59.999Z", "lobby_in", "access", "denied", "no_access", "bob"),
    ("2026-03-30T09:15:00.000Z", "lab", "access", "granted", "granted", "alice"),
    ("2026-03-30T09:15:00.000Z", "lab", "access", "denied", "outside_schedule", "alice"),
    ("2026-03-30T09:20:00.000Z", "lab", "door_opened", None, None, None),
    ("2026-03-30T09:29:00.000Z", "lobby_out", "access", None, None, None),
    ("2026-03-30T10:45:00.000Z", "lobby_in", "access", "denied", "no_access", "carol"),
    ("2026-03-30T10:59:00.000Z", "lab", "access", "granted", "granted", "bob"),
    ("2026-03-31T08:00:00.000Z", "lab", "access", "granted", "granted", "alice"),
]


@pytest.fixture
def store(engine_url: str | None, tmp_path: Path) -> Iterator[Store]:  # noqa: F811
    s = Store(tmp_path / "data", url=engine_url)
    base = EventMsg(id="", seq=0, ts="", device="pi-lobby", door="", type="", decision=None, reason=None,
                    decided_by="server", person=None, credential_hash=None, credential_last4=None, transaction=None,
                    latency_ms=None, snapshot=None, detail={})
    for i, (ts, door, type_, decision, reason, person) in enumerate(EVENTS):
        s.ingest_event(replace(base, id=f"e{i}", seq=i + 1, ts=ts, door=door, type=type_, decision=decision,
                               reason=reason, person=person), 1.0)
    yield s
    s.close()


def expected_counts(since: str, until: str, doors: set[str] | None) -> Counter[tuple[str, int, str]]:
    return Counter((ts[:13], int(ts[14:16]) // 15, decision or "") for ts, door, type_, decision, _, _ in EVENTS
                   if type_ == "access" and since <= ts < until and (doors is None or door in doors))


SPANS = [
    ("2026-03-30T09:00:00.000Z", "2026-03-31T00:00:00.000Z"),  # quarter hours: read from events_badge_quarters
    ("2026-03-30T09:15:00.000Z", "2026-03-30T10:45:00.000Z"),
    ("2026-03-30T09:00:00.001Z", "2026-03-30T10:59:30.000Z"),  # not on quarter hours: from the events
]


def test_badge_counts_are_a_count_per_utc_quarter_hour_and_decision(store: Store) -> None:
    for since, until in SPANS:
        for doors in (None, ("lab",), ("lab", "lobby_out"), ("nowhere",)):
            got = store.badge_counts(since, until, doors)
            want = expected_counts(since, until, None if doors is None else set(doors))
            assert Counter({(h, q, d): n for h, q, d, n in got}) == want, (since, until, doors)
            assert len(got) == len(want)  # one row per group
            assert all(type(q) is int and type(n) is int for _, q, _, n in got)


def test_refusals_count_by_door_and_reason(store: Store) -> None:
    since, until = "2026-03-30T00:00:00.000Z", "2026-03-31T00:00:00.000Z"
    assert sorted(store.refusal_counts(since, until)) == [("lab", "outside_schedule", 1), ("lobby_in", "no_access", 2)]
    assert store.refusal_counts(since, until, ["lab"]) == [("lab", "outside_schedule", 1)]
    assert store.refusal_counts(since, until, []) == [] and store.badge_counts(since, until, []) == []


def test_a_persons_badges_page_on_time_and_arrival(store: Store) -> None:
    since, until = "2026-03-30T00:00:00.000Z", "2026-04-01T00:00:00.000Z"
    first = store.person_badges("alice", since, until, limit=2)
    assert [r["id"] for r in first] == ["e0", "e2"]
    assert set(first[0]) == {"cursor", "id", "ts", "door", "decision", "reason", "person"}
    rest = store.person_badges("alice", since, until, after=(first[-1]["ts"], first[-1]["cursor"]), limit=5)
    assert [r["id"] for r in rest] == ["e3", "e8"]  # e3 has e2's ts: the arrival order (rowid) decides
    assert store.person_badges("alice", since, "2026-03-30T09:15:00.000Z") == [first[0]]


def test_passages_last_passages_and_checkouts(store: Store) -> None:
    assert store.passages("2026-03-30T00:00:00.000Z", "2026-03-31T00:00:00.000Z") == [
        ("2026-03-30T09:00:00.000Z", "alice", "lobby_in"), ("2026-03-30T09:15:00.000Z", "alice", "lab"),
        ("2026-03-30T10:59:00.000Z", "bob", "lab")]
    assert store.last_passages(["alice", "bob", "carol", "nobody"], "2026-03-30T10:00:00.000Z") == {"alice": "lab"}
    assert store.last_passages(["alice", "bob"], "2026-04-01T00:00:00.000Z") == {"alice": "lab", "bob": "lab"}
    assert store.last_passages([], "2026-04-01T00:00:00.000Z") == {}
    store.save_visitor("v-2", name="Ada", status="checked_out", checked_out_at=20.0)
    store.save_visitor("v-1", name="Grace", status="checked_out", checked_out_at=10.0)
    store.save_visitor("v-3", name="Lin", status="checked_in")
    assert store.visitor_checkouts(30.0) == [(10.0, "v-1"), (20.0, "v-2")]
    assert store.visitor_checkouts(15.0) == [(10.0, "v-1")]
