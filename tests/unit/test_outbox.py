"""The edge's durable outbox and its pump: order, acknowledgement, size limit, crashes, rate and window."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from doorkeep.clock import FakeClock
from doorkeep.config import load_device
from doorkeep.contract import EventMsg
from doorkeep.errors import ConfigErrors
from edge.outbox import MB, Outbox, OutboxError, Pump, _deflate, _inflate, load_or_create_key, row_mac

TOPIC = "doorkeep/v1/demo/pi-lobby/door/lobby_in/event"
ROOT = Path(__file__).resolve().parents[2]


def snapshot_topic(n: int) -> str:
    return f"doorkeep/v1/demo/pi-lobby/door/lobby_in/snapshot/e{n}"


def access_event(seq: int) -> bytes:
    """A realistic access event: random ids and card hash, as the agent sends them."""
    event_id = uuid.uuid4().hex
    return EventMsg(
        id=event_id, seq=seq, ts="2026-11-28T08:55:01.123Z", device="pi-lobby", door="lobby_in", type="access",
        decision="granted", reason="granted", decided_by="server", person="alice",
        credential_hash=uuid.uuid4().hex + uuid.uuid4().hex, credential_last4="B2C3",
        transaction=uuid.uuid4().hex, latency_ms=3.527, snapshot=event_id,
    ).encode()


def seq_of(payload: bytes) -> int:
    return int(json.loads(payload)["seq"])


def no_disk_limit() -> int:
    return 1 << 50


@pytest.fixture
def outbox(tmp_path: Path):
    ob = Outbox(tmp_path / "outbox.db", disk_free=no_disk_limit)
    yield ob
    ob.close()


class FakeSender:
    """Plays paho's publish(): records what was handed over and returns message ids."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes]] = []
        self.next_mid = 1
        self.refuse = False

    def __call__(self, topic: str, payload: bytes) -> int | None:
        if self.refuse:
            return None
        mid = self.next_mid
        self.next_mid += 1
        self.sent.append((mid, topic, payload))
        return mid

    def mids(self) -> list[int]:
        return [m for m, _, _ in self.sent]

    def seqs(self) -> list[int]:
        return [seq_of(p) for _, t, p in self.sent if t == TOPIC]


# ------------------------------------------------------------------ storage


def test_events_are_pending_in_insertion_order_with_increasing_seq(outbox: Outbox) -> None:
    seqs = [outbox.put_event(TOPIC, access_event) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert outbox.put_snapshot(snapshot_topic(5), b"\xff\xd8jpeg")
    seqs.append(outbox.put_event(TOPIC, access_event))
    rows = outbox.peek()
    assert [r.kind for r in rows] == ["event"] * 5 + ["snapshot", "event"]
    assert [seq_of(r.payload) for r in rows if r.kind == "event"] == [1, 2, 3, 4, 5, 6]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert rows[5].payload == b"\xff\xd8jpeg" and rows[5].topic == snapshot_topic(5)
    assert outbox.pending == 7 and outbox.seq == 6
    assert [r.id for r in outbox.peek(after=rows[2].id, limit=2)] == [rows[3].id, rows[4].id]


def test_event_payload_round_trips_byte_for_byte(outbox: Outbox) -> None:
    sent = {}
    outbox.put_event(TOPIC, lambda n: sent.setdefault(n, access_event(n)))
    assert outbox.peek()[0].payload == sent[1]


def test_ack_removes_only_that_row(outbox: Outbox) -> None:
    for _ in range(3):
        outbox.put_event(TOPIC, access_event)
    first, middle, last = outbox.peek()
    assert outbox.ack([middle.id]) == 1
    assert [r.id for r in outbox.peek()] == [first.id, last.id]
    assert outbox.pending == 2
    assert outbox.ack([middle.id]) == 0  # a second PUBACK for the same row changes nothing
    assert outbox.pending == 2


def test_rows_and_seq_survive_a_close_without_ack(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, disk_free=no_disk_limit)
    for _ in range(3):
        ob.put_event(TOPIC, access_event)
    ob.put_snapshot(snapshot_topic(3), b"jpeg")
    ob.ack([ob.peek()[0].id])
    ob.close()  # no acknowledgement for the rest: the broker never had them

    again = Outbox(path, disk_free=no_disk_limit)
    try:
        assert again.pending == 3
        assert [seq_of(r.payload) for r in again.peek() if r.kind == "event"] == [2, 3]
        assert again.put_event(TOPIC, access_event) == 4  # the counter continues, it never restarts at 1
        assert again.integrity_check() == "ok"
    finally:
        again.close()


def test_seq_is_not_reused_when_every_row_was_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, disk_free=no_disk_limit)
    ob.put_event(TOPIC, access_event)
    ob.ack([r.id for r in ob.peek()])
    ob.close()
    again = Outbox(path, disk_free=no_disk_limit)
    try:
        assert again.pending == 0
        assert again.put_event(TOPIC, access_event) == 2
    finally:
        again.close()


