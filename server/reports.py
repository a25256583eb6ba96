"""The desk's reports (docs/desk.md "Reports"): the questions people ask after the fact, answered from the
stored events in the site's time zone.

- a person's movements over a period: every badge, its door, the areas it leads from and to, the decision;
- a door's or an area's activity: grants and refusals per day, or per hour for up to a week;
- refusals by reason and by door (a misconfigured level refuses one reason at one door all day; a probing
  attack shows as unknown cards at many doors);
- traffic by hour of day and day of week (a heatmap);
- an area's occupancy over one day.

Counting happens in the store (server/store_reports.py: grouped in SQL by UTC quarter hour, on the index the
filter needs); this module turns those groups into local days and hours. A quarter hour lies inside one local
hour in every zone (offsets are whole quarter hours), so bucketing is exact across midnight and across a
daylight-saving change: a spring-forward day has 23 hours, a fall-back day 25, and the repeated hour's
badges are counted in the hour they happened (``01:00 BST`` then ``01:00 GMT``).

Occupancy is presence replayed, the rule server/directory.py applies live (the muster list): a granted badge
puts its person in the door's ``to`` area, a visitor's check-out takes them off site. At a lift the badge moves
nobody: the floor chosen in the cab (``floor_chosen``) moves the people of the grant it names to that floor, or
a destination-dispatch grant moves them at once to the floor asked for (server/bus.py); a person whose last
badge before the day was at a lift is not counted at midnight (the floor they chose then is not looked up). The day starts from
each person's last granted badge before it (one index seek per person) and moves with every grant of the day.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from doorkeep import vocabulary
from doorkeep.clock import iso_ms, parse_iso_ms
from doorkeep.model import Door, DoorKind, Site
from server.errors import ServerError
from server.store import Store

#: The longest period a report covers (a quarter): enough for "last month", small enough to stay fast.
MAX_DAYS = 92
#: Activity per hour is for at most a week (168 bars); longer periods are per day.
HOUR_MAX_DAYS = 7
#: A person's badges read from the store per query (the page shows the first; the CSV streams them all).
PAGE = 500
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class ReportError(ServerError, ValueError):
    """A report's parameter the operator can fix (``param`` names it); the desk shows the message."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def site_zone(site: Site) -> ZoneInfo:
    """The site's zone; UTC when the name is unknown to this machine (the page says which zone it used)."""
    try:
        return ZoneInfo(site.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``zone``, in UTC (a day is 23, 24 or 25 hours long)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


def parse_day(param: str, text: str | None, default: date) -> date:
    """A ``YYYY-MM-DD`` field; ``default`` when empty; :class:`ReportError` naming the field otherwise."""
    if text is None or not text.strip():
        return default
    try:
        day = date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ReportError(param, f"{param} is not a date: write it as YYYY-MM-DD (2026-11-30)") from exc
    if not 1971 <= day.year <= 9998:  # a day's bounds and the day after it stay inside the calendar
        raise ReportError(param, f"{param}: name a day between 1971 and 9998")
    return day


@dataclass(frozen=True)
class Period:
    """Whole local days ``first`` to ``last`` (both included) and the UTC ``ts`` text range they cover."""

    first: date
    last: date
    zone: ZoneInfo
    since: str = field(init=False)
    until: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", iso_ms(midnight(self.first, self.zone).timestamp()))
        object.__setattr__(self, "until", iso_ms(midnight(self.last + timedelta(days=1), self.zone).timestamp()))

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]


def period(first: date, last: date, zone: ZoneInfo, max_days: int = MAX_DAYS) -> Period:
    """The period the operator asked for, checked: ``last`` not before ``first``, at most ``max_days`` long."""
    if last < first:
        raise ReportError("to", "to must not be before from")
    if (last - first).days + 1 > max_days:
        raise ReportError("to", f"a report covers at most {max_days} days: shorten the period")
    if first.year < 1971 or last.year > 9998:
        raise ReportError("from", "name days between 1971 and 9998")
    return Period(first, last, zone)


def _quarter(hour: str, quarter: int) -> datetime | None:
    """The UTC start of a stored group ``('YYYY-MM-DDTHH', 0-3)``; None for a ts the store holds malformed."""
    try:
        return datetime.fromisoformat(hour + ":00+00:00") + timedelta(minutes=15 * quarter)
    except (ValueError, TypeError):
        return None


def reason_text(code: str) -> str:
    """A reason in the live feed's plain words (doorkeep/vocabulary.py); an unknown code as it is."""
    return (vocabulary.reason_label(code) or code) if code else "no reason recorded"


def door_names(site: Site) -> dict[str, str]:
    return {d.id: d.name for d in site.doors.values()}


def area_name(site: Site, area: str) -> str:
    a = site.areas.get(area)
    return a.name if a else area


