"""server/store_mail.py on both engines: the durable mail queue (enqueue, claim with a lease, outcomes, leases
released at start), its listings in time order with the rowid tie-break, counts, a subject's mail, and people's
addresses. On PostgreSQL a claim skips the rows another sender holds (``FOR UPDATE SKIP LOCKED``).

PostgreSQL comes from tests/pg.py (a fresh database per test; skipped with the reason when none answers).
"""

from __future__ import annotations

from pathlib import Path


from server.store import Store
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)


def enqueue(store: Store, mail_id: str, at: float, **kw: object) -> None:
    store.enqueue_mail(mail_id, "invitation", f"{mail_id}@example.org", f"subject {mail_id}", b"bytes " +
                       mail_id.encode(), at, **kw)  # type: ignore[arg-type]


def test_claims_lease_what_is_due_oldest_first_and_outcomes_are_recorded(store: Store) -> None:
    assert store.next_mail_due() is None
    for mail_id, at in (("m1", 10.0), ("m2", 5.0), ("m3", 10.0), ("m4", 50.0)):
        enqueue(store, mail_id, at)
    assert store.next_mail_due() == 5.0
    claimed = store.claim_due_mail(20.0, lease_until=80.0, limit=2)
    assert [(r["id"], r["message"], r["attempts"]) for r in claimed] == [("m2", b"bytes m2", 0), ("m1", b"bytes m1", 0)]
    assert [r["id"] for r in store.claim_due_mail(20.0, lease_until=80.0, limit=5)] == ["m3"]  # leased: not again
    assert store.claim_due_mail(20.0, lease_until=80.0, limit=5) == []
    assert store.release_mail_leases(21.0) == 3  # the sender that held them is gone: due at once
    assert [r["id"] for r in store.claim_due_mail(21.0, lease_until=90.0, limit=5)] == ["m2", "m1", "m3"]
    store.record_mail_outcomes([("m1", "sent", 1, 0.0, None, None),
                                ("m2", "failed", 5, 0.0, "550 " + "x" * 600, None),
                                ("m3", "queued", 1, 60.0, "421 later", b"composed")], at=22.0)
    assert store.mail_message("m1") is None  # sent: the body is dropped
    assert store.mail_message("m2") == b"bytes m2"  # dead letter: kept for an admin
    assert store.mail_message("m3") == b"composed" and store.mail_message("nope") is None
    assert store.mail_counts() == {"queued": 2, "sent": 1, "failed": 1}
    rows = {r["id"]: r for r in store.mail_records()}
    assert (rows["m1"]["status"], rows["m1"]["sent_at"], rows["m1"]["last_error"]) == ("sent", 22.0, None)
    assert len(rows["m2"]["last_error"]) == 500 and rows["m3"]["next_attempt_at"] == 60.0
    assert store.release_mail_leases(23.0) == 0  # outcomes ended every lease
    assert store.next_mail_due() == 50.0


def test_listings_are_newest_first_with_the_arrival_order_breaking_ties(store: Store) -> None:
    enqueue(store, "b", 1.0, about="v-1")
    enqueue(store, "a", 1.0, about="v-1")
    enqueue(store, "c", 2.0, person="alice")
    enqueue(store, "d", 0.5, about="v-2")
    assert [r["id"] for r in store.mail_records()] == ["c", "a", "b", "d"]
    assert [r["id"] for r in store.mail_records(about="v-1", status="queued", limit=1)] == ["a"]
    assert store.mail_records(kind="notice") == []
    assert all("message" not in r and "rowid" not in r for r in store.mail_records())
    assert [r["id"] for r in store.subject_mail("v-1")] == ["b", "a"]
    assert [r["id"] for r in store.subject_mail("alice")] == ["c"]


def test_a_persons_address_is_set_changed_and_removed(store: Store) -> None:
    assert store.person_email("alice") is None
    assert store.set_person_email("alice", "a@example.org", 1.0)
    assert not store.set_person_email("alice", "a@example.org", 2.0)
    assert store.set_person_email("alice", "alice@example.org", 3.0)
    assert store.person_email("alice") == "alice@example.org"
    assert store.set_person_email("alice", None, 4.0) and not store.set_person_email("alice", "", 5.0)
    assert store.person_email("alice") is None


def test_on_postgresql_a_claim_skips_what_another_sender_holds(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    one, two = Store(tmp_path / "a", url=pg_url), Store(tmp_path / "b", url=pg_url)
    try:
        for mail_id, at in (("m1", 1.0), ("m2", 2.0), ("m3", 3.0)):
            enqueue(one, mail_id, at)
        with one.connection_for_tests(port=True) as conn, conn.transaction():
            # Another sender mid-claim: it holds m1 (read, not yet marked leased).
            conn.execute("SELECT id FROM mail_outbox WHERE id = 'm1' FOR UPDATE")
            assert [r["id"] for r in two.claim_due_mail(10.0, lease_until=70.0, limit=5)] == ["m2", "m3"]
        assert [r["id"] for r in two.claim_due_mail(10.0, lease_until=70.0, limit=5)] == ["m1"]
    finally:
        one.close()
        two.close()
