"""server/store_incidents.py on both engines: incidents, their timeline and attachments, the events an incident
holds, and the legal-hold conditions retention reads (:func:`held_event`, :func:`held_event_ids`: SQLite's
``json_each``, PostgreSQL's ``json_array_elements_text``).

PostgreSQL comes from tests/pg.py (a fresh database per test; skipped with the reason when none answers).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.contract import EventMsg
from server.store import Store
from server.store_incidents import HELD_ALARMS, held_event, held_event_ids
from tests.pg import engine_url, pg_url  # noqa: F401  (fixtures)


def ev(eid: str, ts: str, *, door: str = "lobby_in", person: str | None = "alice", **kw: object) -> EventMsg:
    base = EventMsg(id=eid, seq=1, ts=ts, device="pi-lobby", door=door, type="access", decision="granted",
                    reason="granted", decided_by="server", person=person, credential_hash=None,
                    credential_last4=None, transaction=None, latency_ms=None, snapshot=None, detail={})
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(engine_url: str | None, tmp_path: Path) -> Iterator[Store]:  # noqa: F811
    s = Store(tmp_path / "data", url=engine_url)
    for i, (door, person) in enumerate([("lobby_in", "alice"), ("lab", "bob"), ("lab", "alice"),
                                        ("lobby_in", "bob"), ("lobby_out", "carol")]):
        s.ingest_event(ev(f"e{i}", f"2026-03-30T09:0{i}:00.000Z", door=door, person=person, seq=i + 1), 1.0)
    yield s
    s.close()


def test_an_incident_opens_with_its_items_note_and_assignee_in_one_transaction(store: Store) -> None:
    alarm, _ = store.raise_alarm("forced_open", key="forced_open-e3", at=1.0, once=True, device="pi-lobby",
                                 door="lobby_in", source_event="e3")
    first = store.create_incident(title="Forced door", severity="high", actor="dex", at=10.0, assignee="ann",
                                  items=[("event", "e0"), ("alarm", alarm), ("event", "e0")], note="look")
    second = store.create_incident(title="Other", severity="low", actor="dex", at=11.0, assignee=None, items=[],
                                   note=None)
    assert second == first + 1
    row = store.incident_row(first)
    assert (row["title"], row["status"], row["assignee"], row["created_by"]) == ("Forced door", "open", "ann", "dex")
    assert [(r["what"], r["text"]) for r in store.incident_log_rows(first)] == [
        ("opened", None), ("note", "look"), ("assigned", "ann")]
    assert [(i["kind"], i["ref"], i["doors"]) for i in store.incident_items(first)] == [
        ("event", "e0", None), ("alarm", alarm, None)]  # the repeated event was ignored
    assert store.incident_row(999) is None
    assert [r["id"] for r in store.incident_rows()] == [second, first]
    assert [r["id"] for r in store.incident_rows(before=second)] == [first]
    assert store.incident_rows(status="closed") == []


def test_items_attach_once_detach_and_the_assignee_and_status_change_only_when_different(store: Store) -> None:
    n = store.create_incident(title="t", severity="low", actor="dex", at=1.0, assignee=None, items=[], note=None)
    assert store.add_incident_item(n, kind="event", ref="e1", since=None, until=None, doors=None, actor="dex",
                                   at=2.0, text="event e1")
    assert not store.add_incident_item(n, kind="event", ref="e1", since=None, until=None, doors=None, actor="dex",
                                       at=2.0, text="event e1")
    # Queries may repeat (two windows at different doors): no unique key on them.
    for _ in range(2):
        assert store.add_incident_item(n, kind="window", ref=None, since="2026-03-30T09:00:00.000Z",
                                       until="2026-03-30T09:02:30.000Z", doors=["lab"], actor="dex", at=3.0, text="w")
    items = store.incident_items(n)
    assert [i["doors"] for i in items] == [None, ["lab"], ["lab"]]
    assert store.remove_incident_item(n, items[2]["id"], actor="dex", at=4.0, text="w")
    assert not store.remove_incident_item(n, items[2]["id"], actor="dex", at=4.0, text="w")
    # Assignee: NULL-safe comparison on both engines (SQLite IS NOT, PostgreSQL IS DISTINCT FROM).
    assert not store.set_incident_assignee(n, None, actor="dex", at=5.0)
    assert store.set_incident_assignee(n, "ann", actor="dex", at=5.0)
    assert not store.set_incident_assignee(n, "ann", actor="dex", at=5.0)
    assert store.set_incident_assignee(n, None, actor="dex", at=6.0)
    assert store.set_incident_status(n, "closed", actor="dex", at=7.0, note="done")
    assert not store.set_incident_status(n, "closed", actor="dex", at=7.0, note=None)
    assert (store.incident_row(n)["closed_at"], store.incident_row(n)["closed_by"]) == (7.0, "dex")
    assert store.set_incident_status(n, "open", actor="dex", at=8.0, note=None)
    assert store.incident_row(n)["closed_at"] is None
    store.add_incident_log(n, what="exported", actor="dex", at=9.0, text=None)
    assert [r["what"] for r in store.incident_log_rows(n)] == [
        "opened", "attached", "attached", "attached", "detached", "assigned", "assigned", "closed", "reopened",
        "exported"]
    assert [r["text"] for r in store.incident_log_rows(n)][5:7] == ["ann", "nobody"]


def test_the_events_an_incident_holds_come_from_every_kind_of_item(store: Store) -> None:
    alarm, _ = store.raise_alarm("forced_open", key="forced_open-e4", at=1.0, once=True, device="pi-lobby",
                                 door="lobby_out", source_event="e4")
    n = store.create_incident(title="t", severity="low", actor="dex", at=1.0, assignee=None,
                              items=[("alarm", alarm)], note=None)
    store.add_incident_item(n, kind="person", ref="alice", since="2026-03-30T09:01:00.000Z",
                            until="2026-03-30T09:09:00.000Z", doors=None, actor="dex", at=2.0, text="alice")
    store.add_incident_item(n, kind="window", ref=None, since="2026-03-30T09:00:00.000Z",
                            until="2026-03-30T09:04:00.000Z", doors=["lobby_in"], actor="dex", at=2.0, text="w")
    rows = store.incident_events(n, 10)
    assert [r["id"] for r in rows] == ["e0", "e2", "e3", "e4"]  # window@lobby_in: e0 e3; alice: e2; alarm: e4
    assert all("rowid" not in r and r["snapshot_path"] is None for r in rows)
    assert [r["id"] for r in store.incident_events(n, 2)] == ["e2", "e4"]  # the limit cuts in item order
    assert store.incidents_holding(event="e0") == [] and store.incidents_holding(alarm=alarm) == [n]


def test_the_legal_hold_conditions_read_the_same_on_both_engines(store: Store) -> None:
    alarm, _ = store.raise_alarm("forced_open", key="forced_open-e1", at=1.0, once=True, device="pi-lobby",
                                 door="lab", source_event="e1")
    n = store.create_incident(title="t", severity="low", actor="dex", at=1.0, assignee=None,
                              items=[("event", "e0"), ("alarm", alarm)], note=None)
    store.add_incident_item(n, kind="window", ref=None, since="2026-03-30T09:00:00.000Z",
                            until="2026-03-30T09:05:00.000Z", doors=["lobby_out"], actor="dex", at=2.0, text="w")
    closed = store.create_incident(title="c", severity="low", actor="dex", at=1.0, assignee=None,
                                   items=[("event", "e2")], note=None)
    store.set_incident_status(closed, "closed", actor="dex", at=2.0, note=None)
    assert store.count_events_kept_for_incidents("2026-03-30T09:10:00.000Z") == 3  # e0, e1 (alarm), e4 (window)
    assert store.count_events_kept_for_incidents("2026-03-30T09:01:00.000Z") == 1
    with store.connection_for_tests(port=True) as conn:
        ids = held_event_ids(conn.dialect)
        assert sorted(r[0] for r in conn.execute(f"SELECT id FROM events WHERE id IN ({ids})")) == ["e0", "e1", "e4"]
        held = held_event(conn.dialect)  # the correlated form retention uses (server/store_privacy.py)
        assert sorted(r[0] for r in conn.execute(f"SELECT id FROM events WHERE {held}")) == ["e0", "e1", "e4"]
        assert [r[0] for r in conn.execute(f"SELECT id FROM alarms WHERE id IN ({HELD_ALARMS})")] == [alarm]
