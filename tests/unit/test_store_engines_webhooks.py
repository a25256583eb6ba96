"""server/store_webhooks.py on both engines: subscriptions, the delivery queue fed from cursors (a repeat is a
no-op), claiming, outcomes, retries, counts and pruning, each asserted on SQLite and on PostgreSQL (tests/pg.py;
skipped with the reason when no PostgreSQL answers).
"""

from __future__ import annotations

from typing import Any

import pytest

from server.store import Store
from server.store_webhooks import ALARMS_CURSOR, ESCALATIONS_CURSOR, EVENTS_CURSOR
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)

AT = 1_780_000_000.0


def sub(wid: str, **kw: Any) -> dict[str, Any]:
    return {"id": wid, "name": f"hook {wid}", "url": f"https://example.com/{wid}", "secret": f"s-{wid}",
            "event_types": ["access.denied"], "doors": [], "decision": None, "include_names": False, "enabled": True,
            "created_by": "ann", "created_at": AT, "updated_at": AT, **kw}


def delivery(did: str, wid: str, source: str, at: float) -> dict[str, Any]:
    return {"id": did, "subscription": wid, "source": source, "event_type": "access.denied",
            "payload": f'{{"id": "{did}"}}', "created_at": at}


def test_subscriptions_are_stored_changed_listed_and_deleted_with_their_deliveries(store: Store) -> None:
    store.add_webhook(sub("w2", created_at=AT + 1))
    store.add_webhook(sub("w1", doors=["lab"], include_names=True))
    assert [w["id"] for w in store.webhooks()] == ["w1", "w2"]
    w1 = store.webhook("w1")
    assert w1 is not None and "secret" not in w1
    assert (w1["doors"], w1["include_names"], w1["enabled"], w1["decision"]) == (["lab"], True, True, None)
    assert store.update_webhook("w2", {"enabled": False, "event_types": ["alarm.raised"], "decision": "denied"})
    assert store.update_webhook("nope", {"enabled": False}) is False
    assert store.update_webhook("w1", {}) is True and store.update_webhook("nope", {}) is False
    w2 = store.webhook("w2")
    assert w2 is not None and (w2["enabled"], w2["event_types"], w2["decision"]) == (False, ["alarm.raised"], "denied")
    assert [w["id"] for w in store.webhooks(enabled_only=True)] == ["w1"]
    assert store.webhook_secrets(["w1", "w2", "nope"]) == {"w1": "s-w1", "w2": "s-w2"} and store.webhook_secrets([]) == {}
    store.queue_webhook_deliveries([delivery("d1", "w1", "event:e1", AT)], {})
    assert store.delete_webhook("w1") == 1 and store.delete_webhook("w1") is None
    assert store.webhook_delivery("d1") is None


def test_queueing_is_idempotent_and_moves_the_cursors_in_the_same_transaction(store: Store) -> None:
    cursors = store.webhook_cursors()
    assert cursors[EVENTS_CURSOR] == (0.0, None, None) and cursors[ALARMS_CURSOR] == (0.0, None, None)
    assert cursors[ESCALATIONS_CURSOR][0] == 0.0
    store.add_webhook(sub("w1"))
    rows = [delivery("d1", "w1", "event:e1", AT), delivery("d2", "w1", "event:e2", AT + 1)]
    assert store.queue_webhook_deliveries(rows, {EVENTS_CURSOR: (2.0, "e2", AT + 1)}) == 2
    assert store.queue_webhook_deliveries([delivery("d9", "w1", "event:e1", AT)], {EVENTS_CURSOR: (3.0, "e3", AT)}) == 0
    assert store.webhook_cursors()[EVENTS_CURSOR] == (3.0, "e3", AT)
    assert [d["id"] for d in store.webhook_deliveries()] == ["d2", "d1"]
    with pytest.raises(Exception):  # a bad row: neither the queue nor the cursor moves
        store.queue_webhook_deliveries([delivery("d3", "w1", "event:e3", AT), {**delivery("d4", "w1", "x", AT),
                                        "event_type": None}], {EVENTS_CURSOR: (9.0, "e9", AT)})
    assert store.webhook_cursors()[EVENTS_CURSOR] == (3.0, "e3", AT) and store.webhook_delivery("d3") is None


def test_escalations_are_read_by_time_from_since_inclusive(store: Store) -> None:
    for key, at in (("a1", AT), ("a2", AT + 5), ("a3", AT + 9)):
        store.raise_alarm("forced_open", key=key, at=at, device="d", door="x", once=True)
    with store.connection_for_tests(port=True) as conn, conn.transaction():
        conn.execute("UPDATE alarms SET escalated_at = raised_at WHERE id IN ('a2', 'a3')")
    rows = store.webhook_source_escalations(AT + 5, 10)
    assert [r["id"] for r in rows] == ["a2", "a3"] and isinstance(rows[0]["rowid"], int) and list(rows[0])[0] == "rowid"
    assert [r["id"] for r in store.webhook_source_escalations(AT + 6, 1)] == ["a3"]


def test_claim_lease_outcomes_retry_counts_and_prune(store: Store) -> None:
    store.add_webhook(sub("w1"))
    store.add_webhook(sub("off", enabled=False))
    store.queue_webhook_deliveries([delivery("d1", "w1", "e1", AT), delivery("d2", "w1", "e2", AT + 1),
                                    delivery("d3", "w1", "e3", AT + 2), delivery("dx", "off", "e1", AT - 9)], {})
    assert store.next_webhook_due() == AT
    claimed = store.claim_webhook_deliveries(AT + 1, AT + 60, 10)
    assert [c["id"] for c in claimed] == ["d1", "d2"] and claimed[0]["url"] == "https://example.com/w1"
    assert claimed[0]["payload"] == '{"id": "d1"}' and claimed[0]["attempts"] == 0
    assert store.claim_webhook_deliveries(AT + 1, AT + 60, 10) == []  # leased meanwhile
    store.record_webhook_outcomes([("d1", "delivered", 1, AT + 1, None, 204),
                                   ("d2", "dead", 5, AT + 1, "x" * 600, 500),
                                   ("gone", "delivered", 1, AT, None, 200)], AT + 2)
    d1, d2 = store.webhook_delivery("d1"), store.webhook_delivery("d2")
    assert d1 is not None and (d1["state"], d1["payload"], d1["delivered_at"], d1["last_status"]) == (
        "delivered", None, AT + 2, 204)
    assert d2 is not None and (d2["state"], len(d2["last_error"]), d2["attempts"]) == ("dead", 500, 5)
    assert store.webhook_delivery_counts() == {"pending": 2, "delivered": 1, "dead": 1}
    assert store.webhook_delivery_counts("off") == {"pending": 1, "delivered": 0, "dead": 0}
    store.claim_webhook_deliveries(AT + 2, AT + 60, 10)
    assert store.release_webhook_leases(AT + 3) == 1  # d3
    assert store.retry_webhook_deliveries(now=AT + 4, subscription="w1") == ["d2"]
    d2 = store.webhook_delivery("d2")
    assert d2 is not None and (d2["state"], d2["attempts"], d2["age_from"], d2["next_attempt_at"]) == (
        "pending", 0, AT + 4, AT + 4)
    assert store.retry_webhook_deliveries(now=AT, delivery_id="d1") == []
    assert [d["id"] for d in store.webhook_deliveries(subscription="w1", state="pending")] == ["d2", "d3"]
    assert store.prune_webhook_deliveries(delivered_before=AT + 3, dead_before=AT) == 1
    assert store.webhook_delivery("d1") is None
