"""Backups at 1M events (issue 14, docs/performance.md "Backups"): the server's scheduled backup of a store holding
a million events while its store thread ingests 500 events/s.

Figures: the backup's duration (and its online-copy part), the ingest p99 during backups against the same run
without them (target <= 2x), the restore duration (target: RTO <= 5 minutes), and the recovery point reached:
how old the newest event of each backup is when it becomes available (target: RPO <= 60 s).

The ingest is the server's own path: ``Store.ingest_events`` from one thread, a batch every 20 ms (10 events),
timed from the batch's due time to its commit (a late start counts: a stalled writer is what the backup could
cause). The backups are the server's ``BackupJob`` on a thread of the same process, as ``doorkeep server``
runs it (one GIL, one disk). The 1M-event store is generated once and kept in ``var/bench-backup/base``.

    python bench/backup.py [--events 1000000] [--seconds 60] [--every 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doorkeep.clock import SystemClock  # noqa: E402
from doorkeep.config import BackupSettings  # noqa: E402
from doorkeep.contract import EventMsg  # noqa: E402
from server.audit import AuditLog  # noqa: E402
from server.backup import BackupJob, generate_recovery_key, load_private_key, restore_backup  # noqa: E402
from server.store import Store  # noqa: E402

BASE = ROOT / "var" / "bench-backup" / "base"
RATE = 500
BATCH = 10


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def event(i: int, now: float) -> EventMsg:
    return EventMsg(id=f"ev-{i:09d}", seq=i, ts=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
                    device=f"pi-{i % 200:03d}", door=f"door_{i % 400:03d}", type="access",
                    decision="granted" if i % 7 else "denied", reason="granted" if i % 7 else "no_access",
                    decided_by="server", person=f"p{i % 110_000:06d}", credential_hash=f"{i * 2654435761 % 2**64:016x}" * 4,
                    credential_last4=f"{i % 10000:04d}", transaction=f"tx-{i:09d}", latency_ms=1.5,
                    detail={"area_from": "outside", "area_to": "lobby"})


def build_base(n: int) -> None:
    """A store with ``n`` access events and some audit records, made once (a few minutes at 1M)."""
    marker = BASE / f"events-{n}"
    if marker.exists():
        return
    shutil.rmtree(BASE, ignore_errors=True)
    started = time.monotonic()
    store = Store(BASE)
    audit = AuditLog(store)
    now = time.time() - n / RATE
    for start in range(1, n + 1, 1000):
        store.ingest_events([(event(i, now + i / RATE), now + i / RATE) for i in range(start, min(n, start + 999) + 1)])
        if start % 100_000 == 1:
            audit.record("system", "bench.progress", None, {"events": start})
    store.close()
    marker.write_text("")
    print(f"built a store of {n:,} events in {time.monotonic() - started:.0f} s", flush=True)


def ingest(store: Store, first: int, seconds: float, latencies: list[float], stop: threading.Event) -> int:
    """500 events/s in batches every 20 ms; each batch's delay from its due time to its commit."""
    clock = time.monotonic()
    i = first
    period = BATCH / RATE
    due = clock
    end = clock + seconds
    while due < end and not stop.is_set():
        wait = due - time.monotonic()
        if wait > 0:
            stop.wait(wait)
        wall = time.time()
        store.ingest_events([(event(j, wall), wall) for j in range(i, i + BATCH)])
        latencies.append((time.monotonic() - due) * 1000)
        i += BATCH
        due += period
    return i


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each ingest run (without, with backups)")
    ap.add_argument("--every", type=float, default=20.0, help="seconds between backups in the run with them")
    args = ap.parse_args(argv)
    build_base(args.events)
    with tempfile.TemporaryDirectory(prefix="doorkeep-bench-backup-", dir=ROOT / "var") as tmp:
        work = Path(tmp)
        data = work / "data"
        shutil.copytree(BASE, data)
        priv, pub, _ = generate_recovery_key(work / "recovery")
        store = Store(data)
        stop = threading.Event()
        quiet: list[float] = []
        nxt = ingest(store, args.events + 1, args.seconds, quiet, stop)
        settings = BackupSettings(dir=work / "backups", every_s=args.every, keep=3, recovery_key=pub)
        job = BackupJob(store, settings, "bench", data, SystemClock())
        ages: list[float] = []
        results = []

        def done(result) -> None:  # noqa: ANN001
            point = result.manifest["recovery_point"]["event_received_at"]
            ages.append(time.time() - point)  # how old the newest event is when this backup is available
            results.append(result)

        job.listeners.append(done)
        busy: list[float] = []
        job.start()
        ingest(store, nxt, args.seconds, busy, stop)
        job.stop(timeout=600)
        newest = results[-1].path
        store.close()
        restored = work / "restored"
        t0 = time.monotonic()
        report = restore_backup(newest, restored, site_id="bench", private=load_private_key(priv))
        restore_s = time.monotonic() - t0
    durations = [r.seconds for r in results]
    copies = [r.copy_seconds for r in results]
    p99_quiet, p99_busy = pct(quiet, 99), pct(busy, 99)
    print(f"store: {report.counts['events'][1]:,} events at the last backup, backup file {results[-1].bytes / 1e6:.0f} MB")
    print(f"backup duration: {len(durations)} backups, p50 {pct(durations, 50):.2f} s, max {max(durations):.2f} s "
          f"(online copy p50 {pct(copies, 50):.2f} s)")
    print(f"ingest at {RATE} events/s, batch due->commit: without backups p50 {pct(quiet, 50):.2f} ms p99 "
          f"{p99_quiet:.2f} ms; with backups every {args.every:g} s p50 {pct(busy, 50):.2f} ms p99 {p99_busy:.2f} ms "
          f"= {p99_busy / p99_quiet:.2f}x (target <= 2x: {'PASS' if p99_busy <= 2 * p99_quiet else 'MISS'})")
    print(f"restore (decrypt, extract, integrity_check, audit verify, counts): {restore_s:.1f} s "
          f"(target <= 300 s: {'PASS' if restore_s <= 300 else 'MISS'}); verified: {report.ok}")
    worst = max(durations) + 50.0
    print(f"recovery point: newest event {pct(ages, 50):.1f} s old (max {max(ages):.1f} s) when a backup became "
          f"available; at the default every_s = 50 the worst-case loss is every_s + backup duration = {worst:.1f} s "
          f"(target <= 60 s: {'PASS' if worst <= 60 else 'MISS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
