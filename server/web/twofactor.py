"""Operators' optional second factor: TOTP codes (RFC 6238, pyotp) and one-time recovery codes (docs/desk.md
"Two-factor login"). Columns and table of store migration ``009_operator_2fa``.

Choices, and why:

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
  end. Enrolment, recovery-code use and reset are audited (``operator.totp_enrol``, ``operator.totp_recovery_used``,
  ``operator.totp_reset``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import pyotp

from doorkeep.clock import Clock
from server.audit import Auditor
from server.store import Store
from server.store_operators import TotpRow
from server.web.operators import record_audit

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


def qr_png(uri: str) -> bytes | None:
    """The otpauth URI as a QR code PNG (OpenCV's encoder), or None when OpenCV cannot make one."""
    try:
        import cv2

        matrix = cv2.QRCodeEncoder.create().encode(uri)
        if matrix is None or not matrix.size:
            return None
        scale = 6
        big = cv2.resize(matrix, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        padded = cv2.copyMakeBorder(big, 4 * scale, 4 * scale, 4 * scale, 4 * scale, cv2.BORDER_CONSTANT, value=255)
        ok, png = cv2.imencode(".png", padded)
        return bytes(png) if ok else None
    except Exception:  # a QR image is a convenience: the secret and the URI are on the page anyway
        return None


def qr_data_uri(uri: str) -> str | None:
    png = qr_png(uri)
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else None


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