def test_the_oldest_waiting_event_follows_puts_acks_quarantine_and_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(wall=1_000.0)
    path = tmp_path / "outbox.db"
    ob = Outbox(path, disk_free=no_disk_limit, clock=clock)
    assert ob.oldest_event_at() is None
    ob.put_snapshot(snapshot_topic(0), b"jpeg")
    assert ob.oldest_event_at() is None, "a snapshot is not an event"
    for _ in range(4):
        ob.put_event(TOPIC, access_event)  # stored at 1000, 1005, 1010, 1015
        clock.advance(5)
    assert ob.oldest_event_at() == 1000.0
    snap, first, second, third, fourth = ob.peek()
    assert ob.ack([second.id]) == 1
    assert ob.oldest_event_at() == 1000.0, "a later event acknowledged: the oldest still waits"
    assert ob.ack([snap.id, first.id]) == 2
    assert ob.oldest_event_at() == 1010.0
    ob.close()
    with sqlite3.connect(path) as db:  # the oldest row edited on disk: it fails its MAC when next read
        db.execute("UPDATE messages SET payload = x'00' WHERE id = ?", (third.id,))
    db.close()

    again = Outbox(path, disk_free=no_disk_limit, clock=clock)
    try:
        assert again.oldest_event_at() == 1010.0  # read back from the file at start
        assert [r.id for r in again.peek()] == [fourth.id]  # the edited row is quarantined, never sent
        assert again.oldest_event_at() == 1015.0
        # Read without the outbox's lock: the loop asks while the jobs worker holds it (an fsync) and never waits.
        seen: list[float | None] = []
        with again._lock:
            reader = threading.Thread(target=lambda: seen.append(again.oldest_event_at()))
            reader.start()
            reader.join(2)
        assert seen == [1015.0]
        assert again.ack([fourth.id]) == 1
        assert again.oldest_event_at() is None
    finally:
        again.close()


def test_oldest_snapshots_are_dropped_first_and_events_never(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="doorkeep.edge.outbox")
    ob = Outbox(tmp_path / "outbox.db", max_bytes=200 * 1024, disk_free=no_disk_limit)
    try:
        jpeg = os.urandom(30_000)
        for n in range(10):
            ob.put_event(TOPIC, access_event)
            assert ob.put_snapshot(snapshot_topic(n), jpeg)
        rows = ob.peek(limit=1000)
        events = [r for r in rows if r.kind == "event"]
        snaps = [r.topic for r in rows if r.kind == "snapshot"]
        assert [seq_of(r.payload) for r in events] == list(range(1, 11))  # every event is still there
        assert 0 < len(snaps) < 10
        assert snaps == [snapshot_topic(n) for n in range(10 - len(snaps), 10)]  # the newest ones were kept
        assert ob.dropped_snapshots == 10 - len(snaps)
        assert ob.pending == len(rows)
        assert ob.used_bytes() <= 200 * 1024
        dropped_logs = [r for r in caplog.records if "dropped the oldest unsent snapshot" in r.getMessage()]
        assert len(dropped_logs) == ob.dropped_snapshots
        assert ob.stats() == {"pending": len(rows), "dropped_snapshots": 10 - len(snaps)}
    finally:
        ob.close()


def test_full_of_events_it_keeps_accepting_events_and_drops_new_snapshots(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="doorkeep.edge.outbox")
    path = tmp_path / "outbox.db"
    ob = Outbox(path, max_bytes=100 * 1024, disk_free=no_disk_limit)
    try:
        ob.put_snapshot(snapshot_topic(0), os.urandom(20_000))
        seqs = ob.put_events((TOPIC, access_event) for _ in range(1000))  # ~250 KB of events
        assert seqs == list(range(1, 1001))
        assert ob.pending == 1000  # the snapshot went, no event did
        assert ob.dropped_snapshots == 1
        assert ob.used_bytes() > 100 * 1024 and ob.over_limit_events > 0
        assert any(r.levelno == logging.ERROR and "never dropped" in r.getMessage() for r in caplog.records)

        assert ob.put_snapshot(snapshot_topic(1), b"jpeg" * 100) is False
        assert ob.dropped_snapshots == 2 and ob.pending == 1000
        assert all(r.kind == "event" for r in ob.peek(limit=2000))
    finally:
        ob.close()
    again = Outbox(path, max_bytes=100 * 1024, disk_free=no_disk_limit)
    try:
        assert again.dropped_snapshots == 2  # the counter is persisted for the state message
    finally:
        again.close()


