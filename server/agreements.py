"""Agreements a visitor accepts at check-in: versioned texts the site keeps, which ones a visit needs, and the
record of each acceptance (docs/desk.md "Agreements", docs/privacy.md).

- A text is kept per *kind* (a short slug: ``nda``, ``safety``) as numbered versions; a version is never edited
  (a change is a new version), so an acceptance names exactly the words the visitor saw.
- A visit needs the site's default kinds plus any the desk adds for that visit; only the current (latest)
  version of each counts, so a visitor who accepted version 1 of the NDA accepts version 2 when it changes.
- An acceptance records the kind, version, instant, how (``typed`` name or ``drawn`` signature, a PNG kept
  encrypted like a cardholder photo: server/store_agreements.py) and the operator (desk or kiosk account).

The privacy notice stays what it was (``templates/privacy-notice.txt``, its version recorded with every consent
in ``visitor_consents``): it is shown and acknowledged on every check-in whatever the site configures, and its
version is set by a deploy, not on the desk, so it is not one of these editable agreements.

Check-in (server/visitors.py) is refused until every required agreement is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from doorkeep.clock import Clock
from server.audit import Auditor, record_audit, subject_ref
from server.store import Store
from server.visitors import VisitConflict, VisitorError

KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
METHODS = ("typed", "drawn")
#: The largest drawn signature kept (a canvas PNG of strokes is a few KiB).
MAX_SIGNATURE_BYTES = 48 * 1024
MAX_TEXT = 20_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class AgreementChanged(VisitConflict):
    """The version shown is not the current one any more: show the new text (409)."""


@dataclass(frozen=True)
class AgreementVersion:
    kind: str
    version: int
    title: str
    text: str
    added_by: str | None
    added_at: float

    @property
    def paragraphs(self) -> list[str]:
        return [" ".join(p.split()) for p in self.text.split("\n\n") if p.strip()]


@dataclass(frozen=True)
class Acceptance:
    """What the visitor did for one agreement at check-in (input)."""

    kind: str
    version: int
    method: str  # typed | drawn
    typed_name: str = ""
    signature_png: bytes | None = None


@dataclass(frozen=True)
class Accepted:
    """A stored acceptance (without the signature's bytes)."""

    id: str
    kind: str
    version: int
    accepted_at: float
    method: str
    typed_name: str | None
    operator: str | None
    has_signature: bool


class Agreements:
    """Agreement texts, requirements and acceptances; every change audited with its actor."""

    def __init__(self, store: Store, clock: Clock, key: bytes, site_id: str, *, audit: Auditor | None = None) -> None:
        """``key``: the directory's subject key (audit rows name a visit by its keyed reference, never by name)."""
        self.store = store
        self.clock = clock
        self.key = key
        self.site_id = site_id
        self.audit_log = audit

    def _audit(self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
        record_audit(self.audit_log, actor, action, target, details)

    # ------------------------------------------------------------ texts

    def versions(self, kind: str | None = None) -> list[AgreementVersion]:
        return [AgreementVersion(r["kind"], r["version"], r["title"], r["text"], r["added_by"], r["added_at"])
                for r in self.store.agreement_versions(kind)]

    def current(self) -> dict[str, AgreementVersion]:
        """The latest version of every kind, by kind."""
        latest: dict[str, AgreementVersion] = {}
        for v in self.versions():
            latest[v.kind] = v  # ordered by kind, version: the last one wins
        return latest

    def add_version(self, kind: str, title: str, text: str, actor: str) -> AgreementVersion:
        """A new version of ``kind`` (the first creates the agreement); earlier versions stay as they were."""
        kind = kind.strip().lower()
        if not KIND.match(kind):
            raise VisitorError("an agreement's kind is a short name of lower-case letters, digits, '-' or '_' "
                               "(e.g. nda, safety)")
        title = " ".join(title.split())
        text = text.replace("\r\n", "\n").strip()
        if not title or len(title) > 128:
            raise VisitorError("give the agreement a title of 1 to 128 characters")
        if not text or len(text) > MAX_TEXT:
            raise VisitorError(f"the agreement's text is empty or longer than {MAX_TEXT} characters")
        version = self.store.add_agreement_version(kind, title, text, actor, self.clock.wall())
        self._audit(actor, "agreement.version_add", f"agreement:{kind}", {"version": version})
        return self.versions(kind)[-1]

    # ------------------------------------------------------- requirements

    def site_required(self) -> list[str]:
        return self.store.agreement_required("site")

    def _known(self, kinds: Sequence[str]) -> list[str]:
        known = self.current()
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise VisitorError(f"no agreement {', '.join(unknown)}: the site has {sorted(known) or 'none yet'}")
        return list(dict.fromkeys(kinds))

    def set_site_required(self, kinds: Sequence[str], actor: str) -> list[str]:
        kinds = self._known(kinds)
        self.store.set_agreement_required("site", kinds)
        self._audit(actor, "agreement.site_required", "agreements", {"kinds": kinds})
        return kinds

    def visit_extra(self, visit: str) -> list[str]:
        return self.store.agreement_required(visit)

    def set_visit_required(self, visit: str, kinds: Sequence[str], actor: str) -> list[str]:
        """The agreements this visit needs beyond the site's default (replaces the visit's earlier choice)."""
        kinds = self._known(kinds)
        self.store.set_agreement_required(visit, kinds)
        self._audit(actor, "visitor.agreements_required", subject_ref(self.key, visit), {"kinds": kinds})
        return kinds

    def required(self, visit: str) -> list[AgreementVersion]:
        """The current version of every agreement the visit needs (site default, then the visit's own)."""
        current = self.current()
        kinds = dict.fromkeys([*self.site_required(), *self.visit_extra(visit)])
        return [current[k] for k in kinds if k in current]

    # -------------------------------------------------------- acceptances

    def accepted(self, visit: str) -> list[Accepted]:
        return [Accepted(r["id"], r["kind"], r["version"], r["accepted_at"], r["method"], r["typed_name"],
                         r["operator"], bool(r["has_signature"])) for r in self.store.acceptances(visit)]

    def missing(self, visit: str) -> list[AgreementVersion]:
        """Required agreements whose current version the visitor has not accepted."""
        done = {(a.kind, a.version) for a in self.accepted(visit)}
        return [v for v in self.required(visit) if (v.kind, v.version) not in done]

    def check(self, visit: str, given: Acceptance) -> AgreementVersion:
        """The version ``given`` accepts, checked (nothing stored); raises with what to change."""
        current = self.current().get(given.kind)
        if current is None:
            raise VisitorError(f"no agreement {given.kind!r} on this site")
        if given.version != current.version:
            raise AgreementChanged(f"{current.title} is now version {current.version} (the visitor was shown "
                                   f"{given.version}): show the current text and ask again")
        if given.method not in METHODS:
            raise VisitorError(f"an agreement is accepted by a typed name or a drawn signature, not {given.method!r}")
        if given.method == "typed":
            name = " ".join(given.typed_name.split())
            if not name or len(name) > 128:
                raise VisitorError(f"type the visitor's full name to accept {current.title}")
        else:
            png = given.signature_png or b""
            if not png.startswith(PNG_MAGIC) or len(png) > MAX_SIGNATURE_BYTES:
                raise VisitorError(f"the signature for {current.title} is not a PNG of at most "
                                   f"{MAX_SIGNATURE_BYTES // 1024} KiB: draw it again")
        return current

    def accept(self, visit: str, given: Acceptance, operator: str) -> Accepted:
        """Record one acceptance (the signature encrypted), audited without the name or signature."""
        version = self.check(visit, given)
        typed = " ".join(given.typed_name.split()) or None
        acc_id = self.store.add_acceptance(visit, version.kind, version.version, method=given.method,
                                           typed_name=typed, operator=operator, at=self.clock.wall(),
                                           site=self.site_id,
                                           signature_png=given.signature_png if given.method == "drawn" else None)
        self._audit(operator, "visitor.agreement_accepted", subject_ref(self.key, visit),
                    {"kind": version.kind, "version": version.version, "method": given.method})
        return next(a for a in self.accepted(visit) if a.id == acc_id)

    def signature(self, acceptance_id: str) -> bytes | None:
        return self.store.acceptance_signature(acceptance_id)
