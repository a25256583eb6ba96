"""Logging in and staying logged in: sessions, CSRF tokens, failed-login throttling, two-factor challenges
(docs/desk.md). The application service behind the desk's login; the web layer (server/web/access.py, api.py,
pages.py) only carries cookies, headers and forms to and from it.

Policy (one place, documented in docs/desk.md):

- a session lives in the server's store, found by the SHA-256 of its cookie; it ends after
  :data:`SESSION_IDLE_S` without a request or :data:`SESSION_ABSOLUTE_S` after login, whichever is first;
- each session has its own CSRF token, required on every state-changing request made with the cookie;
- failed logins are counted per account name and per client address (both keyed by a hash, so a name
  typed by mistake is never stored). From the :data:`ACCOUNT_DELAY_AFTER`-th failure on an account the
  next attempt must wait 1, 2, 4 … up to :data:`MAX_DELAY_S` seconds; the :data:`ACCOUNT_LOCK_AFTER`-th
  locks it for :data:`LOCKOUT_S`. A client address gets more room (several operators share a desk PC).
  Counters are forgotten :data:`FAILURE_WINDOW_S` after the last failure. Unknown names are counted
  exactly like known ones, so throttling does not tell whether a name exists either.

The waits are enforced by refusing early attempts (HTTP 429 with ``Retry-After``), never by sleeping.
Checking the wait and counting the attempt are one step (:meth:`LoginThrottle.reserve`, under the store's
lock, in one transaction) taken *before* the slow argon2 check: every attempt counts as a failure until it
is proven right, so a parallel burst gets no more password checks than a sequence would.

With two-factor login (server/operators.py ``TwoFactor``) a right password opens a short-lived challenge
(:data:`CHALLENGE_S`, at most :data:`CHALLENGE_TRIES` codes) instead of a session; a wrong code counts toward
the same throttle as a wrong password, and only a right code clears the account's counter.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Callable

from doorkeep.clock import Clock, SystemClock
from server.audit import Auditor, record_audit
from server.errors import ServerError
from server.operators import ADMIN, Operator, Operators, TwoFactor, normalise_name, sha256_hex
from server.store import Store
from server.store_operators import FailureCount

log = logging.getLogger("doorkeep.server.desk")

SESSION_IDLE_S = 30 * 60
SESSION_ABSOLUTE_S = 12 * 3600
#: A session's last-seen time is written at most this often (a page load is not a disk write).
TOUCH_EVERY_S = 60.0
ACCOUNT_DELAY_AFTER = 3
ACCOUNT_LOCK_AFTER = 10
ADDRESS_DELAY_AFTER = 10
ADDRESS_LOCK_AFTER = 30
MAX_DELAY_S = 60.0
LOCKOUT_S = 15 * 60
FAILURE_WINDOW_S = 15 * 60
#: How long the code step of a two-factor login waits after the right password, and how many codes it takes.
CHALLENGE_S = 5 * 60
CHALLENGE_TRIES = 5


@dataclass(frozen=True)
class Principal:
    """Who is calling: an operator through a session (with its CSRF token) or through an API token."""

    name: str
    role: str
    via: str  # "session" | "token"
    csrf: str | None = None
    session_hash: str | None = None
    token_id: str | None = None
    #: An admin session without a second factor where the site requires one: it may only enrol (or log out).
    must_enrol: bool = False

    def csrf_ok(self, offered: str | None) -> bool:
        """Whether a state-changing request carries this session's CSRF token (tokens need none)."""
        if self.via == "token":
            return True
        return bool(offered) and self.csrf is not None and hmac.compare_digest(offered.encode(), self.csrf.encode())


@dataclass(frozen=True)
class LoginRefused(ServerError):
    """Why a login did not succeed: ``bad_credentials`` (401), ``code_required`` (401: the account has two-factor
    login; send the code), ``bad_code`` (401) or ``throttled`` (429, wait ``retry_after``)."""

    reason: str
    retry_after: float = 0.0
    locked: bool = False

    @property
    def message(self) -> str:
        if self.reason == "throttled":
            wait = max(1, int(self.retry_after + 0.999))
            if self.locked:
                return (f"too many failed logins: locked for {wait // 60 or 1} more minute(s); "
                        "an admin can help if you forgot your password")
            return f"too many failed logins: wait {wait} s before trying again"
        if self.reason == "code_required":
            return "this account uses two-factor login: enter the code from your authenticator app"
        if self.reason == "bad_code":
            return "wrong or already used code: enter the current code from your app, or a recovery code"
        return "wrong name or password"


