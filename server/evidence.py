"""Evidence bundles of an incident: a zip anyone can check offline (docs/privacy.md "Evidence bundles").

The bundle holds ``incident.json`` (the incident, its timeline and attachments), ``events.json`` (every event it
holds, with door and person names), ``alarms.json``, ``audit.json`` (the audit records about the incident and its
alarms, each with its chain hash), ``snapshots/EVENT.jpg`` (each snapshot decrypted for the bundle: the reader
has no site key), a ``README.txt``, and the signed ``manifest.json`` / ``manifest.sig`` (doorkeep/evidence.py).
A visitor who declined photos at check-in has no snapshot in a bundle, as on the desk.

Built in memory (an incident resolves at most ``server.incidents.MAX_EVENTS`` events). ``doorkeep evidence
export`` writes one from the command line; the desk serves one at ``/incidents/ID/evidence.zip``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import iso_ms
from doorkeep.errors import DoorkeepError
from doorkeep.evidence import MANIFEST, SIGNATURE, fingerprint, manifest_bytes, sha256_hex, sign
from doorkeep.model import Site
from server.errors import ServerError

if TYPE_CHECKING:
    from server.incidents import IncidentView

README = """Evidence bundle of incident {id} ({title}), site {site}, exported {at} by {actor}.

Every file here is listed in manifest.json with its SHA-256; manifest.sig is the Ed25519
signature over manifest.json by the site's signing key ({fingerprint}).

Check it, on any machine with doorkeep installed (no site key or server needed):

    doorkeep evidence verify THIS.zip --key policy-signing.pub

(the site's public key, SITE/keys/policy-signing.pub). Without --key the key the bundle
carries is used and its fingerprint printed: compare it with the site's.

events.json     the events the incident holds (times UTC, as the devices stamped them)
alarms.json     the alarms attached to the incident
incident.json   the incident: title, severity, status, who worked it, timeline, attachments
audit.json      the audit records about the incident and its alarms (seq and chain hash of each)
snapshots/      the camera snapshots of those events, decrypted (JPEG)
"""


@dataclass(frozen=True)
class Bundle:
    data: bytes
    manifest_sha256: str
    files: int
    snapshots: int


def _iso(ts: float | None) -> str | None:
    return iso_ms(ts) if ts is not None else None


def build_bundle(view: IncidentView, *, site: Site, snapshot: Callable[[str], bytes | None],
                 photo_declined: Callable[[str | None], bool], audit_rows: list[dict[str, Any]],
                 key: Ed25519PrivateKey, actor: str, at: float) -> Bundle:
    """The zip of one incident's evidence, signed with ``key``."""
    inc = view.incident
    files: dict[str, bytes] = {}
    snaps: dict[str, bytes] = {}
    events = []
    for e in view.events:
        row = {k: v for k, v in e.items() if k not in ("snapshot_path", "credential_hash", "rowid", "cursor")}
        try:
            row["detail"] = json.loads(e.get("detail") or "{}")
        except ValueError:
            pass
        door = site.doors.get(e.get("door") or "")
        person = site.people.get(e.get("person") or "")
        row["door_name"] = door.name if door else None
        row["person_name"] = person.name if person else None
        if e.get("snapshot_path") and e.get("snapshot"):
            if photo_declined(e.get("person")):
                row["snapshot_file"], row["snapshot_status"] = None, "withheld: the visitor declined photos"
            else:
                try:
                    jpeg = snapshot(str(e["snapshot"]))
                except (DoorkeepError, ServerError, OSError):  # its key gone or its file lost: say so, go on
                    row["snapshot_file"], row["snapshot_status"] = None, "unreadable (key or file missing)"
                    events.append(row)
                    continue
                if jpeg is None:
                    row["snapshot_file"], row["snapshot_status"] = None, "removed"
                else:
                    name = f"snapshots/{_safe(str(e['id']))}.jpg"
                    snaps[name] = jpeg
                    row["snapshot_file"], row["snapshot_status"] = name, "included"
        else:
            row["snapshot_file"] = None
            row["snapshot_status"] = "none stored" if e.get("snapshot") else "none taken"
        events.append(row)
    incident = {**asdict(inc), "created_at_utc": _iso(inc.created_at), "closed_at_utc": _iso(inc.closed_at),
                "timeline": [{**t, "at_utc": _iso(t["at"])} for t in view.timeline],
                "attachments": view.items, "site": site.id, "site_timezone": site.timezone}
    meta = {"site": site.id, "incident": {"id": inc.id, "title": inc.title, "status": inc.status},
            "created_at": iso_ms(at), "created_by": actor,
            "counts": {"events": len(events), "alarms": len(view.alarms), "snapshots": len(snaps),
                       "audit_records": len(audit_rows)}}
    files["README.txt"] = README.format(id=inc.id, title=inc.title, site=site.id, at=iso_ms(at), actor=actor,
                                        fingerprint=fingerprint(key.public_key())).encode()
    files["incident.json"] = _json(incident)
    files["events.json"] = _json(events)
    files["alarms.json"] = _json(view.alarms)
    files["audit.json"] = _json(audit_rows)
    files.update(sorted(snaps.items()))
    manifest = manifest_bytes(files, meta, key.public_key())
    signature = sign(manifest, key)
    stamp = datetime.fromtimestamp(at, timezone.utc).timetuple()[:6]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in [*files.items(), (MANIFEST, manifest), (SIGNATURE, signature)]:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".jpg") else zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            z.writestr(info, data)
    return Bundle(buf.getvalue(), sha256_hex(manifest), len(files), len(snaps))


def _safe(name: str) -> str:
    """An event id as a file name (ids are ``[A-Za-z0-9_.:-]``; anything else becomes ``_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:150] or "_"


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


# ------------------------------------------------------------------ CLI


def evidence_export(args: argparse.Namespace) -> int:
    """``doorkeep evidence export INCIDENT --site DIR [--data DIR] --out FILE.zip``: the signed bundle, written
    0600; audited as the desk's export is (actor ``cli:USER``)."""
    from doorkeep.clock import SystemClock
    from doorkeep.policy import PolicyError, load_private_key
    from server.admin_cli import UsageError, _key, _open, _run, cli_actor
    from server.audit import AuditLog, subject_ref
    from server.incidents import IncidentError, IncidentNotFound, Incidents

    def body() -> int:
        if not 1 <= args.incident < 2**53:
            raise UsageError(f"doorkeep evidence export: {args.incident} is not an incident number")
        with _open(args, "evidence export", snapshots=True) as (bundle, store):
            try:
                signing = load_private_key(bundle.dir / "keys" / "policy-signing.key")
            except (PolicyError, DoorkeepError) as exc:
                raise UsageError(f"doorkeep evidence export: {exc}") from exc
            key = _key(bundle, "evidence export")
            audit = AuditLog(store)
            site = dataclasses.replace(bundle.site, people={**bundle.people, **bundle.site.people})
            service = Incidents(store, SystemClock(), audit, site=lambda: site, signing_key=signing,
                                subject_ref=lambda p: subject_ref(key, p))
            try:
                name, data = service.export(args.incident, cli_actor())
            except IncidentNotFound as exc:
                print(f"doorkeep evidence export: {exc} (the desk's Incidents page lists them)", file=sys.stderr)
                return 1
            except IncidentError as exc:
                print(f"doorkeep evidence export: {exc}", file=sys.stderr)
                return 1
        out: Path = args.out or Path(name)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        print(f"wrote {out} (mode 0600); check it with: doorkeep evidence verify {out} "
              f"--key {bundle.dir / 'keys' / 'policy-signing.pub'}")
        return 0
    return _run("evidence export", body)
