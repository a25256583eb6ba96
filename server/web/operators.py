"""Operator accounts and API tokens of the security desk (tables of store migration ``006_operators``).

Passwords are kept only as argon2id hashes (argon2-cffi's ``PasswordHasher``, RFC 9106 defaults).
API tokens are random, shown once, and kept only as a SHA-256 hash: a copy of the database lets nobody
call the API. Checking a password always runs one argon2 verification, against a dummy hash when the name
is unknown or the account disabled, so the answer and its timing do not tell whether a name exists.

Every change is recorded in the audit log (``operator.add``, ``operator.disable``,
``operator.token_issue``, ``operator.token_revoke``) with the acting operator as actor.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from doorkeep.clock import Clock, SystemClock
from server.audit import Auditor
from server.store import Store
from server.web.errors import OperatorError, OperatorExists, UnknownOperator
from server.web.roles import GRANTS, ROLES

log = logging.getLogger("doorkeep.server.desk")

#: Login names: lower case, so "Alice" and "alice" are never two accounts.
NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}\Z")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,63}\Z")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; a cap keeps a megabyte "password" from costing anything
TOKEN_PREFIX = "dkt_"


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    created_at: float
    disabled_at: float | None = None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class Token:
    """An API token as listed (never its secret)."""

    id: str
    operator: str
    label: str
    role: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalise_name(name: str) -> str:
    """The account name a login form's text refers to (case-insensitive, surrounding blanks ignored)."""
    return name.strip().lower()


def check_password(password: str) -> None:
    """Refuse passwords too short to resist guessing (NIST SP 800-63B: length, not character classes)."""
    if len(password) < MIN_PASSWORD:
        raise OperatorError(f"the password must have at least {MIN_PASSWORD} characters (a few words work well)")
    if len(password) > MAX_PASSWORD:
        raise OperatorError(f"the password must have at most {MAX_PASSWORD} characters")


def record_audit(audit: Auditor | None, actor: str, action: str, target: str | None,
            details: dict[str, Any] | None = None) -> None:
    """Record what already happened; an audit failure is logged loudly and never undoes it."""
    if audit is None:
        return
    try:
        audit.record(actor, action, target, details)
    except Exception:
        log.exception("AUDIT FAILED for %s on %s", action, target)


#: A revocation: ``(kind, value)`` with kind ``operator`` (a name), ``token`` (a token id) or ``session``
#: (a session's hash).
RevocationListener = Callable[[str, str], None]