def _as_tuple(count: FailureCount | None) -> tuple[int, float, float | None] | None:
    """A stored counter as the ``(failures, last failure, locked until)`` the throttle's rules work on."""
    return (count.failures, count.last_failure_at, count.locked_until) if count is not None else None


class LoginThrottle:
    """Failure counters per account name and per client address, in the store (they survive a restart)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    @staticmethod
    def keys(name: str, client: str) -> list[tuple[str, int, int]]:
        """``(key, delay_after, lock_after)`` for the account and the address of one attempt."""
        return [("name:" + sha256_hex(normalise_name(name))[:32], ACCOUNT_DELAY_AFTER, ACCOUNT_LOCK_AFTER),
                ("addr:" + sha256_hex(client)[:32], ADDRESS_DELAY_AFTER, ADDRESS_LOCK_AFTER)]

    def _row(self, key: str) -> tuple[int, float, float | None] | None:
        count = self.store.login_failure(key)
        return _as_tuple(count)

    def _live(self, row: tuple[int, float, float | None] | None, now: float) -> tuple[int, float, float | None]:
        """The counter as it stands now: zero once a lockout or the failure window has passed."""
        if row is None:
            return 0, 0.0, None
        failures, last, locked_until = row
        if locked_until is not None:
            return (failures, last, locked_until) if now < locked_until else (0, 0.0, None)
        return (0, 0.0, None) if now - last > FAILURE_WINDOW_S else row

    def _wait(self, rows: list[tuple[str, int, int, tuple[int, float, float | None]]], now: float) -> tuple[float, bool]:
        worst, locked = 0.0, False
        for _, delay_after, _, (failures, last, locked_until) in rows:
            if locked_until is not None:
                worst, locked = max(worst, locked_until - now), True
            elif failures >= delay_after:
                allowed = last + min(2.0 ** (failures - delay_after), MAX_DELAY_S)
                worst = max(worst, allowed - now)
        return max(0.0, worst), locked

    def wait(self, name: str, client: str) -> tuple[float, bool]:
        """Seconds before this attempt may be checked (0: now), and whether that is a lockout (read only)."""
        now = self.clock.wall()
        rows = [(key, d, lk, self._live(self._row(key), now)) for key, d, lk in self.keys(name, client)]
        return self._wait(rows, now)

    def reserve(self, name: str, client: str) -> list[str]:
        """Check the wait and count this attempt as a failure, atomically, before the password is checked.

        Raises :class:`LoginRefused` (throttled) when the attempt must wait; otherwise returns the kinds
        (name/addr) this attempt just locked. A right answer gives the count back (:meth:`refund`,
        :meth:`succeeded`)."""
        now = self.clock.wall()
        locked: list[str] = []
        keys = self.keys(name, client)

        def count(current: dict[str, FailureCount | None]) -> dict[str, FailureCount]:
            rows = [(key, delay_after, lock_after, self._live(_as_tuple(current[key]), now))
                    for key, delay_after, lock_after in keys]
            wait, is_lock = self._wait(rows, now)
            if wait > 0:
                raise LoginRefused("throttled", wait, is_lock)
            return self._one_more([(key, lock_after, failures) for key, _, lock_after, (failures, _, _) in rows],
                                  now, locked)

        self.store.update_login_failures([key for key, _, _ in keys], count)
        return locked

    @staticmethod
    def _one_more(counts: list[tuple[str, int, int]], now: float, locked: list[str]) -> dict[str, FailureCount]:
        """Each key's live failures + 1, locked when that reaches its limit; the kinds locked go to ``locked``."""
        out = {}
        for key, lock_after, failures in counts:
            failures += 1
            until = now + LOCKOUT_S if failures >= lock_after else None
            if until is not None:
                locked.append(key.split(":")[0])
            out[key] = FailureCount(failures, now, until)
        return out

    def failed(self, name: str, client: str) -> list[str]:
        """Count one failure on the account and the address (no wait check); the kinds it just locked."""
        now = self.clock.wall()
        locked: list[str] = []
        keys = self.keys(name, client)

        def count(current: dict[str, FailureCount | None]) -> dict[str, FailureCount]:
            return self._one_more([(key, lock_after, self._live(_as_tuple(current[key]), now)[0])
                                   for key, _, lock_after in keys], now, locked)

        self.store.update_login_failures([key for key, _, _ in keys], count)
        return locked

    def refund(self, name: str, client: str, *, account: bool = True) -> None:
        """Give back one reserved attempt (it turned out right) on the address, and on the account if asked;
        a lockout that attempt caused is lifted with it."""
        keys = self.keys(name, client) if account else self.keys(name, client)[1:]

        def give_back(current: dict[str, FailureCount | None]) -> dict[str, FailureCount]:
            out = {}
            for key, _, lock_after in keys:
                row = current[key]
                if row is None:
                    continue
                failures = max(0, row.failures - 1)
                out[key] = FailureCount(failures, row.last_failure_at,
                                        None if failures < lock_after else row.locked_until)
            return out

        self.store.update_login_failures([key for key, _, _ in keys], give_back)

    def succeeded(self, name: str, client: str = "") -> None:
        """A complete login clears the account's counter and gives back the address's reserved attempt (not its
        whole count: one good account must not reset the count of a client guessing others)."""
        key = self.keys(name, "")[0][0]
        self.store.clear_login_failures(key)
        if client:
            self.refund(name, client, account=False)


