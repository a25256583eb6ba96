"""Card numbers and PINs as keyed hashes.

A card number is turned into ``HMAC-SHA256(credential key, "format:NUMBER")``
as soon as it is read, so neither the server's store nor an edge cache ever
holds a number that a stolen SD card would give away; the last four
characters are kept for the desk to recognise a card.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from doorkeep.card_formats import WIEGAND_CREDENTIALS
from doorkeep.errors import ConfigError

KEY_ENV = "DOORKEEP_CREDENTIAL_KEY"
KEY_BYTES = 32
_FAMILIES = frozenset(("em4100", *WIEGAND_CREDENTIALS, "osdp_raw", "qr-pass"))


def normalise(fmt: str, number: str) -> str:
    """One spelling per card, so the same card hashes the same at every reader."""
    number = number.strip()
    if fmt == "em4100":
        return number.upper()
    return number


def card_hash(key: bytes, fmt: str, number: str) -> str:
    """``HMAC-SHA256(key, FAMILY + ":" + number)`` in hex: the only form a card number is kept in.

    The family is the card's format, so a 34-bit Wiegand card never passes for the 26-bit card with the
    same facility code and number; ``ascii`` (a reader that prints what the card holds) keeps its own, and a
    visitor pass (``qr-pass``: doorkeep/visitor_pass.py, its visit and serial as the number) its own too.
    A Wiegand read's family is the credential format its layout names (doorkeep/card_formats.py): the default
    layouts keep ``wiegand26``/``wiegand34``/``wiegand37`` (so registered cards keep their hashes), ``n10002``
    reads as ``wiegand34`` too, and ``h10302`` and ``wiegand_raw`` have their own.
    """
    family = fmt if fmt in _FAMILIES else "ascii"
    msg = f"{family}:{normalise(fmt, number)}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def pin_hash(key: bytes, pin: str) -> str:
    """A PIN as the site stores and compares it: ``HMAC-SHA256(key, "pin:" + PIN)`` in hex.

    The ``pin:`` prefix keeps a PIN from ever hashing like a card number of
    the same digits. Only this hash is kept in ``Person.pin_hash`` and sent
    in an access request; the clear PIN lives only in the people file.
    """
    return hmac.new(key, f"pin:{pin}".encode(), hashlib.sha256).hexdigest()


def last4(number: str) -> str:
    return number.strip()[-4:].upper()


def generate_key_file(path: Path) -> None:
    """Write a new random key readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")


def load_key(path: Path | None, *, source: str) -> bytes:
    """The credential key from ``$DOORKEEP_CREDENTIAL_KEY`` (hex) or a 0600 key file.

    The variable, when set and not empty, wins over the file (a container or a
    secrets manager hands keys over that way); a malformed value is refused,
    never silently replaced by the file, and never echoed in the error.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        fix = f"set ${KEY_ENV} to 64 hex digits (as written by `doorkeep key init`), or unset it to use the key file"
        try:
            key = bytes.fromhex(env.strip())
        except ValueError:
            raise ConfigError("environment", KEY_ENV, "is not hexadecimal", fix) from None
        if len(key) != KEY_BYTES:
            raise ConfigError("environment", KEY_ENV, f"has {len(key)} bytes, expected {KEY_BYTES}", fix)
        return key
    if path is None:
        raise ConfigError(source, "credential_key_file", "no credential key configured",
                          f"set credential_key_file or ${KEY_ENV}")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(source, "credential_key_file", f"key file {path} does not exist",
                          f"create it with `doorkeep key init {path}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "credential_key_file", f"key file cannot be read: {exc.__class__.__name__}",
                          "run as the key file's owner, and point credential_key_file at the key file "
                          f"written by `doorkeep key init {path}`") from None
    if mode & 0o077:
        raise ConfigError(str(path), "credential_key_file", f"key file is readable by others (mode {mode:o})",
                          f"chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(str(path), "credential_key_file", "key file is not hexadecimal",
                          f"recreate it with `doorkeep key init {path}`") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(str(path), "credential_key_file", f"key has {len(key)} bytes, expected {KEY_BYTES}",
                          f"recreate it with `doorkeep key init {path}`")
    return key
