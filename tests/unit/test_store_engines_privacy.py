"""server/store_privacy.py on both engines: what retention selects and deletes (open alarms and an open incident's
legal hold kept), and the erasure of one data subject, each behaviour asserted on SQLite and on PostgreSQL
(tests/pg.py; skipped with the reason when no PostgreSQL answers). Rows other modules own are planted through the
connection port, so these tests do not depend on those modules' own methods.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.store import Store
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)
from tests.unit.test_store_engines import ev

AT = 1_780_000_000.0
OLD, NEW = "2026-01-01T00:00:00.000Z", "2026-06-01T00:00:00.000Z"
CUT = "2026-03-01T00:00:00.000Z"


def plant(store: Store, sql: str, *params: Any) -> None:
    with store.connection_for_tests(port=True) as conn, conn.transaction():
        conn.execute(sql, list(params))


def one(store: Store, sql: str, *params: Any) -> Any:
    with store.connection_for_tests(port=True) as conn:
        return conn.execute(sql, list(params)).fetchall()


def test_retention_selects_expired_events_but_keeps_open_alarms_and_the_legal_hold(store: Store) -> None:
    for i, (eid, ts, door, person) in enumerate([("old-1", OLD, "lab", "ann"), ("old-alarm", OLD, "lab", "ann"),
                                                 ("old-held", OLD, "vault", "bob"), ("old-window", OLD, "lab", "cy"),
                                                 ("new-1", NEW, "lab", "ann")]):
        store.ingest_event(ev(eid, i + 1, door=door, ts=ts, person=person, snapshot=eid), AT - 10_000)
    store.ingest_event(ev("old-late", 9, ts=OLD, snapshot="old-late"), AT + 10)  # received after the cut-off
    store.raise_alarm("forced_open", key="k1", at=AT, device="pi-lobby", door="lab", source_event="old-alarm",
                      once=True)
    plant(store, "INSERT INTO incidents (id, title, severity, status, created_at, created_by) VALUES "
                 "(7, 'theft', 'high', 'open', ?, 'ann')", AT)
    plant(store, "INSERT INTO incident_items (incident, kind, ref, since, until, doors, added_by, added_at) VALUES "
                 "(7, 'event', 'old-held', NULL, NULL, NULL, 'ann', ?)", AT)
    plant(store, "INSERT INTO incident_items (incident, kind, ref, since, until, doors, added_by, added_at) VALUES "
                 "(7, 'window', NULL, ?, ?, ?, 'ann', ?)", OLD, "2026-01-02", json.dumps(["vault", "lab"]), AT)
    assert store.count_events_kept_for_alarms(CUT) == 1
    # The window lists lab: every old event there is held.
    assert store.count_expired_events(CUT, AT) == 0
    plant(store, "UPDATE incident_items SET doors = ? WHERE kind = 'window'", json.dumps(["vault"]))
    assert store.count_expired_events(CUT, AT) == 2
    assert sorted(store.expired_events(CUT, AT, 10)) == [("old-1", "old-1"), ("old-window", "old-window")]
    assert len(store.expired_events(CUT, AT, 1)) == 1
    for sid, received in (("old-1", AT - 10_000), ("old-held", AT - 10_000), ("old-alarm", AT - 10_000),
                          ("new-1", AT + 5), ("orphan", AT - 10_000)):
        plant(store, "INSERT INTO snapshots (id, device, door, path, bytes, received_at) VALUES "
                     "(?, 'pi-lobby', 'lab', ?, 1, ?)", sid, f"{sid}.bin", received)
    assert sorted(store.expired_snapshots(AT, 10)) == ["old-1", "orphan"]
    assert store.count_expired_snapshots(AT, CUT, AT) == 2
    plant(store, "UPDATE incidents SET status = 'closed' WHERE id = 7")  # the hold ends with the incident
    assert store.count_expired_events(CUT, AT) == 3
    assert store.delete_events(["old-1", "old-held"]) == 2 and store.delete_events([]) == 0
    assert store.count_events() == 4


def test_ended_visits_go_with_their_presence_and_mail_and_resolved_alarms_age_out(store: Store) -> None:
    store.save_visitor("v-out", status="checked_out", checked_out_at=AT - 100, valid_until=AT + 100)
    store.save_visitor("v-noshow", status="expected", valid_until=AT - 50)
    store.save_visitor("v-in", status="checked_in", valid_until=AT - 50)
    store.save_visitor("v-later", status="expected", valid_until=AT + 50)
    assert sorted(store.ended_visits(AT)) == ["v-noshow", "v-out"]
    store.set_presence("v-out", "lobby", AT - 200)
    store.set_presence("v-in", "lobby", AT - 200)
    assert store.count_presence_of(["v-out", "v-in", "nobody"]) == 2 and store.count_presence_of([]) == 0
    plant(store, "INSERT INTO mail_outbox (id, kind, about, recipient, status, attempts, next_attempt_at, queued_at, "
                 "updated_at) VALUES ('m1', 'invitation', 'v-out', 'a@example.com', 'queued', 0, ?, ?, ?)", AT, AT, AT)
    assert store.delete_visitors(["v-out", "v-noshow"], batch=1) == 1
    assert sorted(v["id"] for v in store.visitor_records()) == ["v-in", "v-later"]
    assert one(store, "SELECT COUNT(*) FROM mail_outbox")[0][0] == 0
    for key, resolved in (("a1", AT - 10), ("a2", AT + 10), ("a3", None), ("a4", AT - 20)):
        alarm_id, _ = store.raise_alarm("forced_open", key=key, at=AT - 30, device="d", door="x", once=True)
        if resolved is not None:
            store.resolve(alarm_id, "ann", "ok", at=resolved)
    plant(store, "INSERT INTO incidents (id, title, severity, status, created_at, created_by) VALUES "
                 "(1, 't', 'low', 'open', ?, 'ann')", AT)
    plant(store, "INSERT INTO incident_items (incident, kind, ref, added_by, added_at) VALUES (1, 'alarm', 'a4', "
                 "'ann', ?)", AT)
    assert store.count_resolved_alarms_before(AT) == 1
    assert store.delete_resolved_alarms_before(AT) == 1
    assert sorted(a["id"] for a in store.alarms(limit=None)) == ["a2", "a3", "a4"]


def _world(store: Store) -> None:
    """Alice (a person with a card), her visit as a host, and everything about her the store holds."""
    store.write_people(people=[{"id": "alice", "name": "Alice", "kind": "employee", "clearance": 1,
                                "access_levels": "[]", "roles": "[]", "state": "active", "allowed_areas": "[]",
                                "escort_required": 0, "source": "people.toml", "desk_changed": 0,
                                "changed_at": AT}],
                       cards=[{"hash": "h-alice", "person": "alice", "format": "em4100", "last4": "1234"}],
                       states={"h-alice": "lost"}, at=AT)
    store.ingest_event(ev("e1", 1, person="alice", detail={"who": "alice", "name": "Alice"}), AT)
    store.ingest_event(ev("e2", 2, person=None, credential_hash="h-alice", detail={}), AT)
    store.ingest_event(ev("e3", 3, person="bob", detail={"escort": "alice"}, companions=("alice", "carl")), AT)
    store.ingest_event(ev("e4", 4, person="bob", detail={"escort": "ALICE"}), AT)  # another id: case-sensitive
    store.raise_alarm("forced_open", key="k", at=AT, device="d", door="x", detail={"person": "alice"}, once=True)
    store.save_visitor("alice", name="Alice", status="checked_out")
    store.save_visitor("v-2", name="Vic", host="alice", status="expected")
    store.add_visitor_consent("alice", "n1", True, AT, "desk")
    store.set_presence("alice", "lab", AT)
    plant(store, "INSERT INTO incidents (id, title, severity, status, created_at, created_by) VALUES "
                 "(3, 't', 'low', 'open', ?, 'ann')", AT)
    plant(store, "INSERT INTO incident_items (incident, kind, ref, since, until, added_by, added_at) VALUES "
                 "(3, 'person', 'alice', ?, ?, 'ann', ?)", OLD, NEW, AT)
    plant(store, "INSERT INTO incident_log (incident, at, actor, what, text) VALUES "
                 "(3, ?, 'ann', 'attached', 'person alice 2026-01-01..2026-06-01')", AT)
    plant(store, "INSERT INTO mail_outbox (id, kind, person, recipient, status, attempts, next_attempt_at, queued_at, "
                 "updated_at) VALUES ('m1', 'notice', 'alice', 'a@example.com', 'queued', 0, ?, ?, ?)", AT, AT, AT)
    plant(store, "INSERT INTO person_contacts (person, email, changed_at) VALUES ('alice', 'a@example.com', ?)", AT)
    for did, payload in (("d1", json.dumps({"person": "alice"})), ("d2", json.dumps({"person": "bob"})),
                         ("d3", None)):
        plant(store, "INSERT INTO webhook_deliveries (id, subscription, source, event_type, payload, state, attempts, "
                     "next_attempt_at, created_at, age_from, updated_at) VALUES (?, 's', ?, 'access', ?, 'pending', 0, "
                     "?, ?, ?, ?)", did, did, payload, AT, AT, AT, AT)
    plant(store, "INSERT INTO siem_queue (source, kind, person, stored_at, queued_at, message) VALUES "
                 "('event:e1', 'access', 'alice', ?, ?, 'm')", AT, AT)


def test_erasing_a_subject_pseudonymises_scrubs_and_deletes_in_one_transaction(store: Store) -> None:
    _world(store)
    cards, name = store.subject_cards_and_name("alice")
    assert (cards, name) == (["h-alice"], "Alice")
    assert [e["id"] for e in store.subject_events("alice", cards)] == ["e1", "e2"]
    assert "rowid" not in store.subject_events("alice", cards)[0]
    assert [v["name"] for v in store.visitor_rows("alice")] == ["Alice"]
    assert store.presence_rows("alice") == [{"person": "alice", "area": "lab", "since": AT}]

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return "ref-1" if value == "alice" else "[erased]" if value == "Alice" else value
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        return value

    before = store.people_version()
    counts = store.erase_subject_rows("alice", "ref-1", cards, scrub, AT + 1)
    assert counts == {"events": 2, "mentions": 2, "visits": 1, "consents": 1, "presence": 1, "card_states": 1,
                      "alarms": 1, "hosted_visits": 1, "people": 1, "cards": 1, "photos": 0, "mails": 1,
                      "contacts": 1, "agreements": 0, "webhooks": 1, "siem": 1}
    e1, e3 = store.event("e1"), store.event("e3")
    assert e1 is not None and e3 is not None
    assert (e1["person"], e1["credential_hash"], json.loads(e1["detail"])) == (
        "ref-1", None, {"who": "ref-1", "name": "[erased]"})
    assert json.loads(e3["detail"]) == {"escort": "ref-1"} and json.loads(e3["companions"]) == ["ref-1", "carl"]
    assert json.loads(store.event("e4")["detail"]) == {"escort": "ALICE"}  # type: ignore[index]
    assert store.alarm("k")["detail"] == {"person": "ref-1"}  # type: ignore[index]
    assert [v["host"] for v in store.visitor_records()] == ["ref-1"]
    assert store.person_row("alice") is None and store.card_rows() == [] and store.card_states() == []
    assert store.people_version() == before + 1
    assert store.erased_refs() == {"ref-1"}
    assert one(store, "SELECT ref FROM incident_items WHERE incident = 3") == [("ref-1",)]
    assert one(store, "SELECT text FROM incident_log WHERE incident = 3") == [("person ref-1 2026-01-01..2026-06-01",)]
    assert [r[0] for r in one(store, "SELECT id FROM webhook_deliveries ORDER BY id")] == ["d2", "d3"]
    assert one(store, "SELECT COUNT(*) FROM siem_queue")[0][0] == 0
    # Idempotent: a second erasure finds nothing more and remembers the pseudonym once.
    again = store.erase_subject_rows("alice", "ref-1", cards, scrub, AT + 2)
    assert again["events"] == 0 and again["people"] == 0 and store.erased_refs() == {"ref-1"}


def test_a_failing_erasure_leaves_everything_as_it_was(store: Store) -> None:
    _world(store)

    def scrub(value: Any) -> Any:
        raise RuntimeError("scrub failed")

    with pytest.raises(RuntimeError):
        store.erase_subject_rows("alice", "ref-1", ["h-alice"], scrub, AT)
    assert store.person_row("alice") is not None and store.erased_refs() == set()
    assert store.event("e1")["person"] == "alice"  # type: ignore[index]


def test_secure_delete_and_the_wal_checkpoint_are_sqlite_only(store: Store) -> None:
    store.enable_secure_delete()
    truncated = store.checkpoint_wal()
    if store.dialect == "sqlite":
        assert one(store, "PRAGMA secure_delete") == [(1,)] and truncated is True
    else:
        assert truncated is False
