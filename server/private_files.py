"""Private data files: the server's data directory is readable by its own account only.

The store holds visitors' names and e-mails, operators' password hashes, sessions and the audit head; the
snapshots directory holds camera images. Another local account must read none of it, whatever the umask
of the process that created the files (``doorkeep`` sets 0077 at start, doorkeep/cli.py; a test runner or
an embedding program may not). So the store creates every directory 0700 and every file 0600 itself, and
at start tightens a data directory left over from before (an older version, a restored backup, a copy
made with another umask), logging each path it changed: the operator learns the files were exposed.

Modes are only ever narrowed (bits removed), never widened: a file someone made read-only stays so.
SQLite creates ``-wal``, ``-shm`` and ``-journal`` files with the mode of the database file, so a
database created 0600 keeps its companions 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("doorkeep.server.files")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def narrow(path: Path, allowed: int) -> bool:
    """Remove the mode bits of ``path`` outside ``allowed``; True (and a warning) if it changed anything."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False  # a symlink's own mode means nothing; its target is not ours to change
    mode = stat.S_IMODE(st.st_mode)
    if not mode & ~allowed:
        return False
    try:
        os.chmod(path, mode & allowed)
    except PermissionError:
        # Another account's file in our data directory: not ours to change; say so, keep running.
        log.error("%s is mode %03o, open to other accounts, and this account cannot change it "
                  "(fix: chown it to the doorkeep account, then chmod %03o)", path, mode, mode & allowed)
        return False
    log.warning("%s was mode %03o, open to other accounts; now %03o", path, mode, mode & allowed)
    return True


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700; an existing one is narrowed to 0700."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    narrow(path, PRIVATE_DIR)
    return path


def tighten_tree(root: Path) -> int:
    """Narrow every directory under ``root`` to 0700 and every file to 0600; returns how many changed.

    Run once at start on the data directory, so files written before this version (or restored from a
    backup with their old modes) stop being readable by other accounts."""
    changed = int(narrow(root, PRIVATE_DIR))
    for current, dirs, files in os.walk(root):
        base = Path(current)
        for name in dirs:
            changed += narrow(base / name, PRIVATE_DIR)
        for name in files:
            changed += narrow(base / name, PRIVATE_FILE)
    if changed:
        log.warning("made %d path(s) under %s private to this account (directories 0700, files 0600)",
                    changed, root)
    return changed


def create_private_file(path: Path) -> None:
    """Make sure ``path`` exists as a 0600 file (created empty if missing), before SQLite opens it."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        try:
            os.fchmod(fd, PRIVATE_FILE)  # exact, whatever the umask
        finally:
            os.close(fd)
    narrow(path, PRIVATE_FILE)


def open_private(path: Path, mode: str = "wb") -> int:
    """A file descriptor for writing ``path`` as a new or truncated 0600 file (``"wb"``) or appending (``"ab"``)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return fd
