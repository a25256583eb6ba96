"""Visitor passes on the server: issuing, revoking, and the pass as a credential of the live site.

A pass (doorkeep/visitor_pass.py) is a token signed with the site's *pass key*, an Ed25519 key of its own
(``SITE/keys/pass-signing.key``, written by ``doorkeep key init-signing SITE/keys/pass-signing.key``, mode
0600, kept and backed up like the policy-signing key; never the policy key itself, so a leaked pass key
mints passes but cannot sign a policy or a command). Its public half, with its key id, travels to every edge
in the signed policy (``pass_keys``), so a door checks a pass's signature and window without the server.

Every pass issued is a row of ``visitor_passes`` (visit, serial, the credential's keyed hash, window, state):
:func:`pass_credentials` turns the rows into credentials of the visitor in the live site
(server/directory.py folds them in like the pool badges), so the server's ``decide()`` and the policy an
edge caches treat a pass exactly like a card: areas, escort, the visit window, lockdowns. A pass is
*active* only while its visit is checked in and the pass is neither revoked nor replaced; otherwise it is
an inactive credential (``credential_inactive``): before check-in, after check-out, after a cancellation or
a lost-pass report (which re-issues under the next serial if asked). The token itself stops working at the
end of its window even on an edge that never hears of any of that (the edge checks it: ``expired``).

Nothing here holds a name: the token carries the visit id and the row the keyed hash.
"""

from __future__ import annotations

import logging
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from doorkeep.clock import Clock
from doorkeep.credentials import card_hash, last4
from doorkeep.model import Credential, CredentialState
from doorkeep.visitor_pass import FORMAT, PassClaims, credential_number, key_id, public_key_text, read_pass, sign_pass
from doorkeep.visitor_pass import PassError as VisitorPassError
from server.audit import Auditor, subject_ref
from server.errors import ServerError
from server.store_passes import TABLE

if TYPE_CHECKING:
    from server.directory import Directory, Visitor
    from server.store import Store

log = logging.getLogger("doorkeep.server.passes")

#: Where the pass key lives in a site directory (beside policy-signing.key).
PASS_KEY_FILE = "pass-signing.key"
#: Public halves of retired pass keys still accepted at the doors (passes issued before a rotation).
RETIRED_GLOB = "pass-signing.retired-*.pub"
#: Why a pass stopped: the row's ``state``; ``active`` is the only state that opens a door (when checked in).
STATES = ("active", "replaced", "lost", "cancelled", "revoked")
REVOKE_REASONS = ("lost", "cancelled", "revoked")


class PassError(ServerError, ValueError):
    """A pass that cannot be issued or revoked now; the message says why (HTTP 409/422 at the desk)."""


class PassesDisabled(PassError):
    """The site has no pass key: passes are off until one is created."""


@dataclass(frozen=True)
class PassKeys:
    """The key passes are signed with now, and every key a door still accepts (the current one included)."""

    signing: Ed25519PrivateKey
    accepted: tuple[Ed25519PublicKey, ...] = ()

    @property
    def key_id(self) -> str:
        return key_id(self.signing.public_key())

    def policy_keys(self) -> dict[str, str]:
        """``{key id: base64 raw public key}`` as the signed policy carries them (``pass_keys``)."""
        keys = {key_id(k): public_key_text(k) for k in self.accepted}
        keys[self.key_id] = public_key_text(self.signing.public_key())
        return keys


