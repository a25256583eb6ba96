"""The append-only, hash-chained audit log of security-relevant actions.

Every later feature calls one method, :meth:`AuditLog.record`. Each record is
chained to the one before by a SHA-256 hash, so :meth:`AuditLog.verify` (and
``doorkeep audit verify``) notices any record changed, removed or moved, and
names the first bad one. The format is written down in docs/security.md
("Audit log") so anyone can verify a copy of the database without this code:

    hash = SHA-256( canonical_json({"seq", "ts", "actor", "action", "target",
                                    "details", "prev_hash"}) ) as 64 hex digits

where ``details`` is the stored canonical JSON *text*, ``prev_hash`` is the
previous record's hash (64 zeros before the first record) and canonical JSON
is ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
encoded as UTF-8.

Records never carry names. People appear only as pseudonyms
(:func:`subject_ref`, an HMAC of the id under the site's credential key), so
erasing a person never has to touch the chain, and the log holds nothing that
names them once the site files and the store no longer do.

A chain alone cannot tell a log whose newest records were cut off from a
shorter log; the latest seq and hash are also written to ``audit-head.json``
beside the database, and verify compares the two.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from doorkeep.clock import Clock, SystemClock, iso_ms
from server.errors import ServerError
from server.private_files import open_private
from server.store import Store
from server.store_audit import GENESIS, AuditRow  # GENESIS: the hash before the first record

log = logging.getLogger("doorkeep.server.audit")

HEAD_FILE = "audit-head.json"
#: How long a verify result is reused before the chain is walked again (seconds): a walk holds the store's lock.
VERIFY_MAX_AGE_S = 30.0
ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")


class AuditError(ServerError, ValueError):
    """An audit record that cannot be written as asked (bad action name, details that are not JSON)."""


class Auditor(Protocol):
    """What a feature needs from the audit log: one call per security-relevant action."""

    def record(self, actor: str, action: str, target: str | None = None,
               details: dict[str, Any] | None = None) -> int: ...


def record_audit(audit: Auditor | None, actor: str, action: str, target: str | None,
                 details: dict[str, Any] | None = None) -> None:
    """Record what already happened; a failing audit is logged loudly and never undoes the action (the one
    rule every service that audits follows)."""
    if audit is None:
        return
    try:
        audit.record(actor, action, target, details)
    except Exception:
        log.exception("AUDIT FAILED for %s on %s", action, target)


def canonical(obj: Any) -> str:
    """The one JSON spelling hashed and stored: sorted keys, no spaces, ASCII only, no NaN."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit details must be plain JSON (strings, numbers, lists, objects): {exc}") from exc