class Sessions:
    """Server-side sessions; the browser holds only a random id, the store only its hash."""

    def __init__(self, store: Store, clock: Clock, on_end: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.on_end = on_end  # told ("session", hash) when a session ends, so its live streams end too

    def create(self, operator: str, client: str) -> tuple[str, str]:
        """A new session: ``(cookie value, CSRF token)``. Expired sessions are swept here."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.clock.wall()
        self.store.create_session(sha256_hex(sid), operator, csrf, client, now, idle_before=now - SESSION_IDLE_S,
                                  started_before=now - SESSION_ABSOLUTE_S)
        return sid, csrf

    def lookup(self, sid: str) -> tuple[str, str, str] | None:
        """``(operator, csrf, hash)`` of a live session, touching it; None when unknown or expired."""
        if not sid or len(sid) > 200:
            return None
        digest = sha256_hex(sid)
        now = self.clock.wall()
        row = self.store.session_row(digest)
        if row is None:
            return None
        operator, csrf, created, seen = row.operator, row.csrf, row.created_at, row.last_seen_at
        if now - seen > SESSION_IDLE_S or now - created > SESSION_ABSOLUTE_S:
            self.end(digest)
            return None
        if now - seen > TOUCH_EVERY_S:
            self.store.touch_session(digest, now)
        return operator, csrf, digest

    def expires_at(self, digest: str) -> float | None:
        """When the session ends if idle from now on (the earlier of the idle and absolute limits)."""
        row = self.store.session_row(digest)
        if row is None:
            return None
        return min(self.clock.wall() + SESSION_IDLE_S, row.created_at + SESSION_ABSOLUTE_S)

    def end(self, digest: str) -> None:
        self.store.delete_session(digest)
        if self.on_end is not None:
            self.on_end("session", digest)

    def of(self, operator: str) -> list[str]:
        """The hashes of every session an operator has open."""
        return self.store.session_hashes(operator)


@dataclass(frozen=True)
class LoggedIn:
    operator: Operator
    session_id: str
    csrf: str


@dataclass(frozen=True)
class CodeNeeded:
    """The password was right and the account has two-factor login: send a code with this challenge."""

    operator: Operator
    challenge: str


@dataclass
class _Challenge:
    operator: str
    client: str
    created_at: float
    tries: int = 0


class DeskAuth:
    """Everything the HTTP layer asks about identity: log in, log out, who is this request."""

    def __init__(self, operators: Operators, store: Store, *, clock: Clock | None = None,
                 audit: Auditor | None = None, require_totp_for_admins: bool = False) -> None:
        self.operators = operators
        self.clock = clock or SystemClock()
        self.audit = audit
        self.sessions = Sessions(store, self.clock, on_end=operators.revocations.notify)
        self.throttle = LoginThrottle(store, self.clock)
        self.twofactor = TwoFactor(store, self.clock, audit)
        self.require_totp_for_admins = require_totp_for_admins
        # Challenges of the code step live in memory only: a restart just asks for the password again.
        self._challenges: dict[str, _Challenge] = {}
        self._challenge_lock = threading.Lock()

    def login(self, name: str, password: str, client: str, code: str | None = None) -> LoggedIn:
        """Name, password and (for a two-factor account) code in one call, as the API takes them; raises
        :class:`LoginRefused`. Blocking (argon2): call it from a worker thread."""
        result = self.check_password(name, password, client)
        if isinstance(result, LoggedIn):
            return result
        if not code:
            self._drop(result.challenge)
            raise LoginRefused("code_required")
        return self.check_code(result.challenge, code, client)

    def check_password(self, name: str, password: str, client: str) -> LoggedIn | CodeNeeded:
        """The password step: a session, or (two-factor account) a challenge for the code step."""
        newly_locked = self.throttle.reserve(name, client)  # raises when throttled; counted before argon2
        op = self.operators.verify_password(name, password)
        if op is None:
            known = self.operators.get(normalise_name(name)) is not None
            # The attempted name is recorded only when it is an account: a mistyped one may be a password.
            target = normalise_name(name) if known else None
            record_audit(self.audit, "anonymous", "operator.login_failed", target,
                         {"client": client, "known_name": known})
            if newly_locked:
                record_audit(self.audit, "system", "operator.lockout", target,
                             {"client": client, "by": sorted(newly_locked), "minutes": LOCKOUT_S // 60})
            raise LoginRefused("bad_credentials")
        if self.twofactor.enabled(op.name):
            # Give back this attempt only (not the account's whole count): wrong codes keep counting, and a
            # right password never wipes them.
            self.throttle.refund(name, client)
            token = secrets.token_urlsafe(32)
            with self._challenge_lock:
                now = self.clock.wall()
                for key in [k for k, c in self._challenges.items() if now - c.created_at > CHALLENGE_S]:
                    del self._challenges[key]
                self._challenges[sha256_hex(token)] = _Challenge(op.name, client, now)
            return CodeNeeded(op, token)
        return self._open(op, client, name)

    def check_code(self, challenge: str, code: str, client: str) -> LoggedIn:
        """The code step: a TOTP code or a recovery code for the challenged operator; raises LoginRefused."""
        key = sha256_hex(challenge or "")
        with self._challenge_lock:
            found = self._challenges.get(key)
            if found is not None and (self.clock.wall() - found.created_at > CHALLENGE_S
                                      or found.tries >= CHALLENGE_TRIES):
                del self._challenges[key]
                found = None
            if found is not None:
                found.tries += 1
        if found is None:
            raise LoginRefused("bad_credentials")  # expired or unknown: start again with the password
        name = found.operator
        newly_locked = self.throttle.reserve(name, client)
        op = self.operators.get(name)
        kind = self.twofactor.check(name, code, client=client) if op is not None and op.active else None
        if kind is None:
            record_audit(self.audit, "anonymous", "operator.login_failed", name,
                         {"client": client, "known_name": True, "step": "code"})
            if newly_locked:
                record_audit(self.audit, "system", "operator.lockout", name,
                             {"client": client, "by": sorted(newly_locked), "minutes": LOCKOUT_S // 60})
            raise LoginRefused("bad_code")
        self._drop(challenge)
        assert op is not None
        return self._open(op, client, name, second_factor=kind)

    def _drop(self, challenge: str) -> None:
        with self._challenge_lock:
            self._challenges.pop(sha256_hex(challenge), None)

    def _open(self, op: Operator, client: str, typed_name: str, second_factor: str | None = None) -> LoggedIn:
        self.throttle.succeeded(typed_name, client)
        sid, csrf = self.sessions.create(op.name, client)
        details = {"client": client, **({"second_factor": second_factor} if second_factor else {})}
        record_audit(self.audit, op.name, "operator.login", op.name, details)
        return LoggedIn(op, sid, csrf)

    def logout(self, who: Principal) -> None:
        if who.session_hash is not None:
            self.sessions.end(who.session_hash)
            record_audit(self.audit, who.name, "operator.logout", who.name)

    def end_sessions(self, name: str) -> int:
        """End every session of an operator (after a 2FA reset); returns how many there were."""
        digests = self.sessions.of(name)
        for digest in digests:
            self.sessions.end(digest)
        return len(digests)

    def reset_second_factor(self, name: str, *, actor: str) -> bool:
        """Remove an operator's second factor (a lost phone) and end their sessions, so they log in with the
        password and enrol again. False when they had none; raises :class:`server.operators.UnknownOperator`."""
        self.operators.require(name)
        changed = self.twofactor.reset(name, actor=actor)
        if changed:
            self.end_sessions(name)
        return changed

    def must_enrol(self, op: Operator) -> bool:
        """Whether this operator must enrol a second factor before using the desk (site setting, admins)."""
        return self.require_totp_for_admins and op.role == ADMIN and not self.twofactor.enabled(op.name)

    def from_session(self, sid: str) -> Principal | None:
        found = self.sessions.lookup(sid)
        if found is None:
            return None
        name, csrf, digest = found
        op = self.operators.get(name)
        if op is None or not op.active:
            self.sessions.end(digest)
            return None
        return Principal(op.name, op.role, "session", csrf=csrf, session_hash=digest, must_enrol=self.must_enrol(op))

    def from_token(self, secret: str) -> Principal | None:
        found = self.operators.token_owner(secret)
        if found is None:
            return None
        op, token = found
        return Principal(op.name, token.role, "token", token_id=token.id)