def test_a_nearly_full_disk_drops_snapshots_before_the_configured_limit(tmp_path: Path) -> None:
    free = {"bytes": 1 << 40}
    ob = Outbox(tmp_path / "outbox.db", max_bytes=512 * MB, disk_free=lambda: free["bytes"])
    try:
        for n in range(5):
            assert ob.put_snapshot(snapshot_topic(n), os.urandom(50_000))
        free["bytes"] = 16 * MB + 20_000  # the disk is almost full: less room than one more snapshot
        ob.put_event(TOPIC, access_event)
        assert ob.put_snapshot(snapshot_topic(5), os.urandom(50_000))
        snaps = [r.topic for r in ob.peek() if r.kind == "snapshot"]
        assert snapshot_topic(5) in snaps and snapshot_topic(0) not in snaps
        assert ob.dropped_snapshots >= 1
        assert sum(r.kind == "event" for r in ob.peek()) == 1
    finally:
        ob.close()


class FailingInserts:
    """A connection whose disk refuses new rows (I/O error, full disk)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args):
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)


def test_an_event_the_disk_refuses_comes_back_on_the_error_and_its_seq_is_not_reused(outbox: Outbox) -> None:
    real = outbox._conn
    outbox._conn = FailingInserts(real)
    try:
        with pytest.raises(OutboxError) as failed:
            outbox.put_event(TOPIC, access_event)
    finally:
        outbox._conn = real
    assert failed.value.seq == 1 and seq_of(failed.value.payload) == 1  # the caller can still send it
    assert outbox.pending == 0 and outbox.write_errors == 1
    assert outbox.put_event(TOPIC, access_event) == 2


def test_an_unreadable_file_is_set_aside_and_a_new_outbox_starts(tmp_path: Path, caplog) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not an sqlite database" * 200)
    caplog.set_level(logging.ERROR, logger="doorkeep.edge.outbox")
    ob = Outbox(path, disk_free=no_disk_limit)
    try:
        assert ob.set_aside is not None and ob.set_aside.exists()
        assert ob.pending == 0 and ob.put_event(TOPIC, access_event) == 1
        assert any("unusable" in r.getMessage() for r in caplog.records)
    finally:
        ob.close()


def test_integrity_and_seq_after_sigkill_while_writing(tmp_path: Path) -> None:
    """Power cut mid-write, three times: the file stays consistent and no committed event is lost."""
    path = tmp_path / "outbox.db"
    child = (
        "import sys\n"
        "from edge.outbox import Outbox\n"
        "ob = Outbox(sys.argv[1], disk_free=lambda: 1 << 50)\n"
        "jpeg = bytes(range(256)) * 200\n"
        "while True:\n"
        f"    seq = ob.put_event({TOPIC!r}, lambda n: b'{{\"schema\":\"doorkeep.event/1\",\"seq\":%d}}' % n)\n"
        "    print(seq, flush=True)\n"
        f"    ob.put_snapshot({TOPIC[:-5]!r} + 'snapshot/e%d' % seq, jpeg)\n"
    )
    reported = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None
        target = reported + 20 + 7 * round_  # vary where in the loop the kill lands
        while reported < target:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            reported = int(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reported = max([reported, *(int(x) for x in proc.stdout.read().split())])
        proc.stdout.close()

        ob = Outbox(path, disk_free=no_disk_limit)
        try:
            assert ob.integrity_check() == "ok"
            seqs = [seq_of(r.payload) for r in ob.peek(limit=10_000) if r.kind == "event"]
            # Every event the writer saw committed is there, in order, with no gap; at most one more
            # (committed, killed before it could say so); the counter agrees with the last row.
            assert seqs == list(range(1, len(seqs) + 1))
            assert reported <= len(seqs) <= reported + 1
            assert ob.seq == seqs[-1]
        finally:
            ob.close()
        reported = len(seqs)


def test_holds_a_million_events(tmp_path: Path) -> None:
    """The table and its snapshot index at 1,000,000 rows (bulk SQL insert; bench/outbox.py measures puts)."""
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    key, _ = load_or_create_key(path.with_name("outbox.key"))
    blob = _deflate(access_event(123_456))

    def chained() -> Iterator[tuple[int, bytes, int, bytes, bytes]]:
        prev = b""
        for x in range(1, 1_000_001):
            mac = row_mac(key, x, "event", 1, TOPIC, blob, x, prev[:8])
            yield x, blob, x, mac, prev[:8]
            prev = mac

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO messages (id, kind, codec, topic, payload, seq, created_at, mac, prev_mac) "
        f"VALUES (?, 'event', 1, '{TOPIC}', ?, ?, 0, ?, ?)", chained())
    conn.execute("UPDATE meta SET value = 1000000 WHERE name = 'seq'")
    conn.execute("COMMIT")
    conn.close()
    size = path.stat().st_size

    started = time.monotonic()
    ob = Outbox(path, disk_free=no_disk_limit)  # quick_check and count at start-up
    try:
        opened = time.monotonic() - started
        assert ob.pending == 1_000_000 and ob.seq == 1_000_000
        assert size < 512 * MB / 1.9  # the default limit holds about two million (row MACs included)
        head = ob.peek(limit=3)
        assert [r.id for r in head] == [1, 2, 3] and head[0].payload == _inflate(blob)
        assert [r.id for r in ob.peek(after=999_998)] == [999_999, 1_000_000]
        t = time.monotonic()
        assert ob.put_snapshot(snapshot_topic(1), b"jpeg")  # finding no old snapshot uses the index
        assert ob.put_event(TOPIC, access_event) == 1_000_001
        ob.ack(range(1, 1001))
        assert time.monotonic() - t < 1.0
        assert ob.pending == 1_000_002 - 1000 and ob.peek(limit=1)[0].id == 1001
        assert opened < 10.0
    finally:
        ob.close()


# ------------------------------------------------------------------- config


def device_file(tmp_path: Path, extra: str) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(ROOT / "doorkeep" / "sites" / "demo", site, ignore=shutil.ignore_patterns("keys"))
    path = site / "devices" / "pi-lobby.toml"
    text = path.read_text()
    path.write_text(text.replace('gpio_factory = "lgpio"\n', f'gpio_factory = "lgpio"\n{extra}\n'))
    return path


def test_device_file_sets_heartbeat_and_outbox_limit(tmp_path: Path) -> None:
    dev, _ = load_device(device_file(tmp_path, "heartbeat_s = 10\noutbox_max_mb = 64"))
    assert (dev.heartbeat_s, dev.outbox_max_mb) == (10.0, 64)
    dev, _ = load_device(device_file(tmp_path / "defaults", ""))
    assert (dev.heartbeat_s, dev.outbox_max_mb) == (30.0, 512)


@pytest.mark.parametrize("extra, key", [("heartbeat_s = 0", "heartbeat_s"), ("outbox_max_mb = 0", "outbox_max_mb"),
                                        ('outbox_max_mb = "big"', "outbox_max_mb")])
def test_bad_heartbeat_or_outbox_limit_names_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigErrors) as failed:
        load_device(device_file(tmp_path, extra))
    assert [e.key for e in failed.value.errors] == [key]


# --------------------------------------------------------------------- pump


def pump_for(outbox: Outbox, sender: FakeSender, clock: FakeClock, **kw) -> Pump:
    kw.setdefault("rate", 1000.0)
    kw.setdefault("window", 100)
    return Pump(outbox, sender, clock=clock, **kw)


def ack_everything_sent(pump: Pump, sender: FakeSender, done: set[int]) -> None:
    """Play the broker: a PUBACK for every message not acknowledged yet."""
    for mid in sender.mids():
        if mid not in done:
            done.add(mid)
            pump.acked(mid)


def test_pump_sends_nothing_while_disconnected_then_everything_in_order(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock)
    for n in range(3):
        outbox.put_event(TOPIC, access_event)
        outbox.put_snapshot(snapshot_topic(n), b"jpeg")
    assert pump.step() is None and not sender.sent
    pump.connected()
    pump.step()
    assert [t for _, t, _ in sender.sent] == [TOPIC, snapshot_topic(0), TOPIC, snapshot_topic(1), TOPIC,
                                               snapshot_topic(2)]
    assert sender.seqs() == [1, 2, 3]


def test_pump_deletes_a_row_only_when_its_message_is_acknowledged(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock)
    for _ in range(3):
        outbox.put_event(TOPIC, access_event)
    pump.connected()
    pump.step()
    first, second, third = sender.mids()
    pump.acked(second)
    pump.acked(9999)  # a PUBACK for a direct publish (a request, the state): not the outbox's
    pump.step()
    assert [seq_of(r.payload) for r in outbox.peek()] == [1, 3]
    pump.acked(first)
    pump.acked(third)
    pump.step()
    assert outbox.pending == 0 and pump.in_flight == 0
    assert len(sender.sent) == 3  # nothing was sent twice


def test_new_events_queue_behind_the_backlog(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock, window=4)
    outbox.put_events((TOPIC, access_event) for _ in range(10))
    pump.connected()
    pump.step()
    assert sender.seqs() == [1, 2, 3, 4]
    outbox.put_event(TOPIC, access_event)  # seq 11 arrives mid-drain
    done: set[int] = set()
    while outbox.pending:
        ack_everything_sent(pump, sender, done)
        pump.step()
    assert sender.seqs() == list(range(1, 12))


def test_pump_honours_its_rate_limit(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock, rate=100.0, burst=10, window=1000)
    outbox.put_events((TOPIC, lambda n: b'{"seq":%d}' % n) for _ in range(500))
    pump.connected()
    wait = pump.step()
    assert len(sender.sent) == 10  # the burst
    assert wait == pytest.approx(0.01)  # one message's worth of time at 100/s
    done: set[int] = set()
    for _ in range(100):  # one simulated second in 10 ms steps, every message acknowledged at once
        clock.advance(0.01)
        ack_everything_sent(pump, sender, done)
        pump.step()
    assert 10 + 100 - 1 <= len(sender.sent) <= 10 + 100
    assert sender.seqs() == list(range(1, len(sender.sent) + 1))


def test_pump_window_bounds_unacknowledged_messages_and_bytes(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock, window=5, window_bytes=250_000)
    outbox.put_events((TOPIC, access_event) for _ in range(20))
    pump.connected()
    assert pump.step() is None  # waits for an acknowledgement, not for time
    assert len(sender.sent) == 5
    clock.advance(10)
    pump.step()
    assert len(sender.sent) == 5
    pump.acked(sender.mids()[0])
    pump.step()
    assert len(sender.sent) == 6

    big = Outbox(outbox.path.with_name("big.db"), disk_free=no_disk_limit)
    try:
        for n in range(5):
            big.put_snapshot(snapshot_topic(n), os.urandom(100_000))
        bsender = FakeSender()
        bpump = pump_for(big, bsender, clock, window=5, window_bytes=250_000)
        bpump.connected()
        bpump.step()
        assert len(bsender.sent) == 2  # 200 kB in flight; a third would pass 250 kB
    finally:
        big.close()


def test_a_refused_send_keeps_the_row_for_later(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock)
    outbox.put_event(TOPIC, access_event)
    pump.connected()
    sender.refuse = True
    assert pump.step() == pytest.approx(0.1)
    assert pump.in_flight == 0 and outbox.pending == 1
    sender.refuse = False
    pump.step()
    assert sender.seqs() == [1]


def test_after_a_reconnect_the_clients_own_resends_finish_before_anything_newer(outbox: Outbox) -> None:
    """paho re-sends what was in flight; the pump waits for those PUBACKs, then resumes from the oldest row."""
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock, window=4)
    outbox.put_events((TOPIC, access_event) for _ in range(10))
    pump.connected()
    pump.step()
    stale = sender.mids()
    assert sender.seqs() == [1, 2, 3, 4]
    pump.disconnected()
    outbox.put_event(TOPIC, access_event)
    assert pump.step() is None
    pump.connected()
    assert pump.step() > 0 and len(sender.sent) == 4  # nothing may overtake rows 1-4 on the wire
    for mid in stale[:3]:
        pump.acked(mid)
    pump.step()
    assert len(sender.sent) == 4
    pump.acked(stale[3])
    pump.step()
    assert sender.seqs() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert outbox.peek()[0].payload == sender.sent[4][2]


def test_unacknowledged_messages_are_sent_again_from_the_oldest_row_after_the_grace(outbox: Outbox) -> None:
    sender, clock = FakeSender(), FakeClock()
    pump = pump_for(outbox, sender, clock, window=3, resend_grace_s=5.0)
    outbox.put_events((TOPIC, access_event) for _ in range(5))
    pump.connected()
    pump.step()
    stale = sender.mids()
    pump.disconnected()
    pump.connected()
    assert pump.step() == pytest.approx(5.0)
    clock.advance(5.0)
    pump.step()
    assert sender.seqs() == [1, 2, 3, 1, 2, 3]  # sent again, in order (the server deduplicates by id)
    assert pump.resends_abandoned == 3
    pump.acked(stale[0])  # a late PUBACK for an abandoned copy: harmless
    for mid in sender.mids()[3:]:
        pump.acked(mid)
    pump.step()
    assert sender.seqs()[6:] == [4, 5]
    assert [seq_of(r.payload) for r in outbox.peek()] == [4, 5]
