"""Tamper evidence of the edge outbox: rows MACed and chained with a per-device key, checked on drain.

The attack (issue 12): someone with write access to the edge's disk rewrites an unsent row of ``outbox.db``
(a denial turned into a grant) and the server stores it. Now the row fails its MAC, is never published, is
reported (``on_tampered`` -> the agent's ``outbox_tampered`` event), and the genuine rows behind it still go.
The whole chain through the agent, the broker and the server is tests/e2e/test_outbox.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from doorkeep.contract import EventMsg
from edge.outbox import KEY_FILE_NAME, Outbox, OutboxError, Pump, Tampered, _deflate, _inflate

TOPIC = "doorkeep/v1/demo/pi-lobby/door/lobby_in/event"


def access(decision: str, reason: str) -> object:
    def encode(seq: int) -> bytes:
        return EventMsg(id=f"ev{seq}", seq=seq, ts="2026-11-28T08:55:01.123Z", device="pi-lobby", door="lobby_in",
                        type="access", decision=decision, reason=reason, decided_by="edge_offline",
                        credential_hash="ab" * 32, credential_last4="9999", transaction=f"t{seq}",
                        latency_ms=3.0).encode()
    return encode


DENIED = access("denied", "unknown_credential")


def no_disk_limit() -> int:
    return 1 << 50


class Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> int:
        self.sent.append((topic, payload))
        return len(self.sent)

    def events(self) -> list[dict]:
        return [json.loads(p) for _, p in self.sent]


def drain(ob: Outbox) -> Sender:
    """Publish everything through a real Pump (acks applied as they come)."""
    sender = Sender()
    pump = Pump(ob, sender, rate=1e6, window=1000)
    pump.connected()
    for _ in range(20):
        pump.step()
        for mid in range(pump.acknowledged + 1, len(sender.sent) + 1):
            pump.acked(mid)
        if ob.pending == 0:
            break
    pump.step()
    return sender


def rewrite_as_grant(db: Path, seq: int) -> None:
    """What the attacker does with sqlite3: the stored denial becomes a grant for the same card."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        rid, blob = conn.execute("SELECT id, payload FROM messages WHERE seq = ?", (seq,)).fetchone()
        event = json.loads(_inflate(blob))
        assert event["decision"] == "denied"
        event.update(decision="granted", reason="granted_offline", person="mallory")
        conn.execute("UPDATE messages SET payload = ? WHERE id = ?", (_deflate(json.dumps(event).encode()), rid))
    finally:
        conn.close()


@pytest.fixture
def reports() -> list[list[Tampered]]:
    return []


def open_outbox(path: Path, reports: list[list[Tampered]]) -> Outbox:
    return Outbox(path, disk_free=no_disk_limit, on_tampered=reports.append)


def test_attack_denial_rewritten_as_a_grant_on_disk_is_never_published_and_later_rows_still_are(
        tmp_path: Path, reports: list[list[Tampered]]) -> None:
    db = tmp_path / "outbox.db"
    ob = open_outbox(db, reports)
    ob.put_events([(TOPIC, DENIED)] * 3)
    ob.close()
    rewrite_as_grant(db, 2)

    ob = open_outbox(db, reports)  # the edge restarts on the edited file
    try:
        ob.put_event(TOPIC, DENIED)  # a genuine row written after the edit
        sent = drain(ob).events()
        assert [e["seq"] for e in sent] == [1, 3, 4], "the edited row is not sent, the genuine ones all are"
        assert not [e for e in sent if e["decision"] == "granted"]
        assert [[(t.id, t.seq, t.why) for t in r] for r in reports] == [[(2, 2, "MAC does not verify")]]
        assert ob.pending == 0 and ob.tampered_rows == 1
        assert [q["seq"] for q in ob.quarantined()] == [2], "kept for the investigation, out of the queue"
    finally:
        ob.close()


def test_attack_row_inserted_without_the_key_is_not_published(tmp_path: Path, reports: list[list[Tampered]]) -> None:
    db = tmp_path / "outbox.db"
    ob = open_outbox(db, reports)
    ob.put_event(TOPIC, DENIED)
    forged = access("granted", "granted")(2)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO messages (kind, codec, topic, payload, seq, created_at, mac, prev_mac) "
                 "VALUES ('event', 0, ?, ?, 2, 0, ?, ?)", (TOPIC, forged, os.urandom(16), os.urandom(8)))
    conn.execute("INSERT INTO messages (kind, codec, topic, payload, seq, created_at) "
                 "VALUES ('event', 0, ?, ?, 3, 0)", (TOPIC, forged))  # and one with no MAC at all
    conn.close()
    try:
        ob.put_event(TOPIC, DENIED)
        sent = drain(ob).events()
        assert [e["decision"] for e in sent] == ["denied", "denied"]
        assert sorted(t.why for r in reports for t in r) == ["MAC does not verify", "no MAC"]
    finally:
        ob.close()


