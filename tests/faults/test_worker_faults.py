"""Several server workers on PostgreSQL under faults (issue 20; docs/scale.md "Several server workers").

The stack of tests/faults/test_faults.py with the server as two ``doorkeep server --worker`` processes, ``a``
(started first: it leads) and ``b`` (a standby answering its share of the requests), on one PostgreSQL store. A
killed worker loses nothing: every badge is stored once with the decision it should have had, and the doors get
the server's answers again within 2 s of the kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from simulators.faults import FaultStack, wait_for
from simulators.site import mosquitto_installed
from tests.faults.test_faults import AFTER, assert_clean, more_badges, no_alarms_left, settle, warm_up
from tests.pg import pg_url  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e

#: The issue's bound: decisions by the server again within this long after a worker is killed.
RESUME_S = 2.0


@pytest.fixture
def workers(tmp_path: Path, pg_url: str) -> Iterator[FaultStack]:  # noqa: F811
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    with FaultStack(tmp_path, store_url=pg_url, workers=("a", "b")) as stack:
        assert stack.leader() == "a"
        yield stack


def server_decided_since(stack: FaultStack, at: float) -> float | None:
    """When the first access event the server decided after ``at`` reached the store, or None yet."""
    rows = stack.query("SELECT MIN(received_at) FROM events WHERE type = 'access' AND decided_by = 'server' "
                       "AND received_at > ?", at)
    return rows[0][0] if rows and rows[0][0] is not None else None


def resumed_since(stack: FaultStack, at: float, timeout: float = 15) -> float:
    assert wait_for(lambda: server_decided_since(stack, at) is not None, timeout), \
        f"no decision by the server after the fault\n{stack.log('edge')}\n{stack.log('server')}"
    return server_decided_since(stack, at) - at  # type: ignore[operator]


def both_decide(stack: FaultStack) -> bool:
    """Whether each worker has answered requests (the broker hands them out in turn while both subscribe)."""
    by = stack.decisions_by_worker()
    return by.get("a", 0) > 0 and by.get("b", 0) > 0


@pytest.mark.parametrize("victim", ["a", "b"])
def test_a_worker_killed_under_load(workers: FaultStack, fault_row, victim: str) -> None:
    stack = workers
    warm_up(stack)
    assert wait_for(lambda: both_decide(stack), 10), stack.decisions_by_worker()
    heard = len(stack.watcher.server_availability)  # type: ignore[union-attr]
    at = stack.kill_worker(victim)
    survivor = "b" if victim == "a" else "a"
    before = stack.decisions_by_worker()[survivor]
    if victim == "a":
        # The standby takes the lead (the killed session's lock is freed at once) and says online again.
        assert wait_for(lambda: stack.leader() == survivor, 10), stack.log("server")
    resume = resumed_since(stack, at)
    more_badges(stack, AFTER)
    verdict = settle(stack)
    role = "the leader: b takes over" if victim == "a" else "a standby"
    fault_row(f"server worker kill -9 ({role})", verdict, resume,
              f"2 workers on PostgreSQL; server decisions again {resume:.2f} s after the kill")
    assert_clean(stack, verdict)
    assert resume <= RESUME_S, f"the server answered again only {resume:.2f} s after the kill"
    assert stack.leader() == survivor
    assert wait_for(lambda: stack.decisions_by_worker()[survivor] > before, 5), "the survivor answered nothing"
    # The leader's last will waits (MQTT 5 will delay) and the new leader took its session over first: the doors never
    # heard the server go, and kept asking the workers.
    assert set(stack.watcher.server_availability[heard:]) <= {"online"}, stack.watcher.server_availability[heard:]  # type: ignore[union-attr]
    no_alarms_left(stack)


def test_a_leader_that_loses_its_database_session_stops_and_the_standby_leads(workers: FaultStack, fault_row) -> None:
    """Fencing: a leader that cannot confirm it still leads exits (status 3) without a word, so it never speaks
    for the site beside the next leader."""
    stack = workers
    warm_up(stack)
    with psycopg.connect(stack.store_url or "", autocommit=True) as admin:
        (ended,) = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                 "application_name = 'doorkeep worker a' AND datname = current_database()"
                                 ).fetchone()  # type: ignore[misc]
    at = stack.kill_worker("none")  # only the time: nobody is killed here
    assert ended == 1
    assert wait_for(lambda: stack.workers["a"].poll() is not None, 10), stack.log("server-a")
    assert stack.workers["a"].returncode == 3, stack.log("server-a")
    assert wait_for(lambda: stack.leader() == "b", 10), stack.log("server")
    resume = resumed_since(stack, at)
    more_badges(stack, AFTER)
    verdict = settle(stack)
    fault_row("server worker loses its database session (the leader)", verdict, resume,
              "it exits with status 3; b leads")
    assert_clean(stack, verdict)
    assert "cannot confirm it still leads" in stack.log("server-a")
