"""The store's operator records: accounts, API tokens, sessions, login-failure counters and the TOTP second
factor (tables of migrations ``006_operators`` and ``operator_2fa``).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself, and a
change that spans several statements (disable an account and end its sessions, confirm a second factor and
replace its recovery codes) is one transaction here, so no caller ever holds the lock or the connection.
The rules (password hashing, throttling, constant-time code checks) stay with the callers
(server/operators.py, server/sessions.py); this module only reads and writes rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

from server import sqldb


@dataclass(frozen=True)
class OperatorRow:
    """One operator account as stored (``password_hash``: argon2id)."""

    name: str
    role: str
    created_at: float
    disabled_at: float | None
    password_hash: str


@dataclass(frozen=True)
class TokenRow:
    """One API token as stored, without its hash."""

    id: str
    operator: str
    label: str
    role: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True)
class SessionRow:
    """One desk session, found by the SHA-256 hash of the browser's session id."""

    operator: str
    csrf: str
    created_at: float
    last_seen_at: float


@dataclass(frozen=True)
class FailureCount:
    """A login-failure counter (keyed by a hash of the account name or the client address)."""

    failures: int
    last_failure_at: float
    locked_until: float | None


@dataclass(frozen=True)
class TotpRow:
    """An operator's second factor: the confirmed secret (None: no 2FA) and a pending one being enrolled."""

    secret: str | None
    enabled_at: float | None
    last_step: int | None
    pending: str | None


#: What :meth:`OperatorRecords.disable_operator_keeping_an_admin` did.
DisableOutcome = Literal["disabled", "already_disabled", "last_admin", "unknown"]


@dataclass(frozen=True)
class RoleChange:
    """What :meth:`OperatorRecords.change_role` did: ``outcome`` changed, unchanged, last_admin (refused) or
    unknown; the role before; the ids of the tokens it revoked and the hashes of the sessions it ended."""

    outcome: Literal["changed", "unchanged", "last_admin", "unknown"]
    old_role: str | None = None
    revoked_tokens: tuple[str, ...] = ()
    ended_sessions: tuple[str, ...] = ()


_TOKEN_COLUMNS = "id, operator, label, role, created_at, last_used_at, revoked_at"


