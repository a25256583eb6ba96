"""Data-subject rights: export everything held about a person, or erase it.

``doorkeep subject export PERSON`` writes one zip (manifest, profile, masked
credentials, events, snapshots, their cardholder photo, visits, consents,
presence, the audit records about them); ``doorkeep subject erase PERSON``
deletes their snapshots, photo (with its key), visits, consent rows, presence
and card states and pseudonymises their events.

Consents: the ``visitor_consents`` row names the visitor (by id) and goes at
erasure. What the law still needs afterwards (that consent was given, to which
notice version, photo consent yes/no, when, taken by which operator) is already
in the hash-chained audit log: the desk records ``visitor.consent`` with those
facts under the pseudonym at every check-in (server/visitors.py), and the
log is append-only. The export lists the consents without the operator's name
(another person's data). The pseudonym is
:func:`server.audit.subject_ref` (an HMAC of the id under the site's credential
key), so erasing twice gives the same result, and the audit log, which only ever
names people by that pseudonym, needs no change. Choices in docs/security.md.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doorkeep.clock import iso_ms
from doorkeep.config import SiteBundle
from server.audit import AuditLog, subject_ref
from server.errors import ServerError
from server.people import person_from_row
from server.store import Store

EXPORT_SCHEMA = "doorkeep.subject_export/1"
ERASED_NAME = "[erased]"
# Event columns an export leaves out: the keyed card hash is a secret of the site, not the person's data.
_EVENT_HIDDEN = ("credential_hash",)


class SubjectError(ServerError, LookupError):
    """The person is unknown here, or the export cannot be written."""


@dataclass
class Subject:
    """Where a person shows up: the store (people, cards, visitor records, events) and the site's people.toml."""

    id: str
    ref: str
    name: str | None
    configured: bool                     # still listed in the site directory's people.toml: remove them there
    card_hashes: list[str] = field(default_factory=list)


def find(bundle: SiteBundle, store: Store, key: bytes, person: str) -> Subject:
    """The person as the store and the site directory's people.toml know them (possibly not at all: then
    ``name`` is None). The store holds the site's people (server/people.py); the file may still name them."""
    hashes, name = store.subject_cards_and_name(person)
    p = bundle.people.get(person)
    hashes += [h for h in (c.hashed(key) for c in bundle.cards if c.person == person) if h not in hashes]
    if name is None and p is not None:
        name = p.name
    return Subject(person, subject_ref(key, person), name, p is not None, hashes)


# --------------------------------------------------------------- export