def record_hash(seq: int, ts: str, actor: str, action: str, target: str | None, details: str,
                prev_hash: str) -> str:
    """The hash of one record, as documented in docs/security.md."""
    body = {"seq": seq, "ts": ts, "actor": actor, "action": action, "target": target, "details": details,
            "prev_hash": prev_hash}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def subject_ref(key: bytes, person_id: str) -> str:
    """A person's pseudonym: stable per site key, so repeated erasure and audit records agree.

    Only someone holding the credential key and the id can link the two; the store keeps no mapping.
    """
    digest = hmac.new(key, b"doorkeep-subject:" + person_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"ps-{digest[:16]}"


@dataclass(frozen=True)
class VerifyResult:
    """What verify found. ``problem`` is one of changed / removed / reordered / bad_anchor / truncated."""

    ok: bool
    count: int
    first_bad: int | None = None
    problem: str | None = None
    message: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


class AuditLog:
    """The audit log of one store. Thread-safe (the store's lock); safe across processes (BEGIN IMMEDIATE)."""

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.head_path = store.dir / HEAD_FILE

    # ----------------------------------------------------------- writing

    def record(self, actor: str, action: str, target: str | None = None,
               details: dict[str, Any] | None = None) -> int:
        """Append one record in one transaction; returns its seq."""
        if not actor:
            raise AuditError("an audit record needs an actor (an operator's user name, or 'system')")
        if not ACTION.match(action):
            raise AuditError(f"audit action {action!r} is not a dotted lower-case name such as 'door.unlock'")
        text = canonical(details or {})
        ts = iso_ms(self.clock.wall())
        # The store reads the chain's end under SQLite's write lock, then asks for the hash; the head file is
        # written after the commit, still under the store's lock, so heads follow records in order.
        seq, digest = self.store.append_audit(
            ts=ts, actor=actor, action=action, target=target, details=text,
            digest=lambda seq, prev_hash: record_hash(seq, ts, actor, action, target, text, prev_hash),
            committed=self._write_head)
        # The log line is a second, off-database witness of the head (journald keeps it).
        log.info("audit %d %s hash=%s", seq, action, digest[:16])
        return seq

    def _write_head(self, seq: int, digest: str) -> None:
        """Write the newest seq and hash beside the database, never moving it backwards (other processes)."""
        lock_path = self.head_path.with_suffix(".lock")
        try:
            with os.fdopen(open_private(lock_path, "ab"), "ab") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = read_head(self.head_path)
                if current is not None and current[0] >= seq:
                    return
                tmp = self.head_path.with_suffix(".tmp")
                with os.fdopen(open_private(tmp), "w") as f:  # 0600: server/private_files.py
                    json.dump({"seq": seq, "hash": digest}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.head_path)
        except OSError:
            log.exception("cannot write the audit head file %s; truncation of the log cannot be detected",
                          self.head_path)

    def prune_before(self, cutoff_ts: str) -> int:
        """Remove the oldest records written before ``cutoff_ts`` (retention), keeping an anchor.

        Only a prefix goes (records up to the first one at or after the cut-off), so the rest still
        chains from the anchor: the seq and hash of the last record removed.
        """
        return self.store.prune_audit_before(cutoff_ts, iso_ms(self.clock.wall()))

    def count_before(self, cutoff_ts: str) -> int:
        """How many records :meth:`prune_before` would remove (a dry run)."""
        return self.store.count_audit_before(cutoff_ts)

    # ----------------------------------------------------------- reading

    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest records first (all of them without ``limit``), ``details`` decoded."""
        return [dict(r, details=json.loads(r["details"])) for r in self.store.audit_records(limit)]

    def search(self, *, actor: tuple[str, ...] | None = None, action: str | None = None,
               target: tuple[str, ...] | None = None, since_ts: str | None = None, until_ts: str | None = None,
               before_seq: int | None = None, limit: int = 50) -> list[AuditRow]:
        """Records matching every filter given, newest first (the desk's audit page, server/web/audit.py):
        ``actor``/``target`` any of several exactly, ``action`` exact or a prefix ending in ``.``, ``since_ts``
        inclusive and ``until_ts`` exclusive (UTC ``iso_ms`` text), ``before_seq`` for paging. Read-only."""
        return self.store.audit_search(actor=actor, action=action, target=target, since_ts=since_ts,
                                       until_ts=until_ts, before_seq=before_seq, limit=limit)

    def verify(self) -> VerifyResult:
        """Walk the chain from the anchor to the head file; the first bad record and what is wrong with it."""
        anchor, hashes = self.store.audit_anchor_and_hashes()
        rows = self.store.audit_chain()
        try:
            return self._walk(rows, anchor, hashes)
        finally:
            rows.close()  # an early answer must not leave the store's lock held by a suspended generator

    def _walk(self, rows: Iterator[tuple[Any, ...]], anchor: Any, hashes: dict[str, int]) -> VerifyResult:
        expect_seq, expect_prev = (int(anchor[0]) + 1, str(anchor[1])) if anchor else (1, GENESIS)
        count = 0
        for seq, ts, actor, action, target, details, prev_hash, digest in rows:
            if seq > expect_seq:  # seq only grows (primary key, ORDER BY): a jump is a gap
                gone = f"{expect_seq}" if seq == expect_seq + 1 else f"{expect_seq}-{seq - 1}"
                return VerifyResult(False, count, expect_seq, "removed",
                                    f"record {gone} is missing: the log jumps from {expect_seq - 1} to {seq}")
            if seq < expect_seq:  # only the oldest record can be behind the anchor
                return VerifyResult(False, count, seq, "bad_anchor",
                                    f"the oldest record is {seq} but the retention anchor says {expect_seq - 1} "
                                    f"was the last one removed")
            actual = record_hash(seq, ts, actor, action, target, details, prev_hash)
            if actual != digest:
                origin = self._origin(hashes, prev_hash, anchor)
                if origin is not None and origin != seq and \
                        record_hash(origin, ts, actor, action, target, details, prev_hash) == digest:
                    return VerifyResult(False, count, seq, "reordered",
                                        f"record {seq} holds the content written as record {origin}")
                return VerifyResult(False, count, seq, "changed",
                                    f"record {seq} was changed after it was written (its hash does not match)")
            if prev_hash != expect_prev:
                if count == 0:
                    start = f"the retention anchor (record {anchor[0]})" if anchor else "the start of the log"
                    return VerifyResult(False, count, seq, "bad_anchor", f"record {seq} does not chain from {start}")
                return VerifyResult(False, count, seq - 1, "changed",
                                    f"record {seq - 1} was changed and re-hashed: record {seq} no longer "
                                    f"chains from it")
            count += 1
            expect_seq, expect_prev = seq + 1, digest
        return self._check_head(count, expect_seq - 1, expect_prev)

    @staticmethod
    def _origin(hashes: dict[str, int], prev_hash: str, anchor: Any) -> int | None:
        """The seq a record was written as, judged from the record its ``prev_hash`` names."""
        if prev_hash == GENESIS:
            return 1
        if anchor is not None and prev_hash == anchor[1]:
            return int(anchor[0]) + 1
        return hashes[prev_hash] + 1 if prev_hash in hashes else None

    def _check_head(self, count: int, last_seq: int, last_hash: str) -> VerifyResult:
        head = read_head(self.head_path)
        if head is None:
            note = f"no {HEAD_FILE} beside the database: a cut-off tail of the log cannot be detected"
            return VerifyResult(True, count, notes=(note,) if last_seq else ())
        seq, digest = head
        if seq > last_seq:
            return VerifyResult(False, count, last_seq + 1, "truncated",
                                f"the log ends at record {last_seq} but record {seq} was written "
                                f"({HEAD_FILE}): the newest records were removed")
        if seq == last_seq and digest != last_hash:
            return VerifyResult(False, count, seq, "changed",
                                f"record {seq} does not match the hash in {HEAD_FILE}")
        if seq < last_seq:
            return VerifyResult(True, count, notes=(f"{HEAD_FILE} is behind the log ({seq} < {last_seq}); "
                                                    "the last write was interrupted",))
        return VerifyResult(True, count)


def read_head(path: Path) -> tuple[int, str] | None:
    """``(seq, hash)`` from the head file, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
        return int(data["seq"]), str(data["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------ site files


def _plain(obj: Any) -> Any:
    """JSON for the site model's values (enums, sets, times) in one stable spelling."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if hasattr(obj, "value"):
        return obj.value
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(type(obj).__name__)


def _digest(key: bytes, obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=_plain, separators=(",", ":"))
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def site_digests(bundle: Any, key: bytes) -> dict[str, dict[str, str]]:
    """Per-item digests of the site files' people (keyed by pseudonym) and access data (keyed by kind:id)."""
    from dataclasses import asdict

    cards: dict[str, list[Any]] = {}
    for c in bundle.cards:  # a card written as a hash (doorkeep site export) digests the same as its number
        cards.setdefault(c.person, []).append([c.format, c.hashed(key), c.state.value, bool(c.pin)])
    people = {subject_ref(key, pid): _digest(key, [asdict(p), sorted(cards.get(pid, []))])
              for pid, p in bundle.people.items()}
    site = bundle.site
    access = {f"{kind}:{iid}": _digest(key, asdict(item))
              for kind, items in (("area", site.areas), ("door", site.doors), ("schedule", site.schedules),
                                  ("access_level", site.access_levels))
              for iid, item in items.items()}
    access["rules"] = _digest(key, asdict(site.rules))
    return {"people": people, "access": access}


def record_site_changes(audit: AuditLog, bundle: Any, key: bytes) -> list[int]:
    """At server start: record ``site.people_changed`` / ``site.access_changed`` when the site files differ
    from what the log last saw, with counts of added, removed and changed ids (never names)."""
    store = audit.store
    seqs = []
    for name, current in site_digests(bundle, key).items():
        row = store.audit_state(f"site.{name}")
        before: dict[str, str] = json.loads(row) if row is not None else {}
        added = sum(1 for k in current if k not in before)
        removed = sum(1 for k in before if k not in current)
        changed = sum(1 for k in current if k in before and before[k] != current[k])
        if row is not None and not (added or removed or changed):
            continue
        seqs.append(audit.record("system", f"site.{name}_changed", bundle.site.id,
                                 {"added": added, "removed": removed, "changed": changed,
                                  "total": len(current), "first_seen": row is None}))
        store.set_audit_state(f"site.{name}", json.dumps(current, sort_keys=True))
    return seqs


class VerifyCache:
    """The chain's last verify result, reused for ``max_age_s``; one walk at a time (it holds the store's lock)."""

    def __init__(self, log: AuditLog, clock: Clock, max_age_s: float = VERIFY_MAX_AGE_S) -> None:
        self.log = log
        self.clock = clock
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._last: tuple[VerifyResult, float] | None = None

    def result(self) -> tuple[VerifyResult, float]:
        """``(result, checked_at epoch)``: the cached one while young enough, else a fresh walk."""
        with self._lock:
            now = self.clock.wall()
            if self._last is not None and 0 <= now - self._last[1] < self.max_age_s:
                return self._last
            self._last = (self.log.verify(), now)
            return self._last
