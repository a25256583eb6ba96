"""OSDP figures: card-read-to-decision-request latency and poll cycle time, doorkeep's CP beside libosdp's.

Both control panels talk, one after the other in the same run, to the same simulated reader
(simulators/osdp_pd.py OsdpPdSimulator, Secure Channel on) over a pty. A pty carries bytes instantly whatever
the baud rate (docs: /work/shared/MEASURED.md), so both directions are paced here at the line rate: each byte
is held back for its time on the wire (10 bit times per byte, 8N1) before it is written whole - an emulation
of 9600 and 115200 baud, not a real line. (Writing byte by byte instead made libosdp's CP time out at 9600 on
the pty; packet-level pacing gives both CPs the same line delay.)

* latency: from the card being put in the reader's queue to the CP handing it over (doorkeep: the ``on_card``
  callback, where the edge agent asks for a decision; libosdp: its event callback). It includes the wait for
  the next poll, so it is dominated by the poll interval.
* poll cycle: the time between two POLLs as the reader sees them (one reader on the bus).

Run: ``.venv/bin/python bench/osdp.py [--cards 20]`` (also from ``make bench``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

# This file is named osdp.py: drop its own directory from the path so `import osdp` finds libosdp, not itself.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import serial

from edge.osdp.cp import OsdpBus, OsdpReaderSpec
from simulators.osdp_pd import OsdpPdSimulator
from simulators.wait import wait_until

KEY = bytes(range(16))
ADDR = 1


class PacedPort:
    """pyserial port whose writes go out one byte per 10 bit times (bench only: emulates the line rate)."""

    def __init__(self, port: Any, baud: int) -> None:
        self._port = port
        self._per_byte = 10.0 / baud

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)

    def write(self, data: bytes) -> int:
        time.sleep(self._per_byte * len(data))  # the packet's time on the wire, then the packet
        return self._port.write(data)


def _summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"median {statistics.median(values) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  (n={len(values)})"


def _poll_cycle(sim: OsdpPdSimulator, seconds: float) -> list[float]:
    start = time.monotonic()
    threading.Event().wait(seconds)
    times = [t for t in sim.poll_times if t >= start]
    return [b - a for a, b in itertools.pairwise(times)]


def bench_doorkeep(baud: int, cards: int, poll_ms: int) -> tuple[list[float], list[float]]:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY, line_baud=baud)
    got: list[float] = []
    lock = threading.Lock()

    def on_card(door: str, card: Any, t_read: float) -> None:
        with lock:
            got.append(time.monotonic())

    port = PacedPort(serial.serial_for_url(sim.path, baudrate=baud, timeout=0.005), baud)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("bench", ADDR, KEY, repeat_ignore_s=0.0)], on_card, baudrate=baud,
                  poll_ms=poll_ms, port=port)
    bus.start()
    try:
        if not wait_until(lambda: bus.stats(ADDR).online, 10):
            raise SystemExit(f"doorkeep CP did not come online at {baud} baud: {bus.stats(ADDR)}")
        latencies = []
        for i in range(cards):
            before = len(got)
            t0 = time.monotonic()
            sim.present_card("wiegand26", 1, i + 1)
            if wait_until(lambda before=before: len(got) > before, 5):
                latencies.append(got[before] - t0)
        cycle = _poll_cycle(sim, 2.0)
    finally:
        bus.stop()
        sim.close()
    return latencies, cycle


def bench_libosdp(baud: int, cards: int) -> tuple[list[float], list[float]]:
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
        latencies = []
        for i in range(cards):
            before = len(got)
            t0 = time.monotonic()
            sim.present_card("wiegand26", 1, i + 1)
            if wait_until(lambda before=before: len(got) > before, 5):
                latencies.append(got[before] - t0)
        cycle = _poll_cycle(sim, 2.0)
    finally:
        cp.teardown() if hasattr(cp, "teardown") else cp.stop()
        os.close(fd)
        sim.close()
    return latencies, cycle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=int, default=20)
    ap.add_argument("--poll-ms", type=int, default=50, help="doorkeep's poll_ms (libosdp polls on its own)")
    args = ap.parse_args()
    print(f"OSDP over a paced pty, Secure Channel on, one reader; doorkeep poll_ms={args.poll_ms}")
    for baud in (9600, 115200):
        dk_lat, dk_cycle = bench_doorkeep(baud, args.cards, args.poll_ms)
        lo_lat, lo_cycle = bench_libosdp(baud, args.cards)
        print(f"\n{baud} baud")
        print(f"  card -> decision request  doorkeep: {_summary(dk_lat)}")
        print(f"                            libosdp : {_summary(lo_lat)}")
        print(f"  poll cycle                doorkeep: {_summary(dk_cycle)}")
        print(f"                            libosdp : {_summary(lo_cycle)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
