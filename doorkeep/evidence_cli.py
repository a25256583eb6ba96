"""``doorkeep evidence verify BUNDLE [--key PUBFILE]``: check a signed evidence bundle offline.

Needs only the core (stdlib and ``cryptography``), so it runs on any machine a bundle is handed to. Reads the
zip, hashes each file as it streams (a bundle of many snapshots is never held in memory at once) and hands
the hashes to the pure check (doorkeep/evidence.py). Exit 0: intact; 1: changed, missing, extra file or bad
signature (the first one named); 2: the file or key cannot be read.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

from doorkeep.evidence import MANIFEST, SIGNATURE, EvidenceError, public_key_from_bytes, verify

#: The most a manifest or signature may weigh (a bundle's own files are hashed as they stream, any size).
SMALL_MAX = 16 * 1024 * 1024


def read_bundle(path: Path) -> tuple[bytes | None, bytes | None, dict[str, str]]:
    """The manifest, the signature and the hex SHA-256 of every other member; raises EvidenceError for a file
    that is not a zip, or a zip that names one file twice (which of the two would be the evidence?)."""
    manifest = signature = None
    digests: dict[str, str] = {}
    try:
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
            if len(names) != len(set(names)):
                dup = next(n for n in names if names.count(n) > 1)
                raise EvidenceError(f"{path}: the zip holds {dup!r} twice: not a bundle this tool wrote")
            for info in z.infolist():
                if info.is_dir():
                    continue
                with z.open(info) as f:
                    if info.filename in (MANIFEST, SIGNATURE):
                        data = f.read(SMALL_MAX + 1)
                        if len(data) > SMALL_MAX:
                            raise EvidenceError(f"{path}: {info.filename} is larger than {SMALL_MAX} bytes")
                        if info.filename == MANIFEST:
                            manifest = data
                        else:
                            signature = data
                        continue
                    h = hashlib.sha256()
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                    digests[info.filename] = h.hexdigest()
    except zipfile.BadZipFile as exc:
        raise EvidenceError(f"{path}: not a zip file ({exc})") from None
    except zipfile.LargeZipFile as exc:  # pragma: no cover - zip64 is read by default
        raise EvidenceError(f"{path}: {exc}") from None
    return manifest, signature, digests


def verify_cmd(args: argparse.Namespace) -> int:
    path: Path = args.bundle
    pinned = None
    try:
        if args.key is not None:
            pinned = public_key_from_bytes(Path(args.key).read_bytes())
        manifest, signature, digests = read_bundle(path)
    except OSError as exc:
        print(f"doorkeep evidence verify: cannot read {exc.filename or path}: {exc.strerror}", file=sys.stderr)
        return 2
    except EvidenceError as exc:
        print(f"doorkeep evidence verify: {exc}", file=sys.stderr)
        return 2
    result = verify(manifest, signature, digests, pinned)
    meta = result.meta
    incident = meta.get("incident") if isinstance(meta.get("incident"), dict) else {}
    print(f"bundle: {path}")
    if meta:
        print(f"  site {meta.get('site')}, incident {incident.get('id')} ({incident.get('title')!s}), "
              f"exported {meta.get('created_at')} by {meta.get('created_by')}")
    if result.fingerprint:
        print(f"  signing key: {result.fingerprint}" + ("" if result.pinned else
              "  (not pinned: check it against the site's with --key SITE/keys/policy-signing.pub)"))
    for line in result.checked:
        print("  " + line)
    if not result.ok:
        print(f"FAILED: {result.problem}", file=sys.stderr)
        return 1
    print("ok: the bundle is intact" + (" and signed by the pinned key" if result.pinned else
                                        " (signed by the key it carries; not pinned)"))
    return 0
