"""server/store_alarm_desk.py on both engines: escalation marks, operator preferences, and the alarm-write hook that
wakes the desk's alarm watch (SQLite: temporary triggers calling Python; PostgreSQL: migration 015's triggers and
``LISTEN``/``NOTIFY`` on the store's own connection). The hook must fire, on both, before the write returns, for
exactly the writes the counter shows (tests/unit/test_desk_alarm_wake.py pins the same list on SQLite through a
whole server).

PostgreSQL comes from tests/pg.py (a fresh database per test; skipped with the reason when none answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


from server.alarm_watch import AlarmWatch
from server.store import Store
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)


def counter(store: Store) -> Callable[[Callable[[], Any]], int]:
    writes: list[int] = []
    store.on_alarm_write(lambda: writes.append(1))

    def count(fn: Callable[[], Any]) -> int:
        before = len(writes)
        fn()
        return len(writes) - before

    return count


def test_the_hook_fires_before_the_write_returns_for_what_the_counter_shows_only(store: Store) -> None:
    count = counter(store)
    key = "device_offline:pi-lobby"
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=10.0, device="pi-lobby")) == 1
    alarm_id = store.open_alarm(key)["id"]
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=11.0, device="pi-lobby")) == 0
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=11.0, device="pi-lobby",
                                           detail={"last_seen": 1})) == 0  # detail refreshed: nothing shown
    assert count(lambda: store.clear_alarm(key, 12.0)) == 0
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=15.0, device="pi-lobby")) == 1  # recurs
    assert count(lambda: store.mark_escalated(alarm_id, 16.0)) == 1
    assert count(lambda: store.mark_escalated(alarm_id, 17.0)) == 0  # matched no row: no wake-up
    assert count(lambda: store.acknowledge(alarm_id, "dex", at=18.0)) == 1
    assert count(lambda: store.acknowledge(alarm_id, "dex", at=19.0)) == 0
    assert count(lambda: store.resolve(alarm_id, "dex", "replaced", at=20.0)) == 1
    other, _ = store.raise_alarm("forced_open", key="forced_open-ev-1", at=21.0, once=True, device="pi-lobby",
                                 door="lobby_out")
    with store.connection_for_tests(port=True) as conn:
        def delete(alarm: str) -> None:  # as retention deletes (server/store_privacy.py)
            with conn.transaction():
                conn.execute("DELETE FROM alarms WHERE id = ?", [alarm])

        assert count(lambda: delete(alarm_id)) == 0  # a resolved alarm going: the counter never showed it
        assert count(lambda: delete(other)) == 1  # an open one going: it did


def test_a_burst_wakes_at_least_once_and_a_failing_listener_never_fails_the_write(
        store: Store) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    store.on_alarm_write(broken)
    count = counter(store)

    def burst() -> None:
        with store.transaction():
            for i in range(3):  # each commits (store methods commit what is open, as `with sqlite3_connection`)
                store.raise_alarm("forced_open", key=f"forced_open-ev-{i}", at=1.0, once=True, device="pi-lobby",
                                  door="lobby_out")

    assert count(burst) == 3
    assert all(store.alarm(f"forced_open-ev-{i}") is not None for i in range(3))

    def one_transaction() -> None:
        with store.connection_for_tests(port=True) as conn, conn.transaction():
            conn.execute("UPDATE alarms SET acknowledged_at = 2.0 WHERE acknowledged_at IS NULL")

    # Three rows in one transaction: SQLite calls back per row, inside it; PostgreSQL once, as it commits (equal
    # notifications of one transaction fold into one).
    assert count(one_transaction) == (3 if store.dialect == "sqlite" else 1)
    n = count(lambda: store.raise_alarm("forced_open", key="forced_open-ev-9", at=2.0, once=True,
                                        device="pi-lobby", door="lobby_out"))
    assert n == 1 and store.alarm("forced_open-ev-9") is not None


def test_the_desks_alarm_watch_is_pending_as_soon_as_an_alarm_is_written(store: Store) -> None:
    watch = AlarmWatch(None, lambda summary: None)  # type: ignore[arg-type]  # only its wake-up is used here
    store.on_alarm_write(watch.wake)
    store.set_presence("alice", "lobby", 1.0)  # an ordinary write wakes nothing
    assert not watch.pending
    store.raise_alarm("forced_open", key="forced_open-ev-1", at=1.0, once=True, device="pi-lobby", door="lobby_out")
    assert watch.pending  # no wait: the wake-up is in before raise_alarm returns, on both engines


def test_postgresql_also_wakes_on_another_processs_alarm_at_the_next_statement(tmp_path: Path,
                                                                               pg_url: str) -> None:  # noqa: F811
    desk, other = Store(tmp_path / "a", url=pg_url), Store(tmp_path / "b", url=pg_url)
    try:
        watch = AlarmWatch(None, lambda summary: None)  # type: ignore[arg-type]
        desk.on_alarm_write(watch.wake)
        other.raise_alarm("forced_open", key="forced_open-ev-1", at=1.0, once=True, device="pi-lobby",
                          door="lobby_out")
        assert not watch.pending  # nothing read yet on the desk's connection
        desk.count_events()  # any statement on the desk's connection delivers what other sessions notified
        assert watch.pending
    finally:
        desk.close()
        other.close()


def test_escalation_marks_and_unacknowledged_alarms(store: Store) -> None:
    a, _ = store.raise_alarm("forced_open", key="forced_open-a", at=1.0, once=True, device="pi-lobby", door="d1")
    b, _ = store.raise_alarm("forced_open", key="forced_open-b", at=2.0, once=True, device="pi-lobby", door="d2")
    c, _ = store.raise_alarm("forced_open", key="forced_open-c", at=3.0, once=True, device="pi-lobby", door="d3")
    store.acknowledge(b, "dex", at=4.0)
    assert store.mark_escalated(c, 5.0) and not store.mark_escalated(c, 6.0) and not store.mark_escalated(b, 6.0)
    assert store.unacknowledged_alarms() == [{"id": a, "type": "forced_open", "raised_at": 1.0,
                                              "last_raised_at": 1.0}]
    assert store.alarm(c)["escalated_at"] == 5.0


def test_operator_preferences_are_per_operator_and_replaced(store: Store) -> None:
    assert store.operator_pref("dex", "alarm_sound") is None
    store.set_operator_pref("dex", "alarm_sound", "muted", 1.0)
    store.set_operator_pref("ann", "alarm_sound", "on", 1.0)
    store.set_operator_pref("dex", "alarm_sound", "on", 2.0)
    assert (store.operator_pref("dex", "alarm_sound"), store.operator_pref("ann", "alarm_sound")) == ("on", "on")
    assert store.operator_pref("dex", "other") is None
    assert len([r for r in store.rows("operator_prefs") if r["operator"] == "dex"]) == 1