def area_doors(site: Site, area: str) -> list[str]:
    """The doors into or out of ``area`` (as the live feed's area filter): its activity. A lift serving ``area``
    as a floor is one of them: a badge in its cab is a badge at a way into each floor it serves."""
    return sorted(d.id for d in site.doors.values() if area in (d.from_area, *d.entered))


def lift_destination(site: Site, door: Door, detail: dict[str, Any]) -> str:
    """Where a badge at a lift was going, by name: the floor asked for before the badge (destination dispatch),
    else the floors the grant enabled, else (a refusal) the floors the lift serves."""
    asked = detail.get("floor")
    if isinstance(asked, str) and asked:
        return area_name(site, asked)
    enabled = detail.get("floors")
    floors = [a for a in enabled if isinstance(a, str)] if isinstance(enabled, list) and enabled \
        else [f.area for f in door.floors]
    return " or ".join(area_name(site, a) for a in floors)


def _detail(row: dict[str, Any] | None) -> dict[str, Any]:
    raw = row.get("detail") if row else None
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Badge:
    """One badge of a person's movements, in the site's time zone."""

    cursor: int
    id: str
    ts: str
    local: datetime | None  # None: a ts the store holds malformed (shown as stored)
    door: str
    door_name: str
    from_area: str
    to_area: str
    decision: str
    reason: str
    reason_label: str
    lift: bool = False  # a badge in a lift's cab: ``to_area`` says where it was going, there is no from

    @property
    def date(self) -> str:
        return self.local.strftime("%Y-%m-%d") if self.local else self.ts[:10]

    @property
    def time(self) -> str:
        return self.local.strftime("%H:%M:%S") if self.local else self.ts

    @property
    def zone(self) -> str:
        return (self.local.tzname() or "") if self.local else ""

    @property
    def hours(self) -> float:
        """Hours since the local midnight (the timeline's x)."""
        if self.local is None:
            return 0.0
        return self.local.hour + self.local.minute / 60 + self.local.second / 3600


@dataclass(frozen=True)
class Bucket:
    """A day or an hour of activity: its label and its grants and refusals."""

    key: str
    label: str
    granted: int = 0
    denied: int = 0

    @property
    def total(self) -> int:
        return self.granted + self.denied


@dataclass(frozen=True)
class Refusals:
    """Refusals of a period: per door and reason, and the totals by reason and by door, largest first."""

    rows: list[tuple[str, str, str, int]]  # door name, reason code, reason label, count
    by_reason: list[tuple[str, str, int]]  # code, label, count
    by_door: list[tuple[str, str, int]]    # door id, door name, count

    @property
    def total(self) -> int:
        return sum(n for _, _, n in self.by_reason)


@dataclass(frozen=True)
class Step:
    """One change of an area's occupancy: when (local), who, at which door, in or out, and the count after."""

    local: datetime
    person: str
    door_name: str
    entered: bool
    count: int


@dataclass(frozen=True)
class Occupancy:
    area: str
    area_name: str
    day: date
    start: datetime  # local midnight
    end: datetime    # the next local midnight
    at_start: int
    steps: list[Step]
    limit: int | None  # the area's max_occupancy, if set
    now: datetime | None = None  # the present, when the day is today (the line stops there)

    @property
    def peak(self) -> int:
        return max([self.at_start, *(s.count for s in self.steps)])

    @property
    def at_end(self) -> int:
        return self.steps[-1].count if self.steps else self.at_start