def export(bundle: SiteBundle, store: Store, key: bytes, person: str, out: Path, audit: AuditLog | None, *,
           now: float, actor: str = "system") -> dict[str, int]:
    """Write everything held about ``person`` to the zip ``out`` (mode 0600); returns the counts."""
    s = find(bundle, store, key, person)
    events = store.subject_events(s.id, s.card_hashes)
    visits = store.visitor_rows(person)
    presence = store.presence_rows(person)
    consents = store.visitor_consents(person)
    mails = store.subject_mail(person)
    accepted = store.acceptances(person)  # agreements accepted at check-in (server/store_agreements.py)
    texts = {(v["kind"], v["version"]): v for v in store.agreement_versions()}
    hold = store.visit_hold(person)
    if s.name is None and not events and not presence and not consents:
        raise SubjectError(f"nothing is held about {person!r} on site {bundle.site.id!r} (check the id: "
                           f"people.toml ids or visitor ids)")
    states = {r["hash"]: r["state"] for r in store.card_states()}
    credentials = [{"format": c["format"], "last4": c["last4"], "state": states.get(c["hash"], "active"),
                    "source": "site"} for c in store.card_rows(person)]
    credentials += [{"format": v["card_format"], "last4": v["card_number_last4"],
                     "state": "active" if v["status"] == "checked_in" else "returned", "source": "visitor badge"}
                    for v in visits if v["card_format"]]
    profile: dict[str, Any] = {"id": person}
    email = store.person_email(person)  # a host's address for notices (server/store_mail.py)
    row = store.person_row(person)
    if row is not None:
        p = person_from_row(row)
        profile.update({"name": p.name, "kind": p.kind.value, "state": p.state.value, "clearance": p.clearance,
                        "access_levels": list(p.access_levels), "roles": sorted(p.roles),
                        "valid_from": p.valid_from, "valid_until": p.valid_until, "host": p.host,
                        "company": p.company, "allowed_areas": list(p.allowed_areas),
                        "escort_required": p.escort_required if p.kind.value == "visitor" else None,
                        "pin": "set" if p.pin_hash else None, "source": row["source"], "email": email})
    elif visits:
        v = visits[-1]
        profile.update({"name": v["name"], "kind": "visitor", "company": v["company"], "email": v["email"],
                        "host": v["host"], "source": "visitor register"})
    audit_rows = [] if audit is None else [
        {k: r[k] for k in ("seq", "ts", "actor", "action", "details")}
        for r in reversed(store.audit_records(target=s.ref))]
    missing: list[str] = []
    files: dict[str, bytes] = {
        "profile.json": _json(profile),
        "credentials.json": _json(credentials),
        "events.json": _json([{k: v for k, v in e.items() if k not in _EVENT_HIDDEN}
                              | {"detail": json.loads(e["detail"] or "{}")} for e in events]),
        "visits.json": _json([{k: v for k, v in r.items() if k != "card_hash"} for r in visits]),
        "presence.json": _json(presence),
        "consents.json": _json([{"notice_version": c["notice_version"], "photo_consent": bool(c["photo_consent"]),
                                 "consented_at": iso_ms(c["consented_at"])} for c in consents]),
        "audit.json": _json(audit_rows),
        # invitations and host notices about their visit or sent to them (server/store_mail.py): who, what,
        # when and how delivery went; a sent message's body is not kept
        "mail.json": _json([{k: (iso_ms(v) if k.endswith("_at") and v else v) for k, v in m.items()}
                            for m in mails]),
        # each agreement accepted: the very text and version shown, when, how; a drawn signature is
        # signatures/ID.png (not the operator in front of them, who is another person, as for consents)
        "agreements.json": _json([{"id": a["id"], "kind": a["kind"], "version": a["version"],
                                   "title": texts.get((a["kind"], a["version"]), {}).get("title"),
                                   "text": texts.get((a["kind"], a["version"]), {}).get("text"),
                                   "accepted_at": iso_ms(a["accepted_at"]), "method": a["method"],
                                   "typed_name": a["typed_name"],
                                   "signature": f"signatures/{a['id']}.png" if a["has_signature"] else None}
                                  for a in accepted]),
        "watchlist_hold.json": _json(None if hold is None else {
            "state": hold["state"], "entries": hold["entries"], "stage": hold["stage"],
            "held_at": iso_ms(hold["held_at"]), "resolved_by": hold["resolved_by"],
            "resolved_at": iso_ms(hold["resolved_at"]) if hold["resolved_at"] else None, "reason": hold["reason"]}),
    }
    for a in accepted:
        if a["has_signature"]:
            try:
                png = store.acceptance_signature(a["id"])
            except (ServerError, ValueError):  # a destroyed key: say so, go on
                missing.append(f"signature {a['id']}")
                continue
            if png is not None:
                files[f"signatures/{a['id']}.png"] = png
    for e in events:
        sid = e["snapshot"] or e["id"]
        try:
            jpeg = store.snapshot_bytes(sid)
        except (ServerError, OSError, ValueError):  # a damaged file or a destroyed key: say so, go on
            missing.append(sid)
            continue
        if jpeg is not None:
            files[f"snapshots/{e['id']}.jpg"] = jpeg
    try:  # their cardholder photo (server/photos.py), decrypted for the export
        photo = store.person_photo(person)
    except (ServerError, ValueError):  # a destroyed key: say so, go on
        photo, missing = None, [*missing, "photo"]
    if photo is not None:
        files["photo.jpg"] = photo
    counts = {"events": len(events), "snapshots": sum(1 for n in files if n.startswith("snapshots/")),
              "credentials": len(credentials), "visits": len(visits), "consents": len(consents),
              "presence": len(presence), "photo": int("photo.jpg" in files), "mails": len(mails),
              "agreements": len(accepted),
              "audit_records": len(audit_rows)}
    manifest = {"schema": EXPORT_SCHEMA, "site": bundle.site.id, "site_name": bundle.site.name, "person": person,
                "generated_at": iso_ms(now), "counts": counts, "files": sorted(files),
                "unreadable_snapshots": missing,
                "notes": ["card numbers are shown by their last four digits only",
                          "audit.json lists the audit records about this person; they name people by pseudonym"]}
    _write_zip(out, {"manifest.json": _json(manifest), **files})
    if audit is not None:
        audit.record(actor, "subject.export", s.ref, counts)
    return counts


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _write_zip(out: Path, files: dict[str, bytes]) -> None:
    """Personal data: created 0600, written beside the target and renamed, never over an existing file."""
    if out.exists():
        raise SubjectError(f"{out} already exists (fix: choose another --out, or remove the old export)")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in files.items():
                    z.writestr(name, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SubjectError(f"cannot write {out}: {exc} (fix: check the directory exists and is writable)") from exc


# ---------------------------------------------------------------- erase


def _scrub(value: Any, person: str, ref: str, name: str | None) -> Any:
    """``value`` with the person's id replaced by the pseudonym and their name blanked, at any depth."""
    if isinstance(value, str):
        return ref if value == person else ERASED_NAME if name and value == name else value
    if isinstance(value, list):
        return [_scrub(v, person, ref, name) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, person, ref, name): _scrub(v, person, ref, name) for k, v in value.items()}
    return value


def erase(bundle: SiteBundle, store: Store, key: bytes, person: str, audit: AuditLog | None, *,
          now: float, actor: str = "system") -> dict[str, Any]:
    """Remove or pseudonymise everything held about ``person``; idempotent. Returns the counts and pseudonym."""
    s = find(bundle, store, key, person)
    counts = dict.fromkeys(("events", "snapshots", "mentions", "visits", "consents", "presence", "card_states",
                            "alarms", "hosted_visits", "people", "cards", "photos", "agreements"), 0)
    # Deleted and overwritten content is zeroed on disk, not left in free pages for a forensic read.
    store.enable_secure_delete()
    for e in store.subject_events(s.id, s.card_hashes):
        if store.delete_snapshot(e["snapshot"] or e["id"]):
            counts["snapshots"] += 1
    # One transaction in the store: their events pseudonymised, mentions of them scrubbed, their visits,
    # consents (the proof of consent stays in the audit log under the pseudonym: module docstring),
    # presence, desk rows, card states and their cardholder photo (with its key) removed, the pseudonym
    # remembered as erased.
    counts.update(store.erase_subject_rows(s.id, s.ref, s.card_hashes,
                                           lambda detail: _scrub(detail, person, s.ref, s.name), now))
    # Old page images live on in the write-ahead log until a checkpoint copies them back and truncates
    # it; a reader (the running server) can hold that off, so this is best effort and says so.
    truncated = store.checkpoint_wal()
    if audit is not None:
        audit.record(actor, "subject.erase", s.ref, counts)
    return {"ref": s.ref, "configured": s.configured, "counts": counts, "wal_truncated": truncated}


def erased_refs(store: Store) -> set[str]:
    """Pseudonyms of the people erased from this store (an import of people.toml skips them: server/people.py)."""
    return store.erased_refs()