class OperatorRecords:
    """Operator accounts, tokens, sessions, login failures and second factors (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    # ------------------------------------------------------------ accounts

    def insert_operator(self, name: str, role: str, password_hash: str, created_at: float) -> bool:
        """Add an account; False (nothing written) when the name is taken."""
        with self._lock, self._conn.transaction():
            if self._conn.execute("SELECT 1 FROM operators WHERE name = ?", [name]).fetchone():
                return False
            self._conn.execute("INSERT INTO operators (name, role, password_hash, created_at, disabled_at) "
                               "VALUES (?, ?, ?, ?, NULL)", [name, role, password_hash, created_at])
        return True

    def operator_row(self, name: str) -> OperatorRow | None:
        with self._lock:
            row = self._conn.execute("SELECT name, role, created_at, disabled_at, password_hash FROM operators "
                                     "WHERE name = ?", [name]).fetchone()
        return OperatorRow(*row) if row else None

    def operator_rows(self) -> list[OperatorRow]:
        """Every account, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT name, role, created_at, disabled_at, password_hash FROM operators "
                                      "ORDER BY name").fetchall()
        return [OperatorRow(*r) for r in rows]

    def disable_operator(self, name: str, at: float) -> bool:
        """Disable the account and end its sessions, in one transaction; False if it was already disabled
        (its sessions are ended all the same)."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute("UPDATE operators SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL",
                                     [at, name])
            self._conn.execute("DELETE FROM operator_sessions WHERE operator = ?", [name])
        return cur.rowcount == 1

    def set_password_hash(self, name: str, password_hash: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("UPDATE operators SET password_hash = ? WHERE name = ?", [password_hash, name])

    def _other_active_admins(self, name: str) -> int:
        """Active admins other than ``name`` (call with the lock held, inside the transaction)."""
        return int(self._conn.execute("SELECT COUNT(*) FROM operators WHERE role = 'admin' AND "
                                      "disabled_at IS NULL AND name != ?", [name]).fetchone()[0])

    def disable_operator_keeping_an_admin(self, name: str, at: float) -> DisableOutcome:
        """Like :meth:`disable_operator`, but refuse (nothing written) to disable the last active admin; the
        count and the change are one transaction, so two admins disabling each other at once cannot both win."""
        with self._lock, self._conn.transaction():
            row = self._conn.execute("SELECT role, disabled_at FROM operators WHERE name = ?", [name]).fetchone()
            if row is None:
                return "unknown"
            if row[1] is None and row[0] == "admin" and self._other_active_admins(name) == 0:
                return "last_admin"
            cur = self._conn.execute("UPDATE operators SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL",
                                     [at, name])
            self._conn.execute("DELETE FROM operator_sessions WHERE operator = ?", [name])
        return "disabled" if cur.rowcount == 1 else "already_disabled"

    def replace_password(self, name: str, password_hash: str) -> list[str] | None:
        """Set a new password hash and end every session of the operator, in one transaction; the ended
        sessions' hashes, or None (nothing written) when there is no such operator."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute("UPDATE operators SET password_hash = ? WHERE name = ?", [password_hash, name])
            if cur.rowcount != 1:
                return None
            ended = [str(r[0]) for r in self._conn.execute(
                "SELECT hash FROM operator_sessions WHERE operator = ?", [name]).fetchall()]
            self._conn.execute("DELETE FROM operator_sessions WHERE operator = ?", [name])
        return ended

    def change_role(self, name: str, role: str, token_roles: Iterable[str], at: float) -> RoleChange:
        """Give the operator ``role``, end its sessions and revoke its live tokens whose role is not in
        ``token_roles`` (what the new role grants), in one transaction. Refused (nothing written) when it would
        take the admin role from the last active admin."""
        keep = sorted(set(token_roles))
        with self._lock, self._conn.transaction():
            row = self._conn.execute("SELECT role, disabled_at FROM operators WHERE name = ?", [name]).fetchone()
            if row is None:
                return RoleChange("unknown")
            old = str(row[0])
            if old == role:
                return RoleChange("unchanged", old)
            if old == "admin" and row[1] is None and self._other_active_admins(name) == 0:
                return RoleChange("last_admin", old)
            self._conn.execute("UPDATE operators SET role = ? WHERE name = ?", [role, name])
            marks = ", ".join("?" for _ in keep) or "NULL"
            revoked = [str(r[0]) for r in self._conn.execute(
                f"SELECT id FROM operator_tokens WHERE operator = ? AND revoked_at IS NULL AND role NOT IN ({marks})",
                [name, *keep]).fetchall()]
            self._conn.executemany("UPDATE operator_tokens SET revoked_at = ? WHERE id = ?",
                                   [(at, token_id) for token_id in revoked])
            ended = [str(r[0]) for r in self._conn.execute(
                "SELECT hash FROM operator_sessions WHERE operator = ?", [name]).fetchall()]
            self._conn.execute("DELETE FROM operator_sessions WHERE operator = ?", [name])
        return RoleChange("changed", old, tuple(revoked), tuple(ended))

    # -------------------------------------------------------------- tokens

    def insert_token(self, token: TokenRow, token_hash: str) -> bool:
        """Store a new token (only its hash); False (nothing written) when the operator already has a live
        token with that label."""
        with self._lock, self._conn.transaction():
            if self._conn.execute("SELECT 1 FROM operator_tokens WHERE operator = ? AND label = ? AND "
                                  "revoked_at IS NULL", [token.operator, token.label]).fetchone():
                return False
            row = {**token.__dict__, "hash": token_hash}
            self._conn.execute(f"INSERT INTO operator_tokens ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                               list(row.values()))
        return True

    def revoke_token(self, operator: str, label: str, at: float) -> str | None:
        """Revoke the operator's live token with this label; its id, or None when there is none."""
        with self._lock, self._conn.transaction():
            row = self._conn.execute("SELECT id FROM operator_tokens WHERE operator = ? AND label = ? AND "
                                     "revoked_at IS NULL", [operator, label]).fetchone()
            if row is None:
                return None
            self._conn.execute("UPDATE operator_tokens SET revoked_at = ? WHERE id = ?", [at, row[0]])
        return str(row[0])

    def operator_tokens(self, operator: str) -> list[TokenRow]:
        """Every token of an operator, revoked ones too, oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM operator_tokens WHERE operator = ? "
                                      "ORDER BY created_at", [operator]).fetchall()
        return [TokenRow(*r) for r in rows]

    def live_token(self, token_hash: str) -> TokenRow | None:
        """The unrevoked token whose secret hashes to ``token_hash``."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM operator_tokens WHERE hash = ? "
                                     "AND revoked_at IS NULL", [token_hash]).fetchone()
        return TokenRow(*row) if row else None

    def touch_token(self, token_id: str, at: float) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("UPDATE operator_tokens SET last_used_at = ? WHERE id = ?", [at, token_id])

    # ------------------------------------------------------------ sessions

    def create_session(self, session_hash: str, operator: str, csrf: str, client: str, at: float, *,
                       idle_before: float, started_before: float) -> None:
        """Store a new session, sweeping in the same transaction the sessions idle since before ``idle_before``
        or started before ``started_before`` (expired)."""
        with self._lock, self._conn.transaction():
            self._conn.execute("DELETE FROM operator_sessions WHERE last_seen_at < ? OR created_at < ?",
                               [idle_before, started_before])
            self._conn.execute("INSERT INTO operator_sessions (hash, operator, csrf, created_at, last_seen_at, client) "
                               "VALUES (?, ?, ?, ?, ?, ?)", [session_hash, operator, csrf, at, at, client])

    def session_row(self, session_hash: str) -> SessionRow | None:
        with self._lock:
            row = self._conn.execute("SELECT operator, csrf, created_at, last_seen_at FROM operator_sessions "
                                     "WHERE hash = ?", [session_hash]).fetchone()
        return SessionRow(*row) if row else None

    def touch_session(self, session_hash: str, at: float) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("UPDATE operator_sessions SET last_seen_at = ? WHERE hash = ?", [at, session_hash])

    def delete_session(self, session_hash: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("DELETE FROM operator_sessions WHERE hash = ?", [session_hash])

    def session_hashes(self, operator: str) -> list[str]:
        """The hashes of every stored session of an operator."""
        with self._lock:
            return [str(r[0]) for r in self._conn.execute(
                "SELECT hash FROM operator_sessions WHERE operator = ?", [operator]).fetchall()]

    # ------------------------------------------------------ login failures

    def login_failure(self, key: str) -> FailureCount | None:
        with self._lock:
            row = self._conn.execute("SELECT failures, last_failure_at, locked_until FROM login_failures "
                                     'WHERE "key" = ?', [key]).fetchone()
        return FailureCount(int(row[0]), float(row[1]), row[2]) if row else None

    def update_login_failures(self, keys: Iterable[str],
                              change: Callable[[dict[str, FailureCount | None]], dict[str, FailureCount]]) -> None:
        """Read the counters of ``keys`` and write what ``change`` makes of them, atomically (one transaction
        under the lock), so two attempts racing cannot both pass a throttle check. ``change`` may raise: then
        nothing is written.

        ``change`` runs under the lock but before the write transaction opens, as it did under sqlite3's implicit
        transactions (a read opens none): its exception (``LoginRefused``, a frozen dataclass whose traceback cannot
        be set) then never passes through the port's generator-based ``transaction()``."""
        with self._lock:
            current: dict[str, FailureCount | None] = {}
            for key in keys:
                row = self._conn.execute("SELECT failures, last_failure_at, locked_until FROM login_failures "
                                         'WHERE "key" = ?', [key]).fetchone()
                current[key] = FailureCount(int(row[0]), float(row[1]), row[2]) if row else None
            changed = change(current)
            with self._conn.transaction():
                for key, count in changed.items():
                    self._conn.execute(
                        'INSERT INTO login_failures ("key", failures, last_failure_at, locked_until) '
                        'VALUES (?, ?, ?, ?) ON CONFLICT ("key") DO UPDATE SET failures = excluded.failures, '
                        "last_failure_at = excluded.last_failure_at, locked_until = excluded.locked_until",
                        [key, count.failures, count.last_failure_at, count.locked_until])

    def clear_login_failures(self, key: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute('DELETE FROM login_failures WHERE "key" = ?', [key])

    # ------------------------------------------------------- second factor

    def totp_row(self, name: str) -> TotpRow | None:
        """The operator's second factor; None when there is no such operator."""
        with self._lock:
            row = self._conn.execute("SELECT totp_secret, totp_enabled_at, totp_last_step, totp_pending "
                                     "FROM operators WHERE name = ?", [name]).fetchone()
        return TotpRow(*row) if row else None

    def unused_recovery_codes(self, name: str) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM operator_recovery_codes WHERE operator = ? "
                                          "AND used_at IS NULL", [name]).fetchone()[0])

    def set_totp_pending(self, name: str, secret: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("UPDATE operators SET totp_pending = ? WHERE name = ?", [secret, name])

    def confirm_totp(self, name: str, pending: str, *, at: float, step: int,
                     recovery_codes: list[tuple[str, str]]) -> bool:
        """Make the pending secret the active one (if it is still ``pending``) and replace the recovery codes
        with ``(salt, hash)`` pairs, in one transaction; False (nothing written) if the pending secret changed."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE operators SET totp_secret = totp_pending, totp_pending = NULL, totp_enabled_at = ?, "
                "totp_last_step = ? WHERE name = ? AND totp_pending = ?", [at, step, name, pending])
            if cur.rowcount != 1:
                return False
            self._conn.execute("DELETE FROM operator_recovery_codes WHERE operator = ?", [name])
            for salt, digest in recovery_codes:
                self._conn.execute("INSERT INTO operator_recovery_codes (operator, salt, hash, created_at) "
                                   "VALUES (?, ?, ?, ?)", [name, salt, digest, at])
        return True

    def reset_totp(self, name: str) -> bool:
        """Remove the second factor (active or pending) and the recovery codes; False when there was none."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE operators SET totp_secret = NULL, totp_pending = NULL, totp_enabled_at = NULL, "
                "totp_last_step = NULL WHERE name = ? AND (totp_secret IS NOT NULL OR totp_pending IS NOT NULL)",
                [name])
            self._conn.execute("DELETE FROM operator_recovery_codes WHERE operator = ?", [name])
        return cur.rowcount == 1

    def accept_totp_step(self, name: str, secret: str, step: int) -> bool:
        """Record ``step`` as used if it is later than any accepted before (a code is never accepted twice)."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE operators SET totp_last_step = ? WHERE name = ? AND totp_secret = ? AND "
                "(totp_last_step IS NULL OR totp_last_step < ?)", [step, name, secret, step])
        return cur.rowcount == 1

    def spend_recovery_code(self, name: str, matches: Callable[[str, str], bool], at: float) -> int | None:
        """Spend the unused recovery code for which ``matches(salt, hash)`` holds; the number left, or None.

        ``matches`` is called for every unused code (no early exit), so the time does not tell which one
        matched; the read and the spend are one transaction, so a code is spent once."""
        with self._lock, self._conn.transaction():
            rows = self._conn.execute("SELECT id, salt, hash FROM operator_recovery_codes WHERE operator = ? "
                                      "AND used_at IS NULL", [name]).fetchall()
            match = None
            for rid, salt, digest in rows:
                if matches(salt, digest):
                    match = rid
            if match is None:
                return None
            cur = self._conn.execute("UPDATE operator_recovery_codes SET used_at = ? WHERE id = ? AND "
                                     "used_at IS NULL", [at, match])
            if cur.rowcount != 1:
                return None
        return len(rows) - 1
