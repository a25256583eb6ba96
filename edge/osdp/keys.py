"""Secure Channel key files: one SCBK per reader, 32 hex digits, readable by its owner only (0600)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from edge.errors import EdgeError

log = logging.getLogger("doorkeep.edge.osdp")


class KeyFileError(EdgeError, ValueError):
    """An SCBK file that exists but cannot be used; the message names the file and the fix."""


def load_scbk(path: Path) -> bytes | None:
    """The reader's key, or None when the file does not exist yet (the reader then needs `install-key`)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the OSDP key file ({exc.__class__.__name__}); "
                           "fix: run as its owner, or rewrite it with doorkeep osdp install-key") from None
    if mode & 0o077:
        raise KeyFileError(f"{path}: OSDP key file is readable by others (mode {mode:o}); fix: chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: OSDP key file is not hexadecimal; fix: rewrite it with "
                           "doorkeep osdp install-key") from None
    if len(key) != 16:
        raise KeyFileError(f"{path}: OSDP key has {len(key)} bytes, expected 16; fix: rewrite it with "
                           "doorkeep osdp install-key")
    return key


def write_scbk(path: Path, key: bytes) -> Path:
    """Write ``key`` to a new 0600 file next to ``path`` and return it; the caller renames it into place
    only once the reader accepted the key, so a failed KEYSET never leaves a key the reader does not know."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over a key kept from a failed run
    try:
        os.write(fd, (key.hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp
