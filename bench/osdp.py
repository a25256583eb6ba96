"""OSDP figures: card read to decision request, and what polling costs while nothing happens (issue 15).

doorkeep's control panel talks to doorkeep's simulated readers (simulators/osdp_pd.py ``OsdpPdSimulator``,
Secure Channel on) over a pty; libosdp's control panel, in the same run, to the same kind of reader. A pty
carries bytes instantly whatever the baud rate (docs: /work/shared/MEASURED.md), so both directions are paced at
the line rate: :class:`simulators.site.OsdpBusSimulator` (with ``baud``) holds what the control panel writes
for its time on the wire (10 bit times per byte, 8N1) before the readers get it, and the readers hold each reply for its own - an emulation of 9600 and
115200 baud, not a real line. libosdp's control panel is paced in its channel's write instead (writing byte by
byte made it time out at 9600 on the pty; packet-level pacing gives both CPs the same line delay).

* card -> decision request: from the card being put in the reader's queue to the CP handing it over (doorkeep:
  the ``on_card`` callback, where the edge agent publishes the decision request on the same thread; libosdp:
  its event callback). Each card is presented after a random pause (seeded, 0-100 ms), so it lands at a random
  point of the poll cycle, as a badge does: the wait for the next poll is part of the figure.
* idle: polls per second each reader sees, and the CPU time of the control panel's thread (the edge loop's
  thread, or the bus thread of the version before the loop) per second of wall time, with 1 and with 4
  readers on one bus. The simulated readers run in the same process, so the CP's thread also waits for the GIL
  they hold; waiting is not counted as CPU.

doorkeep's bus runs on a caller-provided ``edge.loop.Loop``, as in the edge agent, and opens the port itself.
Run: ``.venv/bin/python bench/osdp.py [--cards 50] [--idle-s 3] [--poll-ms 50] [--no-libosdp]``
(also from ``make bench``).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This file is named osdp.py: drop its own directory from the path so `import osdp` finds libosdp, not itself.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from edge.osdp.cp import OsdpBus, OsdpReaderSpec
from simulators.osdp_pd import OsdpPdSimulator
from simulators.site import OsdpBusSimulator
from simulators.wait import wait_until

KEY = bytes(range(16))
ADDR = 1
BAUDS = (9600, 115200)
TARGET_BAUD = 115200
TARGET_MEDIAN_MS = 10.0
MAX_PHASE_S = 0.1
"""Cards are presented after a random pause of up to this, so they fall anywhere in the poll cycle."""

_ON_LOOP = "loop" in inspect.signature(OsdpBus).parameters
"""True for the bus on the edge's reactor; False for the thread-per-bus version (the same bench measures both)."""


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def _summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values) * 1000:6.1f} ms  p99 {pct(values, 99) * 1000:6.1f} ms  "
            f"(n={len(values)})")


def _thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds the thread has used so far (Linux per-thread clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


@contextmanager
def doorkeep_bus(path: str, specs: list[OsdpReaderSpec], baud: int, poll_ms: int,
                 on_card: Callable[..., None]) -> Iterator[tuple[OsdpBus, threading.Thread]]:
    """A running bus on ``path``, opened by the bus itself as the edge opens it, and the thread it runs on."""
    loop = None
    kw: dict[str, Any] = {}
    if _ON_LOOP:
        from edge.loop import Loop

        loop = Loop(name="bench-edge-loop")
        kw["loop"] = loop
    bus = OsdpBus(path, specs, on_card, baudrate=baud, poll_ms=poll_ms, **kw)
    if loop is not None:
        loop.start()
        ok, _ = loop.call_and_wait(bus.start, 5)
        assert ok, "the loop did not start the bus"
        thread = next(t for t in threading.enumerate() if t.name == loop.name)
    else:
        bus.start()
        thread = bus._thread  # type: ignore[attr-defined]
    try:
        yield bus, thread
    finally:
        if loop is not None:
            loop.call_and_wait(bus.stop, 5)
            loop.stop()
            loop.close()
        else:
            bus.stop()


def bench_doorkeep_latency(baud: int, cards: int, poll_ms: int, rng: random.Random) -> list[float]:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY, line_baud=baud)
    wire = OsdpBusSimulator([sim], baud=baud)
    got: list[float] = []
    on_threads: set[str] = set()

    def on_card(door: str, card: Any, t_read: float) -> None:
        got.append(time.monotonic())
        on_threads.add(threading.current_thread().name)

    try:
        with doorkeep_bus(wire.path, [OsdpReaderSpec("bench", ADDR, KEY, repeat_ignore_s=0.0)], baud, poll_ms,
                          on_card) as (bus, thread):
            if not wait_until(lambda: bus.stats(ADDR).online, 10):
                raise SystemExit(f"doorkeep CP did not come online at {baud} baud: {bus.stats(ADDR)}")
            latencies = _present_cards(sim, got, cards, rng)
            assert on_threads <= {thread.name}, f"on_card ran on {on_threads}, not on {thread.name}"
    finally:
        wire.close()
    return latencies


def _present_cards(sim: Any, got: list[float], cards: int, rng: random.Random) -> list[float]:
    latencies = []
    pause = threading.Event()
    for i in range(cards):
        pause.wait(rng.uniform(0.0, MAX_PHASE_S))
        before = len(got)
        t0 = time.monotonic()
        sim.present_card("wiegand26", 1, i + 1)
        if wait_until(lambda before=before: len(got) > before, 5, interval=0.001):
            latencies.append(got[before] - t0)
    return latencies


