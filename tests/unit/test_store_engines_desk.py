"""server/store_desk.py on both engines: the watchlist, visitor consents, people and cards, and the event pages,
each behaviour asserted on SQLite and on PostgreSQL (tests/pg.py; skipped with the reason when no PostgreSQL answers).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from server.store import Store
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)
from tests.unit.test_store_engines import ev

AT = 1_780_000_000.0


def person(pid: str, name: str, **kw: Any) -> dict[str, Any]:
    row = {"id": pid, "name": name, "kind": "employee", "clearance": 1, "access_levels": json.dumps(["staff"]),
           "roles": "[]", "state": "active", "valid_from": None, "valid_until": None, "pin_hash": None, "host": None,
           "company": None, "allowed_areas": "[]", "escort_required": 0, "source": "people.toml", "desk_changed": 0,
           "changed_at": AT}
    return {**row, **kw}


def card(h: str, pid: str, last4: str = "0001") -> dict[str, Any]:
    return {"hash": h, "person": pid, "format": "em4100", "last4": last4}


def test_watchlist_refuses_a_folded_duplicate_lists_by_kind_and_text_and_removes(store: Store) -> None:
    first = store.add_watchlist_entry("name", "Zoë Q", "zoe q", "note", "ann", AT)
    second = store.add_watchlist_entry("company", "ACME", "acme", "", "ann", AT + 1)
    third = store.add_watchlist_entry("name", "Al B", "al b", "", "bob", AT + 2)
    assert isinstance(first, int) and isinstance(second, int) and isinstance(third, int)
    assert len({first, second, third}) == 3
    assert store.add_watchlist_entry("name", "ZOE  Q", "zoe q", "", "ann", AT) is None
    entries = store.watchlist_entries()
    assert [(e["kind"], e["norm"]) for e in entries] == [("company", "acme"), ("name", "al b"), ("name", "zoe q")]
    assert entries[2] == {"id": first, "kind": "name", "value": "Zoë Q", "norm": "zoe q", "note": "note",
                          "added_by": "ann", "added_at": AT}
    assert store.remove_watchlist_entry(first) is True
    assert store.remove_watchlist_entry(first) is False
    assert [e["id"] for e in store.watchlist_entries()] == [second, third]


def test_visitor_consents_latest_first_and_orphans_dropped(store: Store) -> None:
    store.save_visitor("v-1", name="Vee", status="expected")
    store.add_visitor_consent("v-1", "n1", True, AT, "ann")
    store.add_visitor_consent("v-1", "n2", False, AT + 5, "bob")
    store.add_visitor_consent("v-gone", "n1", True, AT, "ann")
    assert store.latest_visitor_consent("v-1") == {"notice_version": "n2", "photo_consent": 0,
                                                   "consented_at": AT + 5, "operator": "bob"}
    assert store.latest_visitor_consent("nobody") is None
    assert store.visitor_consents("v-1") == [
        {"notice_version": "n1", "photo_consent": 1, "consented_at": AT},
        {"notice_version": "n2", "photo_consent": 0, "consented_at": AT + 5}]
    assert store.drop_orphan_consents() == 1
    assert store.visitor_consents("v-gone") == [] and len(store.visitor_consents("v-1")) == 2


def test_write_people_replaces_whole_rows_removes_with_cards_sets_states_and_pool(store: Store) -> None:
    assert store.people_version() == 0 and not store.people_seeded()
    v1 = store.write_people(people=[person("p2", "Bea", pin_hash="h1"), person("p1", "Al")],
                            cards=[card("c2", "p2", "0002"), card("c1", "p1")], states={"c1": "lost"},
                            pool=[{"hash": "pz", "format": "em4100", "last4": "9999"},
                                  {"hash": "pa", "format": "em4100", "last4": "1111"}], at=AT)
    assert v1 == 1 and store.people_version() == 1
    assert [p["id"] for p in store.people_rows()] == ["p1", "p2"]
    assert store.person_row("p2") == person("p2", "Bea", pin_hash="h1")
    assert [c["hash"] for c in store.card_rows()] == ["c1", "c2"]
    assert store.card_rows("p2") == [{**card("c2", "p2", "0002"), "added_at": AT}]
    assert [r["hash"] for r in store.pool_rows()] == ["pz", "pa"]
    assert store.card_states() == [{"hash": "c1", "state": "lost", "changed_at": AT}]
    # Written whole: a column the new row does not give is NULL afterwards (INSERT OR REPLACE, not an upsert).
    row = {k: v for k, v in person("p2", "Bea B", changed_at=AT + 1).items() if k != "pin_hash"}
    v2 = store.write_people(people=[row], cards=[card("c2", "p1", "0022")], states={"c1": None, "c2": "revoked"},
                            at=AT + 1)
    assert v2 == 2
    assert store.person_row("p2") == person("p2", "Bea B", pin_hash=None, changed_at=AT + 1)
    assert store.card_rows("p1") == [{**card("c1", "p1"), "added_at": AT},
                                     {**card("c2", "p1", "0022"), "added_at": AT + 1}]
    assert store.card_states() == [{"hash": "c2", "state": "revoked", "changed_at": AT + 1}]
    assert store.write_people(remove=["p1"], remove_cards=[], pool=[], at=AT + 2) == 3
    assert store.person_row("p1") is None and store.card_rows() == [] and store.pool_rows() == []
    # A row missing a NOT NULL column is refused on both engines, and nothing of the transaction stays.
    with pytest.raises(Exception):
        store.write_people(people=[{"id": "p3", "changed_at": AT}], remove=["p2"], at=AT + 3)
    assert store.person_row("p2") is not None and store.people_version() == 3


def test_desk_sources_and_the_seed_that_drops_the_legacy_desk_tables(store: Store) -> None:
    with store.connection_for_tests(port=True) as conn, conn.transaction():
        conn.execute("INSERT INTO desk_people (id, added, name, changed_at) VALUES ('d1', 1, 'Dee', ?)", [AT])
        conn.execute("INSERT INTO desk_cards (hash, person, format, last4, added_at) VALUES ('dc', 'd1', 'em4100', "
                     "'0003', ?)", [AT])
    legacy_people, legacy_cards = store.legacy_desk_rows()
    assert [p["id"] for p in legacy_people] == ["d1"] and [c["hash"] for c in legacy_cards] == ["dc"]
    store.write_people(people=[person("d1", "Dee", source="desk"), person("p1", "Al"),
                               person("p2", "Bo", desk_changed=1)], seeded=True, at=AT)
    assert store.people_seeded() is True
    assert store.legacy_desk_rows() == ([], [])
    assert sorted((r["id"], r["source"], r["desk_changed"]) for r in store.people_sources()) == [
        ("d1", "desk", 0), ("p2", "people.toml", 1)]


def test_adding_people_or_a_card_is_all_or_nothing_and_a_duplicate_is_sqlite3_integrity_error(store: Store) -> None:
    assert store.add_people_rows([person("p1", "Al")], [card("c1", "p1")], AT) == 1
    with pytest.raises(sqlite3.IntegrityError):
        store.add_people_rows([person("p2", "Bo")], [card("c1", "p2")], AT)  # c1 is Al's: neither stays
    assert store.person_row("p2") is None and store.people_version() == 1
    with pytest.raises(sqlite3.IntegrityError):
        store.add_card_row("c1", "p1", "em4100", "0001", AT)
    assert store.add_card_row("c9", "p1", "em4100", "0009", AT) == 2
    assert store.update_person_row("p1", {"state": "suspended", "clearance": 3}, AT + 1) == 3
    row = store.person_row("p1")
    assert row is not None and (row["state"], row["clearance"], row["changed_at"]) == ("suspended", 3, AT + 1)
    with pytest.raises(LookupError):
        store.update_person_row("nobody", {"state": "active"}, AT)
    with pytest.raises(ValueError):
        store.update_person_row("p1", {"id": "x"}, AT)
    assert store.people_version() == 3


def _fill(store: Store) -> list[int]:
    """Six events at two doors, in arrival order; their rowids."""
    rows = [
        ev("e1", 1, door="lobby_in", ts="2026-03-30T09:00:00.000Z", person="alice", snapshot="e1"),
        ev("e2", 2, door="lab", ts="2026-03-30T09:01:00.000Z", person="bob", decision="denied", reason="no_access"),
        ev("e3", 3, door="lobby_in", ts="2026-03-30T09:02:00.000Z", person="bob", type="door_forced",
           decision=None, reason=None),
        ev("e4", 4, door="lab", ts="2026-03-30T09:03:00.000Z", person="alice"),
        ev("e5", 5, door="lobby_in", ts="2026-03-30T09:04:00.000Z", person="alice", type="door_held",
           decision=None, reason=None),
        ev("e6", 6, door="lab", ts="2026-03-30T08:59:00.000Z", person="carol"),  # late: arrived last, older ts
    ]
    out = []
    for i, e in enumerate(rows):
        rowid = store.ingest_event(e, AT + i)
        assert rowid is not None
        out.append(rowid)
    return out


def test_event_pages_filter_and_page_by_arrival_on_both_engines(store: Store) -> None:
    rid = _fill(store)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(store.event_page()) == ["e6", "e5", "e4", "e3", "e2", "e1"]
    assert ids(store.event_page(limit=2)) == ["e6", "e5"]
    assert ids(store.event_page(before=rid[4], limit=2)) == ["e4", "e3"]
    assert ids(store.event_page(after=rid[1], limit=2)) == ["e3", "e4"]
    assert ids(store.event_page(door="lab")) == ["e6", "e4", "e2"]
    assert ids(store.event_page(door="lab", decision="denied")) == ["e2"]
    assert ids(store.event_page(doors=["lobby_in"], types=["door_forced", "door_held"])) == ["e5", "e3"]
    assert ids(store.event_page(reason="no_access")) == ["e2"]
    assert ids(store.event_page(people=["alice", "carol"])) == ["e6", "e5", "e4", "e1"]
    assert ids(store.event_page(people=["alice"], door="lab")) == ["e4"]
    assert ids(store.event_page(since="2026-03-30T09:01:00.000Z", until="2026-03-30T09:04:00.000Z")) == [
        "e4", "e3", "e2"]
    assert ids(store.event_page(since="2026-03-30T09:02:00.000Z", door="lobby_in")) == ["e5", "e3"]
    assert store.event_page(doors=[]) == [] and store.event_page(types=[]) == [] and store.event_page(people=[]) == []
    page = store.event_page(door="lobby_in", limit=1, before=rid[1])
    assert page[0]["cursor"] == rid[0] and page[0]["snapshot_path"] is None and "rowid" not in page[0]
    assert list(page[0])[:3] == ["cursor", "id", "seq"] and page[0]["detail"] == json.dumps({"k": "v"})
    one = store.event_with_cursor("e2")
    assert one is not None and one["cursor"] == rid[1] and one["reason"] == "no_access" and "rowid" not in one
    assert list(one) == list(page[0])
    assert store.event_with_cursor("nope") is None


def test_event_tuples_are_the_export_columns_newest_first(store: Store) -> None:
    rid = _fill(store)
    rows = store.event_tuples(door="lab", limit=10)
    assert [tuple(r) for r in rows] == [
        (rid[5], "e6", "2026-03-30T08:59:00.000Z", "lab", "access", "carol", "B2C3", "granted", "granted", "e6",
         json.dumps({"k": "v"}), None),
        (rid[3], "e4", "2026-03-30T09:03:00.000Z", "lab", "access", "alice", "B2C3", "granted", "granted", "e4",
         json.dumps({"k": "v"}), None),
        (rid[1], "e2", "2026-03-30T09:01:00.000Z", "lab", "access", "bob", "B2C3", "denied", "no_access", "e2",
         json.dumps({"k": "v"}), None)]
    assert [r[1] for r in store.event_tuples(before=rid[3], people=["bob"])] == ["e3", "e2"]
    assert store.event_tuples(types=[]) == []


def test_door_latest_events_picks_each_doors_newest_and_its_newest_snapshot_events(store: Store) -> None:
    rid = _fill(store)
    out = store.door_latest_events(["lobby_in", "lab", "empty"], ["door_forced", "door_held"], 5)
    assert set(out) == {"lobby_in", "lab"}
    last, snaps = out["lobby_in"]
    assert last is not None and last["id"] == "e5" and last["cursor"] == rid[4] and "rowid" not in last
    assert [s["id"] for s in snaps] == ["e5", "e3"]
    last, snaps = out["lab"]
    assert last is not None and last["id"] == "e6" and snaps == []
    assert [s["id"] for s in store.door_latest_events(["lobby_in"], ["door_forced", "door_held"], 1)["lobby_in"][1]] \
        == ["e5"]
    assert store.door_latest_events(["lab"], [], 5)["lab"][1] == []
    assert store.door_latest_events([], ["door_held"], 5) == {}
