"""Badge-to-relay latency against the bare MQTT round trip, on one Mosquitto.

Run from the project root:

    .venv/bin/python bench/badge_to_relay.py [--count N] [--echo-count N]
                                             [--broker mqtt://HOST:PORT] [--json PATH]

Rows printed, all against the same broker in the same run:

* ``echo (idle machine)``: the transport floor. Two paho-mqtt 2.x clients
  with TCP_NODELAY; A publishes a QoS 1 request, B republishes it on a reply
  topic, A's publishing thread sees it back. Measured before the site starts.
* ``echo (site running)``: the same, with the whole demo site idling beside it
  (cameras streaming, agents and server connected), to show the load alone.
* ``echo (paced, in gaps)``: one round trip in the middle of each pause the
  badge loop makes anyway (a card may only repeat after the reader's 1 s
  window), so the transport is also measured the way a door uses it: rarely,
  on an otherwise idle machine, with wake-ups from idle in every trip.
* ``badge -> relay``: the real stack in-process (``SiteRunner``: server, both
  edge agents, simulated readers, doors and cameras). Time from the simulated
  reader's last frame byte written into the pty to the rising edge of the
  lobby_in lock relay pin, both ``time.monotonic()``.
* ``edge latency_ms``: the figure the edge itself puts in its access events
  (reader thread's read time to just after the grant was applied).

A benchmark reports; it does not judge. The targets are printed for
information; the exit status is non-zero only when samples failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt
import paho.mqtt.client as mqtt

from simulators.brokers import MosquittoBroker, subscribed_client
from simulators.site import DEMO_SITE, SiteRunner
from simulators.wait import wait_until

DOOR = "lobby_in"
DEVICE = "pi-lobby"
# Granted at lobby_in at any hour in the demo site (access level "staff": lobby, always).
CARDS = ("0F00A1B2C3", "0F00B0B0B0", "0F00C4C4C4")  # alice, bob, chen
REPEAT_IGNORE_S = 1.0  # the reader drops the same card number seen again within this (DeviceConfig default)
REPEAT_MARGIN_S = 0.02
# Badges are spread evenly rather than in bursts of three, so every one meets the same idle machine.
SPACING_S = (REPEAT_IGNORE_S + REPEAT_MARGIN_S) / len(CARDS)
ECHO_WARMUP = 20
BADGE_WARMUP = len(CARDS)
ECHO_PAYLOAD_BYTES = 256  # about the size of a doorkeep request / decision message
TIMEOUT_S = 3.0

TARGET_P50_MS = 1.5  # issue 15 (was 2 ms, issue 8)
TARGET_P99_MS = 5.0  # issue 8
TARGET_RATIO = 3.0
TARGET_OFFLINE_P99_MS = 0.5  # issue 15 (was 1 ms, issue 8)


# ---------------------------------------------------------------- statistics

def nearest_rank(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of samples at or below it."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(len(sorted_values) * pct / 100)
    return sorted_values[max(1, rank) - 1]


@dataclass
class Row:
    name: str
    samples_ms: list[float] = field(default_factory=list)
    failures: int = 0
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def stat(self, pct: float) -> float:
        return nearest_rank(sorted(self.samples_ms), pct)

    @property
    def median(self) -> float:
        return self.stat(50)

    @property
    def p99(self) -> float:
        return self.stat(99)

    @property
    def max(self) -> float:
        return max(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")


# ------------------------------------------------------------- echo baseline

def _parse_broker(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise SystemExit(f"--broker must look like mqtt://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port or 1883


def _echo_client(host: str, port: int, name: str, subscribe: str, on_message: Any) -> mqtt.Client:
    try:
        return subscribed_client(host, port, f"bench-{name}-{uuid.uuid4().hex[:6]}", subscribe, on_message,
                                 timeout=10)
    except RuntimeError as exc:
        raise SystemExit(f"echo client {name}: {exc}") from None


class EchoPair:
    """Client A (asker) and client B (echo) on a private pair of topics."""

    def __init__(self, broker_url: str) -> None:
        host, port = _parse_broker(broker_url)
        base = f"bench/echo/{uuid.uuid4().hex[:8]}"
        self.req_topic, rep_topic = f"{base}/request", f"{base}/reply"
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._seq = 0
        self._filler = b"x" * ECHO_PAYLOAD_BYTES

        def echo(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            c.publish(rep_topic, msg.payload, qos=1)

        def back(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self._replies.put(msg.payload)

        self._b = _echo_client(host, port, "echo", self.req_topic, echo)
        try:
            self._a = _echo_client(host, port, "asker", rep_topic, back)
        except BaseException:
            self._b.disconnect()
            self._b.loop_stop()
            raise

    def round_trip(self) -> float | None:
        """One QoS 1 request/echo in ms, timed on the publishing thread; None on timeout."""
        self._seq += 1
        payload = (f"{self._seq:08d}".encode() + self._filler)[:ECHO_PAYLOAD_BYTES]
        t0 = time.perf_counter()
        self._a.publish(self.req_topic, payload, qos=1)
        deadline = t0 + TIMEOUT_S
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            try:
                reply = self._replies.get(timeout=remaining)
            except queue.Empty:
                return None
            if reply == payload:  # a late reply to an earlier, timed-out request is skipped
                return (time.perf_counter() - t0) * 1000.0

    def close(self) -> None:
        for c in (self._a, self._b):
            c.disconnect()
            c.loop_stop()


def run_echo(broker_url: str, count: int, name: str) -> Row:
    """Back-to-back round trips after a warm-up."""
    pair = EchoPair(broker_url)
    row = Row(name)
    try:
        for i in range(ECHO_WARMUP + count):
            ms = pair.round_trip()
            if i < ECHO_WARMUP:
                continue
            if ms is None:
                row.failures += 1
            else:
                row.samples_ms.append(ms)
    finally:
        pair.close()
    return row


# ------------------------------------------------------------ badge to relay

class HopTrace:
    """Where a badge's time goes, hop by hop, on the edge's own clock (time.monotonic, as the pins use).

    Wraps, for the traced door only, the calls a badge passes through on the edge's loop: the card handed to
    the door logic (its read time), the request flushed to paho's socket, the decision read from it, and the
    relay energised. The wrappers add a few microseconds to each hop; the untraced run is the figure.
    """

    HOPS = ("reader write -> loop read", "read -> request on the socket", "request -> decision read",
            "decision read -> relay")
    OFFLINE_HOP = "read -> relay (offline, cached policy)"

    def __init__(self, runner: SiteRunner) -> None:
        agent = runner.agents[DEVICE]
        self.marks: dict[str, float] = {}
        self.rows = {h: Row(h) for h in (*self.HOPS, self.OFFLINE_HOP)}
        self._patched: list[tuple[Any, str, Any]] = []  # (object, attribute, what it was before)

        def wrap(obj: Any, name: str, mark: Any) -> None:
            inner = getattr(obj, name)
            self._patched.append((obj, name, obj.__dict__.get(name)))

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = inner(*args, **kwargs)
                mark(*args)
                return out

            setattr(obj, name, wrapped)

        def card(door: str, card: Any, t_read: float) -> None:
            if door == DOOR:
                self.marks["read"] = t_read

        def flushed() -> None:
            self.marks.setdefault("request", time.monotonic())

        on_decision = agent.link.on_decision

        def decision_entry(door: str, payload: bytes) -> Any:
            if door == DOOR:
                self.marks.setdefault("decision", time.monotonic())
            return on_decision(door, payload)

        self._patched.append((agent.link, "on_decision", on_decision))
        agent.link.on_decision = decision_entry
        wrap(agent, "_card", card)
        wrap(agent.link, "flush", flushed)
        wrap(agent.doors[DOOR].relay, "set", lambda on: self.marks.setdefault("relay", time.monotonic()) if on
             else None)

    def start(self) -> None:
        self.marks.clear()

    def finish(self, sent_at: float) -> None:
        m = self.marks
        points = [sent_at, m.get("read"), m.get("request"), m.get("decision"), m.get("relay")]
        if points[2] is None and points[3] is None and points[1] is not None and points[4] is not None:
            self.rows[self.HOPS[0]].samples_ms.append((points[1] - sent_at) * 1000.0)
            self.rows[self.OFFLINE_HOP].samples_ms.append((points[4] - points[1]) * 1000.0)
            return
        if any(p is None for p in points):
            return
        for hop, (a, b) in zip(self.HOPS, zip(points, points[1:])):
            self.rows[hop].samples_ms.append((b - a) * 1000.0)  # type: ignore[operator]

    def close(self) -> None:
        """Put back what was wrapped: instance attributes as they were, class methods by removing the wrapper."""
        for obj, name, before in reversed(self._patched):
            if before is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, before)


def run_badges(runner: SiteRunner, count: int, echo: EchoPair | None = None,
               trace: HopTrace | None = None) -> tuple[Row, Row, Row, dict[str, Any]]:
    """Badge, wait for the relay, open and close the door, wait for the relock; repeat.

    With ``echo``, one echo round trip is made in the middle of each pacing gap, so
    the transport is also measured the way the badges use it: once every ~0.3 s on
    an otherwise idle machine, with the site running (``paced_row``).
    """
    sim = runner.doors[DOOR]
    reader, door = sim.reader, sim.door
    agent = runner.agents[DEVICE]
    events: list[Any] = []
    ev_lock = threading.Lock()

    def listener(ev: Any) -> None:  # runs on the edge's loop: keep it trivial
        if ev.type == "access" and ev.door == DOOR:
            with ev_lock:
                events.append(ev)

    agent.listeners.append(listener)
    relay_row = Row("badge -> relay")
    edge_row = Row("edge latency_ms", note="edge's own figure, from its access events")
    paced_row = Row("echo (paced, in gaps)", note="one round trip mid-way through each badge pacing gap")
    info: dict[str, Any] = {"denied": 0, "late_relocks": 0, "pacing_waits": 0}
    # Per card: the monotonic time after which the reader no longer treats it as a repeat.
    free_at = {card: 0.0 for card in CARDS}
    next_any = 0.0  # the earliest moment for the next badge, whatever the card
    pacer = threading.Event()  # never set: a plain interruptible wait
    total = BADGE_WARMUP + count
    for i in range(total):
        card = CARDS[i % len(CARDS)]
        wait = max(free_at[card], next_any) - time.monotonic()
        if wait > 0:
            info["pacing_waits"] += 1
            if echo is not None and i >= BADGE_WARMUP and wait > 0.1:
                pacer.wait(wait / 2)
                ms = echo.round_trip()
                if ms is None:
                    paced_row.failures += 1
                else:
                    paced_row.samples_ms.append(ms)
                wait = max(free_at[card], next_any) - time.monotonic()
            if wait > 0:
                pacer.wait(wait)
        with ev_lock:
            n_events = len(events)
        mark = len(door.relay_history)
        if trace is not None:
            trace.start()
        sent_at = reader.badge(card)
        ok = door.wait_relay(True, TIMEOUT_S)
        rise = next((t for t, on in door.relay_history[mark:] if on), None)
        # The reader's read time is after sent_at and before the relay rose; pacing from the
        # later of the two keeps the next use of this card safely outside the repeat window.
        after = rise if rise is not None else time.monotonic()
        free_at[card] = after + REPEAT_IGNORE_S + REPEAT_MARGIN_S
        next_any = after + SPACING_S
        warm = i < BADGE_WARMUP
        if not ok or rise is None:
            if not warm:
                relay_row.failures += 1
            # Whatever happened, let the unlock window (if any) lapse before the next badge.
            door.wait_relay(False, 10.0)
            continue
        if not warm:
            relay_row.samples_ms.append((rise - sent_at) * 1000.0)
            if trace is not None:
                trace.finish(sent_at)
        door.open()
        door.close()
        if not door.wait_relay(False, TIMEOUT_S):
            info["late_relocks"] += 1
            door.wait_relay(False, 10.0)
        # The access event reaches the listeners once the jobs worker stored it (a few ms after the
        # grant); wait for it rather than assume it, so no latency figure is missed.
        wait_until(lambda: len(events) > n_events, 2.0)
        with ev_lock:
            new = events[n_events:]
        if warm:
            continue
        for ev in new:
            if ev.decision != "granted":
                info["denied"] += 1
            elif ev.latency_ms is not None:
                edge_row.samples_ms.append(float(ev.latency_ms))
    agent.listeners.remove(listener)
    edge_row.failures = relay_row.n - edge_row.n if relay_row.n > edge_row.n else 0
    return relay_row, edge_row, paced_row, info


# -------------------------------------------------------------------- report

def mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        return "unknown (mosquitto not on PATH)"
    try:
        # `mosquitto -h` exits non-zero after printing its usage; only the first line matters.
        out = subprocess.run([binary, "-h"], check=False, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto_version(),
    }


def targets_for(row: Row, echo_p99: float) -> str:
    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"
    ratio = row.p99 / echo_p99 if echo_p99 > 0 else float("nan")
    return (f"p50<={TARGET_P50_MS:g} {mark(row.median <= TARGET_P50_MS)}, "
            f"p99<={TARGET_P99_MS:g} {mark(row.p99 <= TARGET_P99_MS)}, "
            f"<={TARGET_RATIO:g}x echo {mark(ratio <= TARGET_RATIO)}")


def print_report(info: dict[str, Any], rows: list[Row], echo: Row, paced: Row, badge_rows: set[str]) -> None:
    print("doorkeep badge-to-relay benchmark")
    print(f"  machine    : {info['platform']}, {info['cpus']} CPUs, Python {info['python']}")
    print(f"  libraries  : paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}")
    print(f"  broker     : {info['broker']} ({info['broker_kind']})")
    print(f"  echo       : QoS 1, {ECHO_PAYLOAD_BYTES}-byte payload, TCP_NODELAY on both clients, "
          f"{ECHO_WARMUP} warm-up round trips, sequential")
    print(f"  badges     : door {DOOR} on {DEVICE}, cards cycled {', '.join(CARDS)}, {BADGE_WARMUP} warm-up, "
          f"one badge every {SPACING_S * 1000:.0f} ms, so each card > {REPEAT_IGNORE_S:g} s apart "
          f"(reader repeat window)")
    print(f"  targets    : badge -> relay p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms, "
          f"p99 <= {TARGET_RATIO:g}x echo p99 (for information)")
    print()
    header = f"{'measurement':<22} {'n':>5} {'fail':>4} {'min ms':>8} {'median ms':>10} {'p99 ms':>8} " \
             f"{'max ms':>8} {'p99/echo p99':>13}  targets"
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.name in badge_rows:
            ratio = f"{row.p99 / echo.p99:.1f}x" if echo.p99 > 0 else "n/a"
            targets = targets_for(row, echo.p99)
        else:
            ratio, targets = "", ""
        print(f"{row.name:<22} {row.n:>5} {row.failures:>4} {row.min:>8.3f} {row.median:>10.3f} {row.p99:>8.3f} "
              f"{row.max:>8.3f} {ratio:>13}  {targets}")
    print()
    print(f"p99 by nearest rank on the sorted samples; the ratio column and target are against '{echo.name}'.")
    if paced.n:
        for row in rows:
            if row.name in badge_rows:
                print(f"  {row.name}: median {row.median / paced.median:.1f}x, p99 {row.p99 / paced.p99:.1f}x "
                      f"those of '{paced.name}' (same idle gaps as the badges)")


def _finite(value: Any) -> Any:
    """NaN (no samples) becomes null, so the file stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=150, help="badges measured (default 150)")
    ap.add_argument("--echo-count", type=int, default=300, help="echo round trips measured (default 300)")
    ap.add_argument("--broker", help="use this Mosquitto (mqtt://HOST:PORT) instead of starting a private one")
    ap.add_argument("--json", metavar="PATH", help="also write the figures (and raw samples) as JSON")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="after the figures, N more badges traced hop by hop on the edge (default: none)")
    args = ap.parse_args(argv)
    if args.count < 1 or args.echo_count < 1:
        ap.error("--count and --echo-count must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    broker = None
    if args.broker:
        broker_url, kind = args.broker, "existing"
        _parse_broker(broker_url)
    else:
        broker = MosquittoBroker().start()
        broker_url, kind = broker.url, "private mosquitto, set_tcp_nodelay true, max_queued_messages 0"
    info = machine() | {"broker": broker_url, "broker_kind": kind}

    runner: SiteRunner | None = None
    started = time.monotonic()
    try:
        echo_idle = run_echo(broker_url, args.echo_count, "echo (idle machine)")
        runner = SiteRunner.from_dir(DEMO_SITE, broker_url=broker_url, allow_plain=True)  # plain, like the echo
        runner.start()
        if not runner.wait_connected(10):
            print("the site did not connect to the broker within 10 s", file=sys.stderr)
            return 2
        echo_loaded = run_echo(broker_url, args.echo_count, "echo (site running)")
        pair = EchoPair(broker_url)
        try:
            relay_row, edge_row, echo_paced, badge_info = run_badges(runner, args.count, pair)
        finally:
            pair.close()
        hops: list[Row] = []
        if args.trace:
            tracer = HopTrace(runner)
            try:
                run_badges(runner, args.trace, trace=tracer)
            finally:
                tracer.close()
            hops = [r for r in tracer.rows.values() if r.n]
        agent = runner.agents.get(DEVICE)
        counters = dict(agent.counters) if agent is not None else {}
    finally:
        if runner is not None:
            runner.stop()
        if broker is not None:
            broker.stop()
    elapsed = time.monotonic() - started

    rows = [echo_idle, echo_loaded, echo_paced, relay_row, edge_row]
    badge_rows = {relay_row.name, edge_row.name}
    print_report(info, rows, echo_idle, echo_paced, badge_rows)
    if hops:
        print()
        print("hop by hop on the edge (time.monotonic; traced run, separate from the figures above):")
        for hop in hops:
            print(f"  {hop.name:<32} n={hop.n:<4} median {hop.median:7.3f} ms  p99 {hop.p99:7.3f} ms  "
                  f"max {hop.max:7.3f} ms")
        print("  'request -> decision read' is the broker, the server and the broker again: the echo's round trip "
              "plus the server's decide")
    print(f"run time {elapsed:.1f} s; edge counters: requests={counters.get('requests', 0)} "
          f"granted={counters.get('granted', 0)} denied={counters.get('denied', 0)} "
          f"timeouts={counters.get('timeouts', 0)} errors={counters.get('errors', 0)}; "
          f"denied access events: {badge_info['denied']}, slow relocks: {badge_info['late_relocks']}")

    if args.json:
        doc = {
            "machine": info,
            "targets": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS, "p99_vs_echo": TARGET_RATIO},
            "baseline": echo_idle.name,
            "paced_baseline": echo_paced.name,
            "rows": [
                {
                    "name": r.name, "n": r.n, "failures": r.failures, "min_ms": r.min, "median_ms": r.median,
                    "p99_ms": r.p99, "max_ms": r.max,
                    "p99_vs_echo_p99": (r.p99 / echo_idle.p99) if r.name in badge_rows and echo_idle.p99 > 0
                    else None,
                    "p99_vs_paced_echo_p99": (r.p99 / echo_paced.p99) if r.name in badge_rows and echo_paced.n
                    else None,
                    "samples_ms": [round(s, 4) for s in r.samples_ms],
                }
                for r in rows
            ],
            "edge_counters": counters,
            "badge_info": badge_info,
            "elapsed_s": elapsed,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(_finite(doc), fh, indent=2, allow_nan=False)
            fh.write("\n")

    echo_failures = echo_idle.failures + echo_loaded.failures + echo_paced.failures
    failed = relay_row.failures + echo_failures
    if failed:
        print(f"FAILED: {relay_row.failures} badge(s) never energised the relay, "
              f"{echo_failures} echo round trip(s) timed out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