def bench_doorkeep_idle(baud: int, readers: int, poll_ms: int, seconds: float) -> tuple[float, float, float]:
    """(polls per second per reader, median interval between two polls of one reader, CPU % of the CP thread)."""
    pds = [OsdpPdSimulator(address=ADDR + i, scbk=KEY, line_baud=baud) for i in range(readers)]
    wire = OsdpBusSimulator(pds, baud=baud)
    specs = [OsdpReaderSpec(f"door{i}", ADDR + i, KEY) for i in range(readers)]
    try:
        with doorkeep_bus(wire.path, specs, baud, poll_ms, lambda *a: None) as (bus, thread):
            if not wait_until(lambda: all(bus.stats(ADDR + i).online for i in range(readers)), 20):
                raise SystemExit(f"doorkeep CP: not every reader online at {baud} baud: "
                                 f"{[bus.stats(ADDR + i) for i in range(readers)]}")
            wait_until(lambda: False, 0.3)  # let the handshakes' last replies settle
            start, cpu0 = time.monotonic(), _thread_cpu(thread)
            threading.Event().wait(seconds)
            end, cpu1 = time.monotonic(), _thread_cpu(thread)
    finally:
        wire.close()
    rates, gaps = [], []
    for pd in pds:
        times = [t for t in pd.poll_times if start <= t <= end]
        rates.append(len(times) / (end - start))
        gaps.extend(b - a for a, b in itertools.pairwise(times))
    return statistics.mean(rates), statistics.median(gaps) if gaps else float("nan"), \
        100.0 * (cpu1 - cpu0) / (end - start)


def bench_libosdp(baud: int, cards: int, rng: random.Random) -> tuple[list[float], float]:
    """libosdp's CP: card latencies, and polls per second its reader sees while idle."""
    import osdp

    sim = OsdpPdSimulator(address=ADDR, scbk=KEY, line_baud=baud)
    fd = os.open(sim.path, os.O_RDWR | os.O_NOCTTY)
    os.set_blocking(fd, False)
    per_byte = 10.0 / baud

    class PacedChannel(osdp.Channel):
        def read(self, max_bytes: int) -> bytes:
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                return b""

        def write(self, buf: bytes) -> int:
            time.sleep(per_byte * len(buf))
            return os.write(fd, buf)

        def flush(self) -> None:
            return None

    got: list[float] = []

    def on_event(address: int, event: dict) -> int:
        if event.get("event") == osdp.Event.CardRead:
            got.append(time.monotonic())
        return 0

    cp = osdp.ControlPanel([osdp.PDInfo(ADDR, PacedChannel(), scbk=KEY)], log_level=osdp.LogLevel.Error,
                           event_handler=on_event)
    cp.start()
    try:
        if not wait_until(lambda: cp.is_online(ADDR) and cp.is_sc_active(ADDR), 15):
            raise SystemExit(f"libosdp CP did not come online at {baud} baud")
        latencies = _present_cards(sim, got, cards, rng)
        start = time.monotonic()
        threading.Event().wait(2.0)
        rate = len([t for t in sim.poll_times if t >= start]) / (time.monotonic() - start)
    finally:
        cp.teardown() if hasattr(cp, "teardown") else cp.stop()
        os.close(fd)
        sim.close()
    return latencies, rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=int, default=50)
    ap.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle polling measured per row")
    ap.add_argument("--poll-ms", type=int, default=50, help="doorkeep's poll_ms (libosdp polls on its own)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--no-libosdp", action="store_true", help="skip libosdp's control panel")
    args = ap.parse_args()
    version = "on the edge loop, adaptive polling" if _ON_LOOP else "one thread per bus, fixed poll_ms"
    print(f"OSDP over a paced pty, Secure Channel on; doorkeep CP {version}, poll_ms={args.poll_ms}")
    print(f"\ncard -> decision request (one reader, card at a random point of the poll cycle)")
    rng = random.Random(args.seed)
    for baud in BAUDS:
        dk = bench_doorkeep_latency(baud, args.cards, args.poll_ms, rng)
        target = ""
        if baud == TARGET_BAUD and dk:
            median_ms = statistics.median(dk) * 1000
            target = (f"   target median <= {TARGET_MEDIAN_MS:.0f} ms: "
                      f"{'met' if median_ms <= TARGET_MEDIAN_MS else 'MISSED'}")
        print(f"  {baud:>6} baud  doorkeep: {_summary(dk)}{target}")
        if not args.no_libosdp:
            lo, lo_rate = bench_libosdp(baud, args.cards, rng)
            print(f"               libosdp : {_summary(lo)}   (idle: {lo_rate:5.1f} polls/s)")
    print(f"\nidle polling (no card), {args.idle_s:.0f} s per row")
    for baud in BAUDS:
        for readers in (1, 4):
            rate, gap, cpu = bench_doorkeep_idle(baud, readers, args.poll_ms, args.idle_s)
            print(f"  {baud:>6} baud, {readers} reader{'s' if readers > 1 else ' '}: {rate:6.1f} polls/s per reader"
                  f"  (every {gap * 1000:5.1f} ms)  CP thread CPU {cpu:5.1f} % of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
