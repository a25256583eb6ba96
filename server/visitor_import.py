"""The CSV of expected visitors for an event: every row checked, then every visit registered and invited.

``POST /api/v1/visitors/import`` (server/web/visitor_import.py, docs/desk.md "Expected visitors from a CSV")
calls :func:`import_expected`. All or nothing, like the people import: each row is checked by the visitor
service's own rules (:meth:`Visitors.check`, the messages a receptionist gets on the form), and one bad row
registers nobody, so a corrected file can simply be sent again without doubling anyone. A row with an e-mail
address gets its invitation queued (server/invitations.py) as a visit registered at the desk does; the
import never waits on the relay.

Columns (a header row names them, any order; unknown columns are refused so a typo is not silently lost):
``name``, ``host`` (a person id, or the exact name of one active person), ``valid_from``, ``valid_until``
(ISO 8601, ``2026-12-07T09:00`` or ``2026-12-07 09:00``; without an offset in the site's time zone),
``areas`` (area ids separated by ``;`` or spaces) are required; ``email``, ``company`` and ``escort``
(``yes``/``no``, empty for the default: required when an allowed area is restricted) are optional.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime

from server.directory import DirectoryError
from server.visitors import Registration, VisitorError, VisitRecord, Visitors, WatchHit

COLUMNS = ("name", "email", "company", "host", "valid_from", "valid_until", "areas", "escort")
REQUIRED = ("name", "host", "valid_from", "valid_until", "areas")
#: Rows per import: an event's guest list, not a directory sync (a request stays well under a second).
MAX_ROWS = 500
_YES = {"yes": True, "y": True, "true": True, "1": True, "no": False, "n": False, "false": False, "0": False}


@dataclass
class ImportResult:
    """What an import did (or, with errors, why it registered nobody)."""

    registered: list[VisitRecord] = field(default_factory=list)
    invitations: int = 0
    warnings: dict[str, list[WatchHit]] = field(default_factory=dict)  # visitor id -> watchlist matches
    errors: list[str] = field(default_factory=list)  # "line N: what to fix"


def _when(value: str, column: str) -> datetime:
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise VisitorError(f"{column} {value!r} is not a date and time (write it like 2026-12-07T09:00)") from None


def parse_expected(text: str, visitors: Visitors) -> tuple[list[Registration], list[str]]:
    """The rows of the CSV as registrations, each checked; and one error per bad line (``line N: ...``)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        return _parse(reader, visitors)
    except csv.Error as exc:  # a stray quote or line break the csv module cannot read: say where, never a 500
        return [], [f"line {reader.line_num}: not readable as CSV ({exc}); quote values that hold commas, quotes "
                    "or line breaks"]


def _parse(reader: csv.DictReader[str], visitors: Visitors) -> tuple[list[Registration], list[str]]:
    if not reader.fieldnames or not any(f.strip() for f in reader.fieldnames):
        return [], ["the file is empty: the first line names the columns (name,host,valid_from,valid_until,areas,…)"]
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if unknown or missing:
        problems = ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []) + \
            ([f"missing column(s) {', '.join(missing)}"] if missing else [])
        return [], [f"line 1: {'; '.join(problems)} (the columns are {', '.join(COLUMNS)})"]
    reader.fieldnames = header
    regs: list[Registration] = []
    errors: list[str] = []
    for n, row in enumerate(reader, start=2):
        if len(regs) + len(errors) >= MAX_ROWS:
            errors.append(f"more than {MAX_ROWS} rows: split the file")
            break
        if None in row:
            errors.append(f"line {n}: more fields than columns (quote a value that holds a comma)")
            continue
        values = {k: (v or "").strip() for k, v in row.items()}
        if not any(values.values()):
            continue  # a blank line
        try:
            escort_text = values.get("escort", "").lower()
            if escort_text and escort_text not in _YES:
                raise VisitorError(f"escort {values['escort']!r} is not yes or no (leave it empty for the default)")
            reg = Registration(
                name=values["name"], host=visitors.host_id(values["host"]),
                valid_from=_when(values["valid_from"], "valid_from"),
                valid_until=_when(values["valid_until"], "valid_until"),
                allowed_areas=tuple(values["areas"].replace(";", " ").split()), company=values.get("company", ""),
                email=values.get("email", ""), escort_required=_YES[escort_text] if escort_text else None)
            visitors.check(reg)
        except DirectoryError as exc:
            errors.append(f"line {n}: {exc}")
            continue
        regs.append(reg)
    if not regs and not errors:
        errors.append("the file has a header but no visitors")
    return regs, errors


def import_expected(visitors: Visitors, text: str, actor: str, *, dry_run: bool = False) -> ImportResult:
    """Check every row, then (unless ``dry_run`` or a row is bad) register each visit and queue its invitation."""
    regs, errors = parse_expected(text, visitors)
    result = ImportResult(errors=errors)
    if errors or dry_run:
        return result
    for reg in regs:
        record, hits = visitors.register(reg, actor)
        result.registered.append(record)
        if hits:
            result.warnings[record.id] = hits
        if record.email and visitors.mail_delivery(record.id, "invitation") is not None:
            result.invitations += 1
    return result
