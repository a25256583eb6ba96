"""The edge's reactor (edge/loop.py): fds, timers on two clocks, hand-offs from other threads, and survival."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from doorkeep.clock import FakeClock
from edge.loop import Loop
from simulators.wait import wait_until


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[Loop]:
    lp = Loop(clock, name="test-loop")
    lp.start()
    yield lp
    assert lp.stop(2.0)
    lp.close()


def on_loop(loop: Loop, fn, timeout: float = 2.0):  # type: ignore[no-untyped-def]
    done, result = loop.call_and_wait(fn, timeout)
    assert done, "the loop did not run the call"
    return result


def test_a_door_timer_fires_when_the_injected_clock_reaches_it_not_before(loop: Loop, clock: FakeClock) -> None:
    fired: list[float] = []
    on_loop(loop, lambda: loop.call_later(30.0, lambda: fired.append(clock.monotonic())))
    on_loop(loop, lambda: None)  # a full turn later: nothing, the fake clock has not moved
    assert fired == []
    clock.advance(29.9)
    loop.wake()
    on_loop(loop, lambda: None)
    assert fired == []
    clock.advance(0.1)
    loop.wake()
    assert wait_until(lambda: fired == [clock.monotonic()], 2.0)


def test_wire_timers_run_on_real_time_whatever_the_injected_clock_does(loop: Loop) -> None:
    fired = threading.Event()
    started = time.monotonic()
    on_loop(loop, lambda: loop.call_later(0.05, fired.set, wire=True))
    assert fired.wait(2.0)
    assert time.monotonic() - started >= 0.05


def test_timers_run_in_deadline_order_and_a_cancelled_one_never_runs(loop: Loop, clock: FakeClock) -> None:
    ran: list[str] = []

    def schedule() -> None:
        loop.call_later(3.0, ran.append, "c")
        loop.call_later(1.0, ran.append, "a")
        loop.call_later(2.0, ran.append, "b").cancel()
        loop.call_later(2.5, ran.append, "b2")

    on_loop(loop, schedule)
    clock.advance(5.0)
    loop.wake()
    assert wait_until(lambda: len(ran) == 3, 2.0)
    assert ran == ["a", "b2", "c"]


def test_a_hand_off_from_another_thread_runs_on_the_loop_thread(loop: Loop) -> None:
    where: list[str] = []
    done = threading.Event()

    def from_thread() -> None:
        loop.call_soon_threadsafe(lambda: (where.append(threading.current_thread().name), done.set()))

    t = threading.Thread(target=from_thread)
    t.start()
    t.join()
    assert done.wait(2.0)
    assert where == ["test-loop"]


def test_a_readable_fd_calls_back_on_the_loop_and_can_be_removed(loop: Loop) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    got: list[bytes] = []

    def readable() -> None:
        got.append(os.read(r, 100))

    try:
        on_loop(loop, lambda: loop.add_reader(r, readable))
        os.write(w, b"0F00A1B2C3\r\n")
        assert wait_until(lambda: got == [b"0F00A1B2C3\r\n"], 2.0)
        on_loop(loop, lambda: loop.remove_reader(r))
        os.write(w, b"more")
        on_loop(loop, lambda: None)
        on_loop(loop, lambda: None)
        assert got == [b"0F00A1B2C3\r\n"], "a removed fd still called back"
    finally:
        os.close(r)
        os.close(w)


def test_a_callback_that_raises_is_counted_and_the_loop_goes_on(loop: Loop) -> None:
    def boom() -> None:
        raise RuntimeError("a handler bug")

    loop.call_soon_threadsafe(boom)
    assert on_loop(loop, lambda: "still turning") == "still turning"
    assert loop.errors == 1


def test_flush_hooks_run_after_every_turn_that_ran_something(loop: Loop) -> None:
    order: list[str] = []
    on_loop(loop, lambda: loop.add_flush(lambda: order.append("flush")))
    order.clear()
    on_loop(loop, lambda: order.append("call"))
    assert wait_until(lambda: "flush" in order, 2.0)
    assert order.index("call") < order.index("flush")


def test_a_timer_set_from_another_thread_is_pushed_by_the_loop(loop: Loop, clock: FakeClock) -> None:
    fired = threading.Event()
    loop.call_later(1.0, fired.set)  # from this (test) thread
    clock.advance(1.0)
    loop.wake()
    assert fired.wait(2.0)


def test_before_it_runs_the_owner_may_set_up_and_stop_ends_the_thread(clock: FakeClock) -> None:
    lp = Loop(clock, name="later")
    ran = threading.Event()
    assert lp.in_loop()  # nobody's yet: the owner sets fds and timers up on its own thread
    lp.call_later(0.0, ran.set)
    lp.start()
    assert ran.wait(2.0)
    assert not lp.in_loop()
    assert lp.stop(2.0)
    assert not any(t.name == "later" for t in threading.enumerate())
    lp.close()
