"""Is a schedule open at an instant? Read in the site's time zone.

The instant is UTC epoch seconds and is converted with ``zoneinfo``, so a
window of 07:00–19:00 means local wall time on both sides of a
daylight-saving change.

A window whose ``end`` is at or before its ``start`` spans midnight: the day
listed is the day the window *starts*, and it runs until ``end`` on the next
local day (``fri 22:00–06:00`` is Friday 22:00 to Saturday 06:00; ``end ==
start`` is a full 24 hours). Times are wall-clock times, so on the night the
clocks go forward such a window is an hour shorter, and on the night they go
back an hour longer.

A holiday closes every window that *starts* on that local date. A window
that started the evening before a holiday runs on into the holiday morning;
one that starts on the holiday evening does not open at all.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from doorkeep.model import WEEKDAYS, Schedule, TimeWindow


def local_datetime(epoch: float, tz: str) -> datetime:
    """The wall-clock date and time at ``epoch`` in the site's time zone."""
    return datetime.fromtimestamp(epoch, tz=ZoneInfo(tz))


def local_date(epoch: float, tz: str) -> date:
    """The local calendar date at ``epoch`` in the site's time zone."""
    return local_datetime(epoch, tz).date()


def spans_midnight(window: TimeWindow) -> bool:
    """True when the window runs past midnight into the next day (``end <= start``)."""
    return window.end is not None and window.end <= window.start


def is_open(schedule: Schedule, epoch: float, tz: str) -> bool:
    local = local_datetime(epoch, tz)
    today = local.date()
    yesterday = today - timedelta(days=1)
    now = local.time().replace(tzinfo=None)
    return any(_window_open(w, schedule.holidays, today, yesterday, now) for w in schedule.windows)


def _window_open(w: TimeWindow, holidays: frozenset[date], today: date, yesterday: date, now: time) -> bool:
    if spans_midnight(w):
        assert w.end is not None
        # The part that started today (start .. midnight) ...
        if now >= w.start and _day(today) in w.days and today not in holidays:
            return True
        # ... or the part that started yesterday (midnight .. end).
        return now < w.end and _day(yesterday) in w.days and yesterday not in holidays
    if today in holidays or _day(today) not in w.days:
        return False
    return now >= w.start and (w.end is None or now < w.end)


def _day(d: date) -> str:
    return WEEKDAYS[d.weekday()]


#: How far ahead :func:`next_opening` looks (a schedule closed longer than this is "not within N days").
LOOKAHEAD_DAYS = 14


def next_opening(schedule: Schedule, epoch: float, tz: str, days: int = LOOKAHEAD_DAYS) -> float | None:
    """The first instant after ``epoch`` at which ``schedule`` is open, or None within ``days`` local days.

    A closed schedule can only open at the start of one of its windows (a window running on past midnight
    is already open at midnight only if it was open before it), so the candidates are each window's local
    start on each coming day; each is checked with :func:`is_open` itself, so holidays and the clocks
    changing are judged exactly as the access rule judges them. If ``epoch`` is already open, the answer is
    ``epoch``.
    """
    if is_open(schedule, epoch, tz):
        return epoch
    zone = ZoneInfo(tz)
    today = local_date(epoch, tz)
    best: float | None = None
    for offset in range(days + 1):
        day = today + timedelta(days=offset)
        for w in schedule.windows:
            if _day(day) not in w.days:
                continue
            at = datetime.combine(day, w.start, tzinfo=zone).timestamp()
            if at > epoch and (best is None or at < best) and is_open(schedule, at, tz):
                best = at
        if best is not None:
            return best
    return None
