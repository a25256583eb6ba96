"""The visitor pass: a short signed token a visitor carries as a QR code (or types at the kiosk).

A pass says *which visit*, *when* and *who signed it*, and nothing else: no name, no card number, no site
data a photographed pass would give away. It is a credential like a card (docs/security.md "Visitor
passes"): the edge hashes :meth:`VisitorPass.credential_number` with the site's credential key exactly as it
hashes a card (``doorkeep.credentials.card_hash`` with the format ``qr-pass``), so the server and an edge
deciding from its cached policy decide it by the same rules (escort, areas, window, revocation). On top of
that the edge checks the token itself before it asks anyone: its signature against the pass keys the signed
policy carries (``pass_keys``), and its window against its own clock, so a pass after its window is refused
even with the server unreachable, and a forged one never reaches the relay or the server.

Binary layout (big-endian), then ``PREFIX`` + RFC 4648 base32 without padding::

    version  u8      1
    key_id   4 bytes the first 4 bytes of SHA-256 of the signer's raw Ed25519 public key
    not_before u32   UTC epoch seconds (integer)
    not_after  u32   UTC epoch seconds; the pass is valid while not_before <= now < not_after
    serial   u16     the visit's pass number: a re-issued (lost) pass gets the next one
    visit    u8 length + that many ASCII bytes [A-Za-z0-9_-] (1-32)
    signature 64 bytes  Ed25519 over DOMAIN + every byte before it

Why base32 and Ed25519: the text is upper-case letters and digits only, so it is QR *alphanumeric* data (5.5
bits a character) and passes unchanged through the ASCII reader protocol a serial QR scanner speaks
(edge/framing.py: letters and digits only); a visit id of 14 characters gives 155 characters: a version 7 QR
at error correction M (45x45 modules), version 6 at L (41x41; docs/performance.md). Ed25519 lets the edge *verify* with a public key
that cannot *mint* passes, where an HMAC would put the minting secret on every Pi's SD card.

Parsing is strict and never raises anything but :class:`PassError`: a wrong prefix, a character outside the
alphabet (lower case included), a non-canonical encoding (padding bits set), a wrong length or version, an
empty window or a bad visit id are errors, so that *any* change to a token's text is refused (the property
tests in tests/unit/test_visitor_pass.py flip every bit). Pure: stdlib and ``cryptography`` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from doorkeep.errors import DoorkeepError

#: Every pass token starts with this (letters and digits, so the whole token stays QR alphanumeric).
PREFIX = "DKP1"
VERSION = 1
#: The card format (``credential_format``) a pass is hashed and reported under.
FORMAT = "qr-pass"
#: Signed before the body, so a pass signature can never be replayed as any other Ed25519 signature.
DOMAIN = b"doorkeep visitor pass/1\x00"
KEY_ID_BYTES = 4
SIGNATURE_BYTES = 64
MAX_VISIT_CHARS = 32
_HEAD = struct.Struct(">B4sIIHB")  # version, key id, not before, not after, serial, visit length
_VISIT = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
MIN_BYTES = _HEAD.size + 1 + SIGNATURE_BYTES
MAX_BYTES = _HEAD.size + MAX_VISIT_CHARS + SIGNATURE_BYTES
#: The longest token text (a 32-character visit id): what a reader line must be able to hold.
MAX_TOKEN_CHARS = len(PREFIX) + (MAX_BYTES * 8 + 4) // 5
U32_MAX = 2**32 - 1


class PassError(DoorkeepError, ValueError):
    """A token that is not a valid pass; ``reason`` is a short code (``malformed``, ``unknown_key``,
    ``bad_signature``) and the message says what was wrong, never echoing more than a few characters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PassClaims:
    """What a pass asserts; ``key_id`` names the key that signs (or signed) it."""

    visit: str
    not_before: int
    not_after: int
    serial: int = 1
    key_id: str = ""

    def check(self) -> None:
        """Refuse claims no pass may carry (the parser and the signer apply the same rules)."""
        if not isinstance(self.visit, str) or not _VISIT.fullmatch(self.visit):
            raise PassError("malformed", "the pass's visit id must be 1-32 characters [A-Za-z0-9_-]")
        for name in ("not_before", "not_after", "serial"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PassError("malformed", f"the pass's {name} must be an integer")
        if not 0 <= self.not_before <= U32_MAX or not 0 <= self.not_after <= U32_MAX:
            raise PassError("malformed", "the pass's window must be UTC epoch seconds within 1970-2106")
        if self.not_after <= self.not_before:
            raise PassError("malformed", "the pass's window ends before it starts")
        if not 0 <= self.serial <= 0xFFFF:
            raise PassError("malformed", "the pass's serial must be 0-65535")


@dataclass(frozen=True)
class VisitorPass:
    """A parsed token: its claims, the signed bytes and the signature (not yet verified)."""

    claims: PassClaims
    signed: bytes
    signature: bytes
    text: str

    @property
    def credential_number(self) -> str:
        """What the edge hashes like a card number: the visit and the pass's serial, so a re-issued pass is a
        new credential and the lost one can be revoked alone; the last four characters are the visit id's."""
        return credential_number(self.claims.visit, self.claims.serial)

    def window_reason(self, now: float) -> str | None:
        """None inside the window; else the decision reason a card would get: ``not_yet_valid`` / ``expired``."""
        if now < self.claims.not_before:
            return "not_yet_valid"
        if now >= self.claims.not_after:
            return "expired"
        return None


def credential_number(visit: str, serial: int) -> str:
    """The "card number" of a pass (see :attr:`VisitorPass.credential_number`)."""
    return f"{serial}/{visit}"


def key_id(public: Ed25519PublicKey) -> str:
    """A public key's id as 8 hex digits: the first 4 bytes of SHA-256 of its raw 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES].hex()


def public_key_text(public: Ed25519PublicKey) -> str:
    """A public key as the signed policy carries it: base64 of its raw 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """The inverse of :func:`public_key_text`; :class:`PassError` for anything else."""
    try:
        raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise PassError("malformed", "a pass key must be the base64 of a raw 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def looks_like_pass(text: str) -> bool:
    """Whether a line read from a reader is meant as a pass (it starts with :data:`PREFIX`); whether it *is*
    one is for :func:`parse_pass` to say."""
    return text.startswith(PREFIX)


def sign_pass(claims: PassClaims, key: Ed25519PrivateKey) -> str:
    """The token text for ``claims`` signed with ``key`` (its ``key_id`` is filled in from the key)."""
    kid = key_id(key.public_key())
    claims = PassClaims(claims.visit, claims.not_before, claims.not_after, claims.serial, kid)
    claims.check()
    visit = claims.visit.encode("ascii")
    body = _HEAD.pack(VERSION, bytes.fromhex(kid), claims.not_before, claims.not_after, claims.serial,
                      len(visit)) + visit
    raw = body + key.sign(DOMAIN + body)
    return PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=")


def parse_pass(text: object) -> VisitorPass:
    """A token's claims, checked for form only (:func:`verify_pass` checks the signature)."""
    if not isinstance(text, str):
        raise PassError("malformed", "a pass token must be text")
    if not text.startswith(PREFIX):
        raise PassError("malformed", f"a pass token starts with {PREFIX}")
    data = text[len(PREFIX):]
    if len(text) > MAX_TOKEN_CHARS:
        raise PassError("malformed", f"a pass token has at most {MAX_TOKEN_CHARS} characters, this has {len(text)}")
    if not data or any(c not in _B32 for c in data):
        raise PassError("malformed", "a pass token after its prefix is base32: upper-case A-Z and 2-7 only")
    if len(data) % 8 in (1, 3, 6):
        raise PassError("malformed", "the pass token's length is not a whole number of bytes")
    try:
        raw = base64.b32decode(data + "=" * (-len(data) % 8))
    except (binascii.Error, ValueError):
        raise PassError("malformed", "the pass token is not valid base32") from None
    if base64.b32encode(raw).decode("ascii").rstrip("=") != data:
        raise PassError("malformed", "the pass token is not canonical base32 (its last character is altered)")
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        raise PassError("malformed", f"a pass is {MIN_BYTES}-{MAX_BYTES} bytes, this one {len(raw)}")
    version, kid, not_before, not_after, serial, visit_len = _HEAD.unpack_from(raw)
    if version != VERSION:
        raise PassError("malformed", f"pass version {version} is not supported (this edge reads version {VERSION})")
    if len(raw) != _HEAD.size + visit_len + SIGNATURE_BYTES:
        raise PassError("malformed", "the pass's length does not match its visit id's")
    visit_raw = raw[_HEAD.size:_HEAD.size + visit_len]
    try:
        visit = visit_raw.decode("ascii")
    except UnicodeDecodeError:
        raise PassError("malformed", "the pass's visit id is not ASCII") from None
    claims = PassClaims(visit, not_before, not_after, serial, kid.hex())
    claims.check()
    signed = raw[:_HEAD.size + visit_len]
    return VisitorPass(claims, signed, raw[len(signed):], text)


def verify_pass(token: VisitorPass, keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Raise :class:`PassError` unless ``token`` is signed by the key its ``key_id`` names among ``keys``."""
    key = keys.get(token.claims.key_id)
    if key is None:
        raise PassError("unknown_key", f"the pass is signed by key {token.claims.key_id}, which this site does not "
                        "hold (an old or foreign pass, or a policy without pass keys)")
    try:
        key.verify(token.signature, DOMAIN + token.signed)
    except InvalidSignature:
        raise PassError("bad_signature", "the pass's signature does not match: forged or altered") from None


def read_pass(text: object, keys: Mapping[str, Ed25519PublicKey]) -> VisitorPass:
    """:func:`parse_pass` then :func:`verify_pass`: a pass whose form and signature are good."""
    token = parse_pass(text)
    verify_pass(token, keys)
    return token