def load_pass_keys(keys_dir: Path) -> PassKeys | None:
    """``KEYS/pass-signing.key`` (and retired public keys beside it); None when the site has no pass key.

    The file is refused when group or others may read it, as the policy key is; a damaged file is an error
    naming the fix, never a silent "passes off".
    """
    path = Path(keys_dir) / PASS_KEY_FILE
    fix = f"create it with `doorkeep key init-signing {path}`"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PassError(f"{path}: cannot read the pass key: {e.strerror} (fix: run as the key's owner)") from None
    if mode & 0o077:
        raise PassError(f"{path}: the pass key is accessible by group or others (mode {mode:03o}) "
                        f"(fix: chmod 600 {path})")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PassError(f"{path}: not an unencrypted PEM private key (fix: {fix})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PassError(f"{path}: the pass key must be Ed25519 (fix: {fix})")
    retired = []
    for pub_path in sorted(Path(keys_dir).glob(RETIRED_GLOB)):
        pub = serialization.load_pem_public_key(pub_path.read_bytes())
        if not isinstance(pub, Ed25519PublicKey):
            raise PassError(f"{pub_path}: a retired pass key must be an Ed25519 public key (PEM)")
        retired.append(pub)
    return PassKeys(key, tuple(retired))


def pass_credentials(rows: Iterable[dict[str, Any]], visitors: dict[str, Visitor]) -> dict[str, Credential]:
    """The passes of the visitors still on the register, as credentials of those visitors.

    Active (opens doors by the visitor's rules) only while the pass is ``active`` and its visit checked in;
    ``lost`` for a pass reported lost; revoked otherwise (before check-in, after check-out, replaced,
    cancelled), so a door answers ``credential_inactive`` and the desk shows why.
    """
    creds = {}
    for row in rows:
        v = visitors.get(row["visit"])
        if v is None:
            continue
        if row["state"] == "active" and v.status == "checked_in":
            state = CredentialState.ACTIVE
        elif row["state"] == "lost":
            state = CredentialState.LOST
        else:
            state = CredentialState.REVOKED
        creds[row["hash"]] = Credential(row["hash"], row["last4"], FORMAT, v.id, state)
    return creds


@dataclass(frozen=True)
class IssuedPass:
    """A pass just issued: the token to put in a QR code (or the invitation), and what it says."""

    token: str
    claims: PassClaims
    credential_hash: str


class Passes:
    """Issue and revoke visitor passes; every change rebuilds the live site (and so the edges' policies)."""

    def __init__(self, directory: Directory, store: Store, clock: Clock, keys: PassKeys | None, *,
                 audit: Auditor | None = None) -> None:
        self.directory = directory
        self.store = store
        self.clock = clock
        self.keys = keys
        self.audit = audit if audit is not None else directory.audit

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def policy_keys(self) -> dict[str, str] | None:
        """What the policy publisher signs into every policy (None: the site issues no passes)."""
        return self.keys.policy_keys() if self.keys is not None else None

    def rows(self, visitor_id: str) -> list[dict[str, Any]]:
        """The passes issued for one visit, oldest first."""
        return sorted((r for r in self.store.rows(TABLE) if r["visit"] == visitor_id), key=lambda r: r["serial"])

    def issue_pass(self, visitor_id: str, *, actor: str = "system") -> IssuedPass:
        """A pass for the visit, valid for the visit's window; any earlier pass of the visit is replaced.

        The window is widened to whole seconds (the token's resolution), so the pass never ends before the
        visit; the visit's own window still bounds every decision.
        """
        if self.keys is None:
            raise PassesDisabled(f"this site has no pass key (fix: `doorkeep key init-signing "
                                 f"{self.directory.bundle.dir / 'keys' / PASS_KEY_FILE}` and restart the server)")
        with self.directory.changing():
            v = self._visitor(visitor_id)
            if v.status == "checked_out":
                raise PassError(f"visit {visitor_id} has ended (checked out): register a new visit")
            now = self.clock.wall()
            if now >= v.valid_until:
                raise PassError(f"visit {visitor_id}'s window has ended: register a new visit")
            earlier = self.rows(visitor_id)
            serial = max((r["serial"] for r in earlier), default=0) + 1
            claims = PassClaims(visitor_id, math.floor(v.valid_from), math.ceil(v.valid_until), serial)
            token = sign_pass(claims, self.keys.signing)
            number = credential_number(visitor_id, serial)
            h = card_hash(self.directory.key, FORMAT, number)
            with self.store.transaction():
                for r in earlier:
                    if r["state"] == "active":
                        self.store.upsert(TABLE, {**r, "state": "replaced", "ended_at": now}, "id")
                self.store.upsert(TABLE, {"id": f"{visitor_id}#{serial}", "visit": visitor_id, "serial": serial,
                                          "hash": h, "last4": last4(number), "key_id": self.keys.key_id,
                                          "not_before": claims.not_before, "not_after": claims.not_after,
                                          "state": "active", "issued_at": now, "ended_at": None,
                                          "issued_by": actor}, "id")
        # Rebuilt after the writer lock is let go: refresh may read people again, which takes the people lock
        # first (server/directory.py), so it must not run under the writer lock.
        self.directory.refresh(action="visitor.pass_issue", actor=actor,
                               target=subject_ref(self.directory.key, visitor_id),
                               details={"serial": serial, "key_id": self.keys.key_id,
                                        "replaced": [r["serial"] for r in earlier if r["state"] == "active"]})
        return IssuedPass(token, PassClaims(visitor_id, claims.not_before, claims.not_after, serial,
                                            self.keys.key_id), h)

    def revoke_pass(self, visitor_id: str, reason: str, *, actor: str = "system") -> int:
        """End every active pass of the visit (``lost``, ``cancelled`` or ``revoked``); how many were ended.

        From the next policy on, the edges refuse them (``credential_inactive``); the server at once.
        """
        if reason not in REVOKE_REASONS:
            raise PassError(f"a pass is revoked as {', '.join(REVOKE_REASONS)}, not {reason!r}")
        with self.directory.changing():
            self._visitor(visitor_id)
            active = [r for r in self.rows(visitor_id) if r["state"] == "active"]
            now = self.clock.wall()
            with self.store.transaction():
                for r in active:
                    self.store.upsert(TABLE, {**r, "state": reason, "ended_at": now}, "id")
        if active:  # rebuilt outside the writer lock, as in issue_pass
            self.directory.refresh(action=f"visitor.pass_{reason}", actor=actor,
                                   target=subject_ref(self.directory.key, visitor_id),
                                   details={"serials": [r["serial"] for r in active]})
        return len(active)

    def current(self, visitor_id: str) -> IssuedPass | None:
        """The visit's active pass as issued, or None (none yet, ended, or signed under a retired key).

        The token is not stored (only its keyed hash): Ed25519 signatures are deterministic (RFC 8032), so
        signing the row's claims again gives back the very text issued. The printed badge, the desk's "Show
        pass" and a resent invitation all carry the pass the visitor already holds, never a replacement that
        would silently void it."""
        if self.keys is None:
            return None
        row = next((r for r in reversed(self.rows(visitor_id)) if r["state"] == "active"), None)
        if row is None or row["key_id"] != self.keys.key_id:
            return None
        claims = PassClaims(visitor_id, int(row["not_before"]), int(row["not_after"]), int(row["serial"]))
        token = sign_pass(claims, self.keys.signing)
        return IssuedPass(token, PassClaims(visitor_id, claims.not_before, claims.not_after, claims.serial,
                                            self.keys.key_id), row["hash"])

    def ensure_pass(self, visitor_id: str, *, actor: str = "system") -> IssuedPass:
        """The visit's active pass, issued now if it has none (a walk-in, a pass under a retired key)."""
        return self.current(visitor_id) or self.issue_pass(visitor_id, actor=actor)

    def report_lost(self, visitor_id: str, *, actor: str) -> IssuedPass:
        """A lost pass: every active pass of the visit ends as ``lost`` (refused at the doors with that
        reason from the next policy on), and a new one is issued under the next serial."""
        self._visitor(visitor_id)
        self.revoke_pass(visitor_id, "lost", actor=actor)
        return self.issue_pass(visitor_id, actor=actor)

    def read(self, token: str) -> IssuedPass:
        """The pass a visitor shows (the kiosk's scan, a typed code): checked against this site's keys and
        its row; :class:`PassError` when it is not a pass of this site, or it was replaced, lost or cancelled."""
        if self.keys is None:
            raise PassesDisabled("this site issues no visitor passes")
        keys = {key_id(k): k for k in (*self.keys.accepted, self.keys.signing.public_key())}
        try:
            held = read_pass(token, keys)
        except VisitorPassError as exc:
            raise PassError(f"not a visitor pass of this site: {exc}") from None
        number = credential_number(held.claims.visit, held.claims.serial)
        h = card_hash(self.directory.key, FORMAT, number)
        row = next((r for r in self.rows(held.claims.visit) if r["hash"] == h), None)
        if row is None or row["state"] != "active":
            why = "unknown here" if row is None else row["state"]
            raise PassError(f"this pass is no longer valid ({why}): ask the desk for a new one")
        return IssuedPass(held.text, held.claims, h)

    def _visitor(self, visitor_id: str) -> Visitor:
        from server.directory import DirectoryError  # here: server.directory imports this module

        try:
            return self.directory.visitor(visitor_id)
        except DirectoryError:
            raise PassError(f"no visitor {visitor_id!r}") from None


__all__ = ["IssuedPass", "PassError", "PassKeys", "Passes", "PassesDisabled", "load_pass_keys", "pass_credentials"]