def test_attack_two_genuine_rows_swapped_on_disk_are_both_refused(tmp_path: Path,
                                                                   reports: list[list[Tampered]]) -> None:
    """Each row is bound to its id: moving genuine rows around (to reorder, or to replay one) fails too."""
    db = tmp_path / "outbox.db"
    ob = open_outbox(db, reports)
    ob.put_events([(TOPIC, DENIED)] * 3)
    ob.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("UPDATE messages SET id = 100 WHERE id = 1")
    conn.execute("UPDATE messages SET id = 1 WHERE id = 2")
    conn.execute("UPDATE messages SET id = 2 WHERE id = 100")
    conn.execute("COMMIT")
    conn.close()
    ob = open_outbox(db, reports)
    try:
        assert [e["seq"] for e in drain(ob).events()] == [3]
        assert sorted(t.id for r in reports for t in r) == [1, 2]
    finally:
        ob.close()


def test_acknowledged_rows_and_snapshots_dropped_for_space_are_no_false_alarm(
        tmp_path: Path, reports: list[list[Tampered]]) -> None:
    """Legitimate deletions leave gaps in the chain: across them nothing is reported (the server's seq check
    covers a deleted event). Also across a restart the chain carries on."""
    db = tmp_path / "outbox.db"
    ob = Outbox(db, max_bytes=150 * 1024, disk_free=no_disk_limit, on_tampered=reports.append)
    for i in range(30):
        ob.put_event(TOPIC, DENIED)
        ob.put_snapshot(f"doorkeep/v1/demo/pi-lobby/door/lobby_in/snapshot/e{i}", os.urandom(20_000))
    assert ob.dropped_snapshots > 0
    ob.ack([r.id for r in ob.peek(limit=5)][1:4])  # acknowledged out of order, the first still pending
    ob.close()
    ob = open_outbox(db, reports)
    try:
        ob.put_events([(TOPIC, DENIED)] * 5)
        sent = drain(ob)
        assert reports == [] and ob.tampered_rows == 0
        seqs = [json.loads(p)["seq"] for t, p in sent.sent if t == TOPIC]
        assert seqs == sorted(seqs) and seqs[-1] == 35
    finally:
        ob.close()


def test_the_key_is_created_once_owner_only_and_a_key_open_to_others_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    Outbox(db, disk_free=no_disk_limit).close()
    key = tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_text()
    Outbox(db, disk_free=no_disk_limit).close()
    assert key.read_text() == first, "never replaced"
    key.chmod(0o640)
    with pytest.raises(OutboxError, match="chmod 600"):
        Outbox(db, disk_free=no_disk_limit)


def test_a_replaced_key_makes_every_waiting_row_unverifiable_and_reported(tmp_path: Path,
                                                                          reports: list[list[Tampered]]) -> None:
    db = tmp_path / "outbox.db"
    ob = open_outbox(db, reports)
    ob.put_events([(TOPIC, DENIED)] * 2)
    ob.close()
    (tmp_path / KEY_FILE_NAME).unlink()
    ob = open_outbox(db, reports)
    try:
        assert drain(ob).sent == []
        assert sum(len(r) for r in reports) == 2
    finally:
        ob.close()


def _schema_1_file(db: Path, n: int) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for stmt in ("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL CHECK (kind IN "
                 "('event', 'snapshot')), codec INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, "
                 "seq INTEGER, created_at REAL NOT NULL)",
                 "CREATE INDEX messages_snapshots ON messages (id) WHERE kind = 'snapshot'",
                 "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
                 f"INSERT INTO meta (name, value) VALUES ('seq', {n}), ('dropped_snapshots', 0)"):
        conn.execute(stmt)
    for seq in range(1, n + 1):
        conn.execute("INSERT INTO messages (kind, codec, topic, payload, seq, created_at) VALUES "
                     "('event', 1, ?, ?, ?, 0)", (TOPIC, _deflate(DENIED(seq)), seq))
    conn.execute("PRAGMA user_version=1")
    conn.close()


def test_an_outbox_from_before_the_upgrade_is_maced_once_and_delivered(tmp_path: Path,
                                                                       reports: list[list[Tampered]]) -> None:
    db = tmp_path / "outbox.db"
    _schema_1_file(db, 3)
    ob = open_outbox(db, reports)
    try:
        ob.put_event(TOPIC, DENIED)
        assert [e["seq"] for e in drain(ob).events()] == [1, 2, 3, 4]
        assert reports == []
    finally:
        ob.close()


def test_attack_schema_1_file_put_back_under_an_existing_key_is_not_blessed(
        tmp_path: Path, reports: list[list[Tampered]]) -> None:
    """Rewriting the file as schema 1 must not get forged rows MACed: the upgrade happens only with a new key."""
    Outbox(tmp_path / "outbox.db", disk_free=no_disk_limit).close()  # the key exists from an earlier start
    (tmp_path / "outbox.db").unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'outbox.db'}{suffix}").unlink(missing_ok=True)
    _schema_1_file(tmp_path / "outbox.db", 2)
    ob = open_outbox(tmp_path / "outbox.db", reports)
    try:
        assert drain(ob).sent == []
        assert [t.why for r in reports for t in r] == ["no MAC", "no MAC"]
    finally:
        ob.close()
