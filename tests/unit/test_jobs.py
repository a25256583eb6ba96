"""The edge's jobs worker (edge/jobs.py): order, the newest policy only, deferred snapshots, survival, drain."""

from __future__ import annotations

import threading
from typing import Any

from doorkeep.contract import EventMsg
from edge.jobs import Barrier, Jobs, SaveNonces, StoreEvent, TakeSnapshot, VerifyPolicy
from simulators.wait import wait_until


def event(n: int) -> EventMsg:
    return EventMsg(id=f"e{n}", seq=0, ts="2026-12-06T08:00:00.000Z", device="pi", door="d", type="door_opened")


def test_jobs_run_in_submission_order_and_a_barrier_waits_for_what_came_before() -> None:
    seen: list[str] = []
    gate = threading.Event()

    def store(job: StoreEvent) -> None:
        gate.wait(2.0)  # a slow disk
        seen.append(job.event.id)

    jobs = Jobs({StoreEvent: store, Barrier: lambda j: j.then()})
    jobs.start()
    done = threading.Event()
    try:
        for n in range(3):
            jobs.submit(StoreEvent("t", event(n)))
        jobs.submit(Barrier(done.set))
        assert not done.wait(0.05), "the barrier passed events still being written"
        gate.set()
        assert done.wait(2.0)
        assert seen == ["e0", "e1", "e2"]
    finally:
        jobs.stop()


def test_only_the_newest_of_a_burst_of_policies_is_verified() -> None:
    verified: list[bytes] = []
    gate = threading.Event()
    jobs = Jobs({VerifyPolicy: lambda j: verified.append(j.payload), Barrier: lambda j: (gate.wait(2.0), j.then())})
    jobs.start()
    try:
        jobs.submit(Barrier(lambda: None))  # holds the worker while the burst arrives
        for n in range(5):
            jobs.submit(VerifyPolicy(b"v%d" % n))
        gate.set()
        assert wait_until(lambda: verified == [b"v4"], 2.0)
        assert jobs.stats.policies_superseded == 4
    finally:
        jobs.stop()


def test_a_snapshot_not_ready_waits_while_events_behind_it_are_written() -> None:
    order: list[str] = []
    ready = threading.Event()

    def snapshot(job: TakeSnapshot) -> float | None:
        if not ready.is_set():
            return 0.01  # the frame after the badge is still to come
        order.append("snapshot")
        return None

    jobs = Jobs({TakeSnapshot: snapshot, StoreEvent: lambda j: order.append(j.event.id)})
    jobs.start()
    try:
        jobs.submit(TakeSnapshot(camera=None, at=0.0, door="d", event_id="x"))
        jobs.submit(StoreEvent("t", event(1)))
        assert wait_until(lambda: order == ["e1"], 2.0), "the event waited behind a snapshot"
        ready.set()
        assert wait_until(lambda: order == ["e1", "snapshot"], 2.0)
        assert jobs.stats.deferred >= 1
    finally:
        jobs.stop()


def test_a_failing_job_is_counted_and_the_worker_goes_on() -> None:
    saved: list[bool] = []

    def save(job: SaveNonces) -> None:
        if job.data == b"bad":
            raise OSError("disk full")
        job.then(True)

    jobs = Jobs({SaveNonces: save})
    jobs.start()
    try:
        jobs.submit(SaveNonces(b"bad", saved.append))
        jobs.submit(SaveNonces(b"good", saved.append))
        assert wait_until(lambda: saved == [True], 2.0)
        assert jobs.stats.errors == 1
    finally:
        jobs.stop()


def test_stop_writes_everything_queued_first() -> None:
    seen: list[str] = []
    gate = threading.Event()

    def store(job: StoreEvent) -> None:
        gate.wait(0.2)
        seen.append(job.event.id)

    jobs = Jobs({StoreEvent: store})
    jobs.start()
    for n in range(4):
        jobs.submit(StoreEvent("t", event(n)))
    assert jobs.stop(5.0)
    assert seen == ["e0", "e1", "e2", "e3"]


class FakePump:
    """Steps counted; the first step asks to be stepped again 20 ms later, as a rate-limited pump does."""

    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> float | None:
        self.steps += 1
        return 0.02 if self.steps == 1 else None


def test_the_pump_is_stepped_when_woken_and_again_when_it_asks() -> None:
    pump: Any = FakePump()
    jobs = Jobs({})
    jobs.attach_pump(pump)
    jobs.start()
    try:
        jobs.pump_wake()
        assert wait_until(lambda: pump.steps == 2, 2.0)
        jobs.pump_wake()
        assert wait_until(lambda: pump.steps == 3, 2.0)
    finally:
        jobs.stop()