class Reports:
    """The reports over the store's events; the site (names, doors, areas, zone) is passed to each call,
    because it changes while the server runs (server/siteadmin.py)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------- a person's movements

    def _badge(self, row: dict[str, Any], site: Site, zone: ZoneInfo) -> Badge:
        ts = str(row["ts"])
        try:
            local: datetime | None = datetime.fromtimestamp(parse_iso_ms(ts), zone)
        except (ValueError, OverflowError, OSError):
            local = None
        door = site.doors.get(str(row["door"]))
        reason = str(row.get("reason") or "")
        if door is not None and door.kind is DoorKind.LIFT:  # no from/to: where the badge was going
            from_area, to_area = "", lift_destination(site, door, _detail(self.store.event(str(row["id"]))))
        else:
            from_area = area_name(site, door.from_area) if door else ""
            to_area = area_name(site, door.to_area) if door else ""
        return Badge(cursor=int(row["cursor"]), id=str(row["id"]), ts=ts, local=local, door=str(row["door"]),
                     door_name=door.name if door else str(row["door"]),
                     from_area=from_area, to_area=to_area,
                     decision=str(row.get("decision") or ""), reason=reason,
                     reason_label=reason_text(reason) if reason else "",
                     lift=door is not None and door.kind is DoorKind.LIFT)

    def movements(self, site: Site, person: str, span: Period, *, after: tuple[str, int] | None = None,
                  limit: int = PAGE) -> tuple[list[Badge], bool]:
        """The person's badges in the period, oldest first (``limit`` of them), and whether more follow."""
        rows = self.store.person_badges(person, span.since, span.until, after=after, limit=limit + 1)
        return [self._badge(r, site, span.zone) for r in rows[:limit]], len(rows) > limit

    def all_movements(self, site: Site, person: str, span: Period, page: int = PAGE) -> Iterator[list[Badge]]:
        """Every badge of the period, a store page at a time (a generator: the CSV export streams it)."""
        after: tuple[str, int] | None = None
        while True:
            rows, more = self.movements(site, person, span, after=after, limit=page)
            if rows:
                yield rows
            if not more or not rows:
                return
            after = (rows[-1].ts, rows[-1].cursor)

    # ------------------------------------------------------- counts

    def _local_counts(self, span: Period, doors: Sequence[str] | None) -> Iterator[tuple[datetime, str, int]]:
        """``(local start of the quarter hour, decision, count)`` of the period's badges."""
        for hour, quarter, decision, n in self.store.badge_counts(span.since, span.until, doors):
            start = _quarter(hour, quarter)
            if start is not None:
                yield start.astimezone(span.zone), decision, n

    def activity(self, site: Site, doors: Sequence[str] | None, span: Period, by: str = "day") -> list[Bucket]:
        """Grants and refusals per local day of the period, or per local hour (``by="hour"``), every day or hour
        listed even when nothing happened (a chart with gaps would hide a quiet day)."""
        if by not in ("day", "hour"):
            raise ReportError("by", "by is day or hour")
        if by == "hour" and len(span.days) > HOUR_MAX_DAYS:
            raise ReportError("by", f"activity per hour covers at most {HOUR_MAX_DAYS} days: choose per day")
        counts: dict[str, Counter[str]] = {}
        for local, decision, n in self._local_counts(span, doors):
            key = local.strftime("%Y-%m-%d") if by == "day" else _hour_key(local)
            counts.setdefault(key, Counter())[decision] += n
        if by == "day":
            keys = [(d.isoformat(), d.strftime("%a %d %b")) for d in span.days]
        else:
            keys = _hours(span)
        return [Bucket(key, label, counts.get(key, Counter())["granted"], counts.get(key, Counter())["denied"])
                for key, label in keys]

    def traffic(self, doors: Sequence[str] | None, span: Period, decision: str | None = None) -> list[list[int]]:
        """Badges per day of week (rows, Monday first) and local hour of day (columns, 0-23)."""
        if decision not in (None, "granted", "denied"):
            raise ReportError("decision", "decision is granted or denied")
        grid = [[0] * 24 for _ in WEEKDAYS]
        for local, dec, n in self._local_counts(span, doors):
            if decision is None or dec == decision:
                grid[local.weekday()][local.hour] += n
        return grid

    def refusals(self, site: Site, doors: Sequence[str] | None, span: Period) -> Refusals:
        names = door_names(site)
        rows = self.store.refusal_counts(span.since, span.until, doors)
        by_reason: Counter[str] = Counter()
        by_door: Counter[str] = Counter()
        for door, reason, n in rows:
            by_reason[reason] += n
            by_door[door] += n
        return Refusals(
            rows=sorted(((names.get(d, d), r, reason_text(r), n) for d, r, n in rows), key=lambda t: (-t[3], t[0], t[1])),
            by_reason=[(code, reason_text(code), n) for code, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))],
            by_door=[(d, names.get(d, d), n) for d, n in sorted(by_door.items(), key=lambda kv: (-kv[1], kv[0]))])

    # ------------------------------------------------------- occupancy

    def occupancy(self, site: Site, area: str, day: date, zone: ZoneInfo, now: float | None = None) -> Occupancy:
        """The area's occupancy over one local day: who was in it at midnight, then every change; ``now`` (epoch)
        ends today's line at the present instead of the day's end."""
        if area not in site.areas:
            raise ReportError("area", f"no area {area!r}: choose one of the list")
        start, end = midnight(day, zone), midnight(day + timedelta(days=1), zone)
        since, until = iso_ms(start.timestamp()), iso_ms(end.timestamp())
        checkouts = self.store.visitor_checkouts(end.timestamp())
        left_before = {vid for at, vid in checkouts if at < start.timestamp()}
        people = sorted(site.people)
        last = self.store.last_passages(people, since)
        inside = {p for p, door in last.items()
                  if p not in left_before and door in site.doors and site.doors[door].kind is not DoorKind.LIFT
                  and site.doors[door].to_area == area}
        at_start = len(inside)
        # (epoch, person, door, the area they went into; None: a visitor's check-out took them off site)
        changes: list[tuple[float, str, Door | None, str | None]] = []
        for ts, person, door in self.store.passages(since, until):
            d = site.doors.get(door)
            if d is None or d.kind is DoorKind.LIFT:
                continue  # a door no longer in the site: where it led is unknown; a lift: moved below
            try:
                changes.append((parse_iso_ms(ts), person, d, d.to_area))
            except ValueError:
                continue
        changes += self._lift_moves(site, since, until)
        changes += [(at, vid, None, None) for at, vid in checkouts if at >= start.timestamp()]
        changes.sort(key=lambda c: c[0])
        steps: list[Step] = []
        for at, person, d, to in changes:
            p = site.people.get(person)
            if p is None:
                continue  # erased or removed: presence forgets them too
            now_in = to == area
            if now_in == (person in inside):
                continue
            (inside.add if now_in else inside.discard)(person)
            steps.append(Step(datetime.fromtimestamp(at, zone), p.name, d.name if d else "visitor checked out",
                              now_in, len(inside)))
        a = site.areas[area]
        shown_until = datetime.fromtimestamp(now, zone) if now is not None and start.timestamp() <= now < \
            end.timestamp() else None
        return Occupancy(area, a.name, day, start.astimezone(zone), end.astimezone(zone), at_start, steps,
                         a.max_occupancy, shown_until)


    def _lift_moves(self, site: Site, since: str, until: str) -> list[tuple[float, str, Door | None, str | None]]:
        """The moves lifts made in ``[since, until)``, as server/bus.py makes them live: a floor chosen moves the
        people of the grant it names (the holder and their companions) to that floor, if the grant enabled it;
        a destination-dispatch grant moves them at once to the floor asked for. A lift badge alone moves nobody."""
        lifts = {d.id: d for d in site.doors.values() if d.kind is DoorKind.LIFT}
        if not lifts:
            return []
        out: list[tuple[float, str, Door | None, str | None]] = []
        for ev in self._events(sorted(lifts), ["floor_chosen", "access"], since, until):
            lift, detail = lifts[str(ev["door"])], _detail(ev)
            if ev["type"] == "access":
                floors = detail.get("floors")
                floor = detail.get("floor")
                if ev.get("decision") != "granted" or not isinstance(floors, list) or floor not in floors:
                    continue
                grant: dict[str, Any] | None = ev
            else:
                floor = detail.get("floor")
                grant = self.store.event(detail["grant"]) if isinstance(detail.get("grant"), str) else None
                if grant is None or grant.get("type") != "access" or grant.get("decision") != "granted" \
                        or (grant.get("device"), grant.get("door")) != (ev.get("device"), ev.get("door")) \
                        or floor not in _detail(grant).get("floors", []):
                    continue
            if not isinstance(floor, str) or floor not in lift.entered or not grant.get("person"):
                continue
            try:
                at = parse_iso_ms(str(ev["ts"]))
            except ValueError:
                continue
            out += [(at, pid, lift, floor) for pid in (grant["person"], *_companions(grant))]
        return out

    def _events(self, doors: list[str], types: list[str], since: str, until: str) -> Iterator[dict[str, Any]]:
        """Every stored event of ``types`` at ``doors`` in ``[since, until)``, oldest first, a page at a time."""
        after = 0
        while True:
            rows = self.store.event_page(after=after, doors=doors, types=types, since=since, until=until,
                                         limit=PAGE)
            yield from rows
            if len(rows) < PAGE:
                return
            after = int(rows[-1]["cursor"])


def _companions(row: dict[str, Any]) -> list[str]:
    raw = row.get("companions")
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else raw or []
    except ValueError:
        return []
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def _hour_key(local: datetime) -> str:
    """A local hour's key: its start with the offset, so the two 01:00s of a fall-back night differ."""
    return local.replace(minute=0, second=0, microsecond=0).isoformat()


def _hours(span: Period) -> list[tuple[str, str]]:
    """Every local hour of the period in time order, ``(key, label)``: walked in UTC quarter hours, so a
    23-hour and a 25-hour day come out right."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    t = midnight(span.first, span.zone)
    end = midnight(span.last + timedelta(days=1), span.zone)
    while t < end:
        local = t.astimezone(span.zone)
        key = _hour_key(local)
        if key not in seen:
            seen.add(key)
            out.append((key, local.strftime("%a %H:00 ") + (local.tzname() or "")))
        t += timedelta(minutes=15)
    return out


__all__ = ["Badge", "Bucket", "HOUR_MAX_DAYS", "MAX_DAYS", "Occupancy", "Period", "ReportError", "Refusals",
           "Reports", "Step", "WEEKDAYS", "area_doors", "midnight", "parse_day", "period", "site_zone"]
