"""The edge outbox: durable put rate, bytes per event, a million events, and the drain rate.

Run from the project root:

    .venv/bin/python bench/outbox.py [--events N] [--puts N] [--drain N] [--dir DIR]

* **put**: ``Outbox.put_event`` one at a time, each a committed, fsynced
  transaction (``synchronous=FULL``), with a realistic access event (random
  event id, transaction and card hash, as the agent sends them);
* **capacity**: ``--events`` realistic events (default 1,000,000) through the
  bulk path ``put_events`` in transactions of 10,000: file size, bytes per
  event, and what an edge then does with that backlog: open it (quick_check
  and count, as at start-up), read the head, acknowledge a window, put one
  more event and snapshot, and the full ``integrity_check``;
* **drain**: ``--drain`` events pumped through the real link to a private
  Mosquitto with the rate limit lifted, and at the default 200 msgs/s.

Put it on the device's own disk with ``--dir`` (an SD card's fsync is far
slower than a server SSD). A benchmark reports; it does not judge.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from doorkeep.config import BrokerConfig
from doorkeep.contract import EventMsg
from edge.outbox import MB, Outbox

TOPIC = "doorkeep/v1/demo/pi-lobby/door/lobby_in/event"


def access_event(seq: int) -> bytes:
    event_id = uuid.uuid4().hex
    return EventMsg(
        id=event_id, seq=seq, ts="2026-11-28T08:55:01.123Z", device="pi-lobby", door="lobby_in", type="access",
        decision="granted", reason="granted", decided_by="server", person="p0012345",
        credential_hash=uuid.uuid4().hex + uuid.uuid4().hex, credential_last4="B2C3",
        transaction=uuid.uuid4().hex, latency_ms=3.527, snapshot=event_id,
    ).encode()


def bench_put(d: Path, n: int) -> None:
    ob = Outbox(d / "put.db")
    try:
        t = time.perf_counter()
        for _ in range(n):
            ob.put_event(TOPIC, access_event)
        dt = time.perf_counter() - t
    finally:
        ob.close()
    print(f"put (one fsynced transaction each): {n / dt:,.0f} events/s, {dt / n * 1000:.2f} ms per put")


def bench_capacity(d: Path, n: int) -> None:
    path = d / "capacity.db"
    ob = Outbox(path)
    raw = len(access_event(1))
    t = time.perf_counter()
    done = 0
    while done < n:
        k = min(10_000, n - done)
        ob.put_events((TOPIC, access_event) for _ in range(k))
        done += k
    dt = time.perf_counter() - t
    used = ob.used_bytes()
    ob.close()
    size = path.stat().st_size + (Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0)
    print(f"capacity: {n:,} events in {dt:.1f} s ({n / dt:,.0f}/s in transactions of 10,000)")
    print(f"  event payload {raw} bytes as JSON; stored {used / n:.0f} bytes per event "
          f"(file {size / MB:.1f} MB, of the default 512 MB limit: {512 * MB * n // max(used, 1):,} events fit)")
    t = time.perf_counter()
    ob = Outbox(path)
    opened = time.perf_counter() - t
    try:
        assert ob.pending == n and ob.seq == n
        t = time.perf_counter()
        head = ob.peek(limit=32)
        peek = time.perf_counter() - t
        t = time.perf_counter()
        ob.ack(r.id for r in head)
        ack = time.perf_counter() - t
        t = time.perf_counter()
        ob.put_event(TOPIC, access_event)
        ob.put_snapshot("doorkeep/v1/demo/pi-lobby/door/lobby_in/snapshot/x", os.urandom(40_000))
        put = time.perf_counter() - t
        t = time.perf_counter()
        check = ob.integrity_check()
        integrity = time.perf_counter() - t
    finally:
        ob.close()
    print(f"  with {n:,} pending: open (quick_check + count) {opened * 1000:.0f} ms, peek 32 {peek * 1000:.2f} ms, "
          f"ack 32 {ack * 1000:.2f} ms, put event + snapshot {put * 1000:.1f} ms, "
          f"integrity_check {integrity:.1f} s ({check})")


def bench_drain(d: Path, n: int) -> None:
    from edge.link import Link
    from simulators.brokers import BrokerUnavailable, MosquittoBroker

    try:
        broker = MosquittoBroker().start()
    except BrokerUnavailable as exc:
        print(f"drain: skipped ({exc})")
        return
    try:
        for rate, count in ((1e9, n), (200.0, min(n, 1000))):
            ob = Outbox(d / f"drain-{int(rate)}.db")
            ob.put_events((TOPIC, access_event) for _ in range(count))
            link = Link("demo", "pi-lobby", BrokerConfig(broker.url, allow_plain=True), on_decision=lambda door, p: None,
                        state_payload=lambda: b"{}", outbox=ob, drain_rate=rate)
            t = time.perf_counter()
            link.start()
            while ob.pending:
                time.sleep(0.01)
            dt = time.perf_counter() - t
            link.stop()
            ob.close()
            label = "no rate limit" if rate > 1e6 else f"rate limit {rate:.0f}/s"
            print(f"drain ({label}): {count:,} events acknowledged in {dt:.2f} s = {count / dt:,.0f} msgs/s "
                  f"(window 32)")
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--puts", type=int, default=1000)
    ap.add_argument("--drain", type=int, default=20_000)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    args = ap.parse_args()
    print(f"platform: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="doorkeep-bench-outbox-", dir=args.dir) as tmp:
        d = Path(tmp)
        bench_put(d, args.puts)
        bench_capacity(d, args.events)
        bench_drain(d, args.drain)


if __name__ == "__main__":
    main()
