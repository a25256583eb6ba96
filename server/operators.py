"""Operators of the security desk: accounts, roles, API tokens and second factors (docs/desk.md).

The application service behind ``/api/v1/operators``, the Operators page and ``doorkeep user``; the web layer
(server/web/api.py, operators_pages.py, account.py) and the CLI (server/web/cli.py) only translate to and from
it. Rows live in the store (migrations ``006_operators`` and ``009_operator_2fa``, server/store_operators.py).

Passwords are kept only as argon2id hashes (argon2-cffi's ``PasswordHasher``, RFC 9106 defaults).
API tokens are random, shown once, and kept only as a SHA-256 hash: a copy of the database lets nobody
call the API. Checking a password always runs one argon2 verification, against a dummy hash when the name
is unknown or the account disabled, so the answer and its timing do not tell whether a name exists.

Every change is recorded in the audit log (``operator.add``, ``operator.disable``, ``operator.password_reset``,
``operator.role_change``, ``operator.token_issue``, ``operator.token_revoke``) with the acting operator as actor,
never with a password or a token's secret.

A site must never lock itself out: the last active admin can be neither disabled nor given another role
(:class:`OperatorConflict`); the check and the change are one store transaction.

Roles are not a ladder: ``admin`` may do everything, ``desk`` runs the desk (visitors, live view, alarms,
doors, muster), ``auditor`` only reads (the audit log). A token may carry a role "no higher" than its
operator's, i.e. one whose rights are a subset of the operator's (:data:`GRANTS`).

Second factor (:class:`TwoFactor`): TOTP codes (RFC 6238, pyotp) and one-time recovery codes. Choices, and why:

- 30-second steps, 6 digits, SHA-1: what every authenticator app accepts. A code of the step before or after
  the server's is accepted too (one step of clock drift either way), and every code is single-use: a code is
  accepted only for a step later than the last one accepted (``operators.totp_last_step``), checked and
  written in one conditional UPDATE, so a code seen over a shoulder or replayed in parallel is refused.
- The secret is shown once at enrolment (text, ``otpauth://`` URI and a QR image) and becomes active only
  when the operator proves their app has it by typing a valid code. It is kept in the store (0600, like the
  password hashes): a copy of the database lets one make codes, so backups are protected like the keys.
- 10 recovery codes are shown once at enrolment and stored only as SHA-256 over a per-code random salt; each
  works once. Using one is audited with how many are left.
- An admin resets another operator's 2FA (a lost phone): its secret and codes are deleted and its sessions
  end (server/sessions.py ``DeskAuth.reset_second_factor``). Enrolment, recovery-code use and reset are
  audited (``operator.totp_enrol``, ``operator.totp_recovery_used``, ``operator.totp_reset``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from doorkeep.clock import Clock, SystemClock
from server.audit import AuditLog, Auditor, record_audit
from server.errors import ServerError
from server.store import Store
from server.store_operators import OperatorRow, TokenRow, TotpRow

log = logging.getLogger("doorkeep.server.desk")

# ------------------------------------------------------------------- roles

ADMIN, DESK, AUDITOR = "admin", "desk", "auditor"
#: The lobby's self check-in tablet (server/web/kiosk.py): its account opens the kiosk pages and the visitor's
#: badge to print, and nothing else of the desk.
KIOSK = "kiosk"
ROLES: tuple[str, ...] = (ADMIN, DESK, AUDITOR, KIOSK)
#: Every logged-in operator, whatever the role (for "who am I", logout, the home page).
ANY: tuple[str, ...] = ROLES
#: The roles an operator of each role may hand to an API token.
GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset(ROLES),
    DESK: frozenset({DESK}),
    AUDITOR: frozenset({AUDITOR}),
    KIOSK: frozenset({KIOSK}),
}

#: Login names: lower case, so "Alice" and "alice" are never two accounts.
NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}\Z")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,63}\Z")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 takes any length; a cap keeps a megabyte "password" from costing anything
TOKEN_PREFIX = "dkt_"


# ------------------------------------------------------------------ errors


class OperatorError(ServerError, ValueError):
    """An operator account or token cannot be made or changed as asked (bad name, role, password, label)."""


class OperatorExists(OperatorError):
    """The name (or the operator's token label) is taken."""


class UnknownOperator(OperatorError, LookupError):
    """No operator has that name."""


class OperatorConflict(OperatorError):
    """The change conflicts with the accounts as they are: it would disable or demote the last active admin."""


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    created_at: float
    disabled_at: float | None = None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


#: An API token as listed (never its secret or hash): the store's row, as the desk names it.
Token = TokenRow


def _operator(row: OperatorRow) -> Operator:
    """An account as the desk shows it (never its password hash)."""
    return Operator(row.name, row.role, row.created_at, row.disabled_at)


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


# --------------------------------------------------------------- accounts


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

    def add(self, name: str, role: str, password: str, *, actor: str) -> Operator:
        if not NAME.match(name):
            raise OperatorError(f"operator name {name!r} must be 1-64 lower-case letters, digits or . _ @ -, "
                                "starting with a letter or digit")
        if role not in ROLES:
            raise OperatorError(f"role {role!r} is not one of {', '.join(ROLES)}")
        check_password(password)
        now = self.clock.wall()
        if not self.store.insert_operator(name, role, self.hasher.hash(password), now):
            raise OperatorExists(f"operator {name!r} already exists")
        record_audit(self.audit, actor, "operator.add", name, {"role": role})
        return Operator(name, role, now)

    def get(self, name: str) -> Operator | None:
        row = self.store.operator_row(name)
        return _operator(row) if row else None

    def all(self) -> list[Operator]:
        return [_operator(r) for r in self.store.operator_rows()]

    def require(self, name: str) -> Operator:
        op = self.get(name)
        if op is None:
            raise UnknownOperator(f"no operator {name!r} (fix: doorkeep user add {name} --role ROLE --site DIR)")
        return op

    def disable(self, name: str, *, actor: str) -> bool:
        """Disable an account: its sessions and tokens stop working at once. False if already disabled.

        Raises :class:`OperatorConflict` for the last active admin: nobody could administer the site after."""
        self.require(name)
        outcome = self.store.disable_operator_keeping_an_admin(name, self.clock.wall())
        if outcome == "unknown":
            raise UnknownOperator(f"no operator {name!r}")
        if outcome == "last_admin":
            raise OperatorConflict(f"{name!r} is the last active admin: disabling it would leave nobody to "
                                   "administer the site (fix: add or promote another admin first)")
        self.revocations.notify("operator", name)  # even when already disabled: nothing of it may stay open
        if outcome == "disabled":
            record_audit(self.audit, actor, "operator.disable", name)
        return outcome == "disabled"

    def reset_password(self, name: str, new_password: str, *, actor: str) -> int:
        """Give an operator a new password (same rules and argon2id hashing as :meth:`add`) and end every
        session it has, so whoever knew the old one is out at once. API tokens stay (revoke them separately
        when they may be compromised too). Returns how many sessions ended; the password is never audited."""
        self.require(name)
        check_password(new_password)
        ended = self.store.replace_password(name, self.hasher.hash(new_password))
        if ended is None:
            raise UnknownOperator(f"no operator {name!r}")
        for digest in ended:
            self.revocations.notify("session", digest)
        record_audit(self.audit, actor, "operator.password_reset", name, {"sessions_ended": len(ended)})
        return len(ended)

    def set_role(self, name: str, role: str, *, actor: str) -> list[Token]:
        """Give an operator another role. Its sessions end (the next login carries the new role) and every live
        token carrying more than the new role grants is revoked. Returns the revoked tokens.

        Raises :class:`OperatorConflict` when it would take the admin role from the last active admin."""
        if role not in ROLES:
            raise OperatorError(f"role {role!r} is not one of {', '.join(ROLES)}")
        self.require(name)
        before = {t.id: t for t in self.tokens(name)}
        change = self.store.change_role(name, role, GRANTS[role], self.clock.wall())
        if change.outcome == "unknown":
            raise UnknownOperator(f"no operator {name!r}")
        if change.outcome == "last_admin":
            raise OperatorConflict(f"{name!r} is the last active admin: another role would leave nobody to "
                                   "administer the site (fix: add or promote another admin first)")
        if change.outcome == "unchanged":
            return []
        for digest in change.ended_sessions:
            self.revocations.notify("session", digest)
        for token_id in change.revoked_tokens:
            self.revocations.notify("token", token_id)
        record_audit(self.audit, actor, "operator.role_change", name,
                     {"from": change.old_role, "to": role, "tokens_revoked": list(change.revoked_tokens),
                      "sessions_ended": len(change.ended_sessions)})
        return [before[t] for t in change.revoked_tokens if t in before]

    def verify_password(self, name: str, password: str) -> Operator | None:
        """The active operator these credentials belong to, or None; one argon2 run whatever the outcome."""
        key = normalise_name(name)
        row = self.store.operator_row(key) if NAME.match(key) else None
        # Longer than any password we store: verify the dummy (bounded cost, same timing), never a prefix.
        too_long = len(password) > MAX_PASSWORD
        stored = row.password_hash if row is not None and not too_long else self._dummy_hash
        try:
            self.hasher.verify(stored, password[:MAX_PASSWORD])
            ok = row is not None and not too_long
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            return None
        op = _operator(row)
        if not op.active:
            return None
        if self.hasher.check_needs_rehash(stored):
            self.store.set_password_hash(op.name, self.hasher.hash(password))
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
        if not self.store.insert_token(token, sha256_hex(secret)):
            raise OperatorExists(f"operator {name!r} already has a token labelled {label!r} "
                                 "(fix: another label, or revoke it first with --revoke)")
        record_audit(self.audit, actor, "operator.token_issue", name, {"token": token.id, "label": label, "role": role})
        return secret, token

    def revoke_token(self, name: str, label: str, *, actor: str) -> bool:
        """Revoke the operator's live token with this label; False if there is none."""
        self.require(name)
        token_id = self.store.revoke_token(name, label, self.clock.wall())
        if token_id is None:
            return False
        self.revocations.notify("token", token_id)
        record_audit(self.audit, actor, "operator.token_revoke", name, {"token": token_id, "label": label})
        return True

    def tokens(self, name: str) -> list[Token]:
        """Every token of an operator, revoked ones too, oldest first (never a secret)."""
        return self.store.operator_tokens(name)

    def live_tokens(self, name: str) -> list[Token]:
        """The operator's tokens that still work: label, role, created, last used (never a secret)."""
        self.require(name)
        return [t for t in self.tokens(name) if t.revoked_at is None]

    def token_owner(self, secret: str) -> tuple[Operator, Token] | None:
        """The active operator and live token a bearer secret belongs to, or None.

        The token's role is only honoured while the operator's own role still grants it."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        token = self.store.live_token(sha256_hex(secret))
        if token is None:
            return None
        op = self.get(token.operator)
        if op is None or not op.active or token.role not in GRANTS[op.role]:
            return None
        now = self.clock.wall()
        if token.last_used_at is None or now - token.last_used_at > 60:
            self.store.touch_token(token.id, now)
        return op, token


@contextmanager
def operators_in(data_dir: Path, site_dir: Path | None = None) -> Iterator[Operators]:
    """The operator accounts of a server's data directory (created if new), audited to its log, for a command
    that runs beside the server (``doorkeep user …``: SQLite WAL, each change one short transaction).
    ``site_dir``: the site whose store this is, so its ``[store] url`` (or ``$DOORKEEP_STORE_URL``) opens the same
    store the server uses (server/store_url.py); else SQLite in ``data_dir``.
    Raises :class:`server.errors.StoreError` when the store cannot be opened."""
    from server.store_url import open_store, store_url_for

    store = open_store(data_dir, store_url_for(site_dir))
    try:
        yield Operators(store, audit=AuditLog(store))
    finally:
        store.close()


# ----------------------------------------------------------- second factor

STEP_S = 30
DIGITS = 6
#: Steps of clock drift accepted either side of the server's own step.
DRIFT_STEPS = 1
RECOVERY_CODES = 10
#: Recovery codes: 10 characters without look-alikes (0/o, 1/l/i), shown as two groups of five (~49 bits).
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
RECOVERY_LENGTH = 10
ISSUER = "doorkeep"
TOTP_CODE = re.compile(r"^[0-9]{6}\Z")


@dataclass(frozen=True)
class Enrolment:
    """A secret being enrolled: shown to the operator, active only once confirmed with a code."""

    secret: str
    uri: str

    @property
    def grouped(self) -> str:
        """The secret in groups of four, easier to type into an app by hand."""
        return " ".join(self.secret[i:i + 4] for i in range(0, len(self.secret), 4))


@dataclass(frozen=True)
class Status:
    enabled: bool
    enabled_at: float | None
    recovery_left: int


def normalise_code(code: str) -> str:
    """What the operator typed, without blanks, dashes and case (``123 456``, ``ABCDE-FGHJK``)."""
    return re.sub(r"[\s-]+", "", code).lower()


def _digest(salt: str, code: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + normalise_code(code).encode()).hexdigest()


def _salted(code: str) -> tuple[str, str]:
    """A recovery code as stored: ``(salt, SHA-256 over salt and code)``, its own random salt each."""
    salt = secrets.token_hex(16)
    return salt, _digest(salt, code)


class TwoFactor:
    """TOTP secrets and recovery codes of the operators in one store. Thread-safe (the store's lock)."""

    def __init__(self, store: Store, clock: Clock, audit: Auditor | None, *, issuer: str = ISSUER) -> None:
        self.store = store
        self.clock = clock
        self.audit = audit
        self.issuer = issuer

    def _row(self, name: str) -> TotpRow | None:
        return self.store.totp_row(name)

    def enabled(self, name: str) -> bool:
        row = self._row(name)
        return row is not None and row.secret is not None

    def status(self, name: str) -> Status:
        row = self._row(name)
        left = self.store.unused_recovery_codes(name)
        return Status(row is not None and row.secret is not None, row.enabled_at if row else None, left)

    # ------------------------------------------------------------ enrolment

    def begin(self, name: str) -> Enrolment:
        """The secret to enrol (the pending one if the page is shown again, so a scanned code stays valid)."""
        row = self._row(name)
        if row is None:
            raise LookupError(f"no operator {name!r}")
        secret = row.pending
        if not secret:
            secret = pyotp.random_base32(32)  # 160 bits, RFC 4226's recommended length
            self.store.set_totp_pending(name, secret)
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(name=name, issuer_name=self.issuer)
        return Enrolment(secret, uri)

    def confirm(self, name: str, code: str, *, actor: str) -> list[str] | None:
        """Activate the pending secret if ``code`` is valid for it; returns the new recovery codes (shown once),
        or None when the code is wrong or nothing is pending."""
        row = self._row(name)
        if row is None or not row.pending:
            return None
        step = self._matching_step(row.pending, code)
        if step is None:
            return None
        codes = [self._new_code() for _ in range(RECOVERY_CODES)]
        if not self.store.confirm_totp(name, row.pending, at=self.clock.wall(), step=step,
                                       recovery_codes=[_salted(code) for code in codes]):
            return None
        record_audit(self.audit, actor, "operator.totp_enrol", name, {"recovery_codes": len(codes)})
        return codes

    def reset(self, name: str, *, actor: str) -> bool:
        """Remove an operator's second factor (lost phone); False when they had none."""
        removed = self.store.reset_totp(name)
        if removed:
            record_audit(self.audit, actor, "operator.totp_reset", name)
        return removed

    # ------------------------------------------------------------ login

    def check(self, name: str, code: str, *, client: str = "") -> str | None:
        """``"totp"`` or ``"recovery"`` when ``code`` is a valid, unused second factor for ``name``; else None."""
        typed = normalise_code(code)
        if TOTP_CODE.match(typed):
            return "totp" if self._use_totp(name, typed) else None
        if len(typed) == RECOVERY_LENGTH and all(c in RECOVERY_ALPHABET for c in typed):
            left = self._use_recovery(name, typed)
            if left is not None:
                record_audit(self.audit, name, "operator.totp_recovery_used", name, {"left": left, "client": client})
                return "recovery"
        return None

    def _matching_step(self, secret: str, code: str) -> int | None:
        """The step (within the drift) whose code this is, compared in constant time for every step."""
        typed = normalise_code(code)
        if not TOTP_CODE.match(typed):
            return None
        totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
        now_step = int(self.clock.wall() // STEP_S)
        found = None
        for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
            if hmac.compare_digest(totp.at(step * STEP_S).encode(), typed.encode()):
                found = step
        return found

    def _use_totp(self, name: str, code: str) -> bool:
        row = self._row(name)
        if row is None or row.secret is None:
            return False
        step = self._matching_step(row.secret, code)
        if step is None:
            return False
        return self.store.accept_totp_step(name, row.secret, step)  # single use: only a later step than before

    def _use_recovery(self, name: str, code: str) -> int | None:
        """Spend a recovery code; the number left, or None when it is not one of the operator's unused codes."""
        # Every unused code is compared (the store calls this for each): the time does not tell which matched.
        return self.store.spend_recovery_code(
            name, lambda salt, digest: hmac.compare_digest(_digest(salt, code), digest), self.clock.wall())

    @staticmethod
    def _new_code() -> str:
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        return f"{raw[:5]}-{raw[5:]}"