class Revocations:
    """Tells whoever listens (the live feed's open streams) the moment a login stops being valid, so an open
    stream ends at once instead of at its next periodic re-check (server/web/live.py)."""

    def __init__(self) -> None:
        self._listeners: list[RevocationListener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: RevocationListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def notify(self, kind: str, value: str) -> None:
        """Call every listener; one that fails is logged and never stops the others (nor the revocation)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(kind, value)
            except Exception:
                log.exception("a revocation listener failed for %s %s", kind, value)


class Operators:
    """Accounts and tokens in one store. Thread-safe (the store's lock)."""

    def __init__(self, store: Store, *, clock: Clock | None = None, audit: Auditor | None = None,
                 hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.audit = audit
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        # Verified when the name is unknown, so an unknown name costs the same argon2 run as a known one.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        self.revocations = Revocations()

    # ------------------------------------------------------------ accounts

    def add(self, name: str, role: str, password: str, *, actor: str) -> Operator:
        if not NAME.match(name):
            raise OperatorError(f"operator name {name!r} must be 1-64 lower-case letters, digits or . _ @ -, "
                                "starting with a letter or digit")
        if role not in ROLES:
            raise OperatorError(f"role {role!r} is not one of {', '.join(ROLES)}")
        check_password(password)
        now = self.clock.wall()
        row = {"name": name, "role": role, "password_hash": self.hasher.hash(password), "created_at": now,
               "disabled_at": None}
        with self.store._lock, self.store.db.conn:
            if self.store.db.conn.execute("SELECT 1 FROM operators WHERE name = ?", [name]).fetchone():
                raise OperatorExists(f"operator {name!r} already exists")
            self.store.db["operators"].insert(row)
        record_audit(self.audit, actor, "operator.add", name, {"role": role})
        return Operator(name, role, now)

    def get(self, name: str) -> Operator | None:
        with self.store._lock:
            row = self.store.db.conn.execute(
                "SELECT name, role, created_at, disabled_at FROM operators WHERE name = ?", [name]).fetchone()
        return Operator(*row) if row else None

    def all(self) -> list[Operator]:
        with self.store._lock:
            rows = self.store.db.conn.execute(
                "SELECT name, role, created_at, disabled_at FROM operators ORDER BY name").fetchall()
        return [Operator(*r) for r in rows]

    def require(self, name: str) -> Operator:
        op = self.get(name)
        if op is None:
            raise UnknownOperator(f"no operator {name!r} (fix: doorkeep user add {name} --role ROLE --site DIR)")
        return op

    def disable(self, name: str, *, actor: str) -> bool:
        """Disable an account: its sessions and tokens stop working at once. False if already disabled."""
        self.require(name)
        with self.store._lock, self.store.db.conn:
            cur = self.store.db.conn.execute(
                "UPDATE operators SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL", [self.clock.wall(), name])
            self.store.db.conn.execute("DELETE FROM operator_sessions WHERE operator = ?", [name])
        self.revocations.notify("operator", name)  # even when already disabled: nothing of it may stay open
        if cur.rowcount:
            record_audit(self.audit, actor, "operator.disable", name)
        return cur.rowcount == 1

    def verify_password(self, name: str, password: str) -> Operator | None:
        """The active operator these credentials belong to, or None; one argon2 run whatever the outcome."""
        key = normalise_name(name)
        with self.store._lock:
            row = self.store.db.conn.execute(
                "SELECT name, role, created_at, disabled_at, password_hash FROM operators WHERE name = ?",
                [key]).fetchone() if NAME.match(key) else None
        # Longer than any password we store: verify the dummy (bounded cost, same timing), never a prefix.
        too_long = len(password) > MAX_PASSWORD
        stored = row[4] if row is not None and not too_long else self._dummy_hash
        try:
            self.hasher.verify(stored, password[:MAX_PASSWORD])
            ok = row is not None and not too_long
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            return None
        op = Operator(*row[:4])
        if not op.active:
            return None
        if self.hasher.check_needs_rehash(stored):
            with self.store._lock, self.store.db.conn:
                self.store.db.conn.execute("UPDATE operators SET password_hash = ? WHERE name = ?",
                                           [self.hasher.hash(password), op.name])
        return op

    # -------------------------------------------------------------- tokens

    def issue_token(self, name: str, label: str, *, role: str | None = None, actor: str) -> tuple[str, Token]:
        """A new API token for an operator; the secret is returned here only, never stored or shown again."""
        op = self.require(name)
        if not op.active:
            raise OperatorError(f"operator {name!r} is disabled; a disabled account gets no tokens")
        if not LABEL.match(label):
            raise OperatorError(f"token label {label!r} must be 1-64 letters, digits, spaces or . _ : @ / -")
        role = role or op.role
        if role not in GRANTS[op.role]:
            raise OperatorError(f"a {op.role} operator cannot hold a {role} token "
                                f"(allowed: {', '.join(sorted(GRANTS[op.role]))})")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = Token(secrets.token_hex(6), name, label, role, self.clock.wall())
        with self.store._lock, self.store.db.conn:
            if self.store.db.conn.execute("SELECT 1 FROM operator_tokens WHERE operator = ? AND label = ? AND "
                                          "revoked_at IS NULL", [name, label]).fetchone():
                raise OperatorExists(f"operator {name!r} already has a token labelled {label!r} "
                                    "(fix: another label, or revoke it first with --revoke)")
            self.store.db["operator_tokens"].insert({**token.__dict__, "hash": sha256_hex(secret)})
        record_audit(self.audit, actor, "operator.token_issue", name, {"token": token.id, "label": label, "role": role})
        return secret, token

    def revoke_token(self, name: str, label: str, *, actor: str) -> bool:
        """Revoke the operator's live token with this label; False if there is none."""
        self.require(name)
        with self.store._lock, self.store.db.conn:
            row = self.store.db.conn.execute("SELECT id FROM operator_tokens WHERE operator = ? AND label = ? AND "
                                             "revoked_at IS NULL", [name, label]).fetchone()
            if row is None:
                return False
            self.store.db.conn.execute("UPDATE operator_tokens SET revoked_at = ? WHERE id = ?",
                                       [self.clock.wall(), row[0]])
        self.revocations.notify("token", row[0])
        record_audit(self.audit, actor, "operator.token_revoke", name, {"token": row[0], "label": label})
        return True

    def tokens(self, name: str) -> list[Token]:
        with self.store._lock:
            rows = self.store.db.conn.execute(
                "SELECT id, operator, label, role, created_at, last_used_at, revoked_at FROM operator_tokens "
                "WHERE operator = ? ORDER BY created_at", [name]).fetchall()
        return [Token(*r) for r in rows]

    def token_owner(self, secret: str) -> tuple[Operator, Token] | None:
        """The active operator and live token a bearer secret belongs to, or None.

        The token's role is only honoured while the operator's own role still grants it."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        with self.store._lock:
            row = self.store.db.conn.execute(
                "SELECT id, operator, label, role, created_at, last_used_at, revoked_at FROM operator_tokens "
                "WHERE hash = ? AND revoked_at IS NULL", [sha256_hex(secret)]).fetchone()
        if row is None:
            return None
        token = Token(*row)
        op = self.get(token.operator)
        if op is None or not op.active or token.role not in GRANTS[op.role]:
            return None
        now = self.clock.wall()
        if token.last_used_at is None or now - token.last_used_at > 60:
            with self.store._lock, self.store.db.conn:
                self.store.db.conn.execute("UPDATE operator_tokens SET last_used_at = ? WHERE id = ?", [now, token.id])
        return op, token
