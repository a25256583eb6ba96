"""When a closed schedule next opens (``next_opening``), read in the site's time zone.

The rules of ``is_open`` itself (windows, midnight, holidays, daylight saving) are pinned in
tests/unit/test_decision.py; these pin the search for the next opening that ``doorkeep.explain`` shows at
the desk ("opens Monday 07:00"), so a wrong day, a skipped holiday or an off-by-one in the look-ahead shows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from doorkeep.model import WEEKDAYS, Schedule, TimeWindow
from doorkeep.schedule import LOOKAHEAD_DAYS, is_open, local_date, next_opening, spans_midnight

LONDON = "Europe/London"
WEEKDAYS_ONLY = frozenset(WEEKDAYS[:5])
BUSINESS = Schedule("business", "Business", (TimeWindow(WEEKDAYS_ONLY, time(7, 0), time(19, 0)),))


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_open_now_is_now() -> None:
    now = utc(2026, 3, 25, 12, 0, 30)  # Wednesday, GMT
    assert next_opening(BUSINESS, now, LONDON) == now


def test_later_the_same_day() -> None:
    assert next_opening(BUSINESS, utc(2026, 3, 25, 6, 0), LONDON) == utc(2026, 3, 25, 7, 0)


def test_the_next_morning_after_closing() -> None:
    assert next_opening(BUSINESS, utc(2026, 3, 25, 19, 0), LONDON) == utc(2026, 3, 26, 7, 0)


def test_friday_evening_opens_monday_in_summer_time() -> None:
    """The clocks go forward on Sunday 29 March 2026: Monday 07:00 BST is 06:00 UTC."""
    assert next_opening(BUSINESS, utc(2026, 3, 27, 20, 0), LONDON) == utc(2026, 3, 30, 6, 0)


def test_the_earliest_window_of_the_day_wins() -> None:
    sched = Schedule("s", "s", (TimeWindow(frozenset({"thu"}), time(14, 0), time(15, 0)),
                                TimeWindow(frozenset({"thu"}), time(9, 0), time(10, 0)),
                                TimeWindow(frozenset({"thu"}), time(11, 0), time(12, 0))))
    assert next_opening(sched, utc(2026, 3, 25, 12, 0), LONDON) == utc(2026, 3, 26, 9, 0)
    assert next_opening(sched, utc(2026, 3, 26, 10, 30), LONDON) == utc(2026, 3, 26, 11, 0)


def test_a_window_not_on_that_day_does_not_hide_the_next_one() -> None:
    """Windows are tried in their listed order; one that is not on a day must not end that day's search."""
    sched = Schedule("s", "s", (TimeWindow(frozenset({"mon"}), time(9, 0), time(10, 0)),
                                TimeWindow(frozenset({"thu"}), time(11, 0), time(12, 0))))
    assert next_opening(sched, utc(2026, 3, 25, 12, 0), LONDON) == utc(2026, 3, 26, 11, 0)


def test_a_window_that_started_before_is_not_an_opening() -> None:
    """A start earlier today is passed; the next candidate is that window tomorrow."""
    sched = Schedule("s", "s", (TimeWindow(frozenset(WEEKDAYS), time(9, 0), time(10, 0)),))
    assert next_opening(sched, utc(2026, 3, 25, 10, 0), LONDON) == utc(2026, 3, 26, 9, 0)


def test_a_holiday_is_skipped() -> None:
    sched = Schedule("s", "s", BUSINESS.windows, frozenset({date(2026, 12, 25)}))  # a Friday
    assert next_opening(sched, utc(2026, 12, 24, 20, 0), LONDON) == utc(2026, 12, 28, 7, 0)


def test_a_midnight_window_opens_at_its_start() -> None:
    nights = Schedule("n", "n", (TimeWindow(frozenset({"sat"}), time(22, 0), time(6, 0)),))
    assert next_opening(nights, utc(2026, 3, 25, 12, 0), LONDON) == utc(2026, 3, 28, 22, 0)
    assert next_opening(nights, utc(2026, 3, 29, 5, 0), LONDON) == utc(2026, 4, 4, 21, 0)  # 22:00 BST


def test_never_open_is_none() -> None:
    assert next_opening(Schedule("n", "never", ()), utc(2026, 3, 25, 12, 0), LONDON) is None


def test_the_look_ahead_is_counted_in_local_days() -> None:
    """Mondays only, the next three Mondays holidays: the fourth is 22 days on, beyond the default 14."""
    mondays = Schedule("m", "m", (TimeWindow(frozenset({"mon"}), time(9, 0), time(10, 0)),),
                       frozenset({date(2026, 3, 30), date(2026, 4, 6), date(2026, 4, 13)}))
    now = utc(2026, 3, 29, 12, 0)  # Sunday
    assert LOOKAHEAD_DAYS == 14
    assert next_opening(mondays, now, LONDON) is None
    assert next_opening(mondays, now, LONDON, days=21) is None
    assert next_opening(mondays, now, LONDON, days=22) == utc(2026, 4, 20, 8, 0)  # 09:00 BST


@pytest.mark.parametrize("now", [utc(2026, 3, 25, 6, 59, 59), utc(2026, 3, 27, 19, 0), utc(2026, 3, 28, 12, 0)])
def test_the_next_opening_is_open_and_nothing_before_it_is(now: float) -> None:
    at = next_opening(BUSINESS, now, LONDON)
    assert at is not None and at > now and is_open(BUSINESS, at, LONDON)
    assert not is_open(BUSINESS, at - 1, LONDON)


def test_local_date_and_spans_midnight() -> None:
    assert local_date(utc(2026, 3, 30, 23, 30), LONDON) == date(2026, 3, 31)  # 00:30 BST
    assert local_date(utc(2026, 3, 27, 23, 30), LONDON) == date(2026, 3, 27)  # 23:30 GMT
    assert spans_midnight(TimeWindow(frozenset({"mon"}), time(22, 0), time(6, 0)))
    assert spans_midnight(TimeWindow(frozenset({"mon"}), time(7, 0), time(7, 0)))
    assert not spans_midnight(TimeWindow(frozenset({"mon"}), time(7, 0), time(19, 0)))
    assert not spans_midnight(TimeWindow(frozenset({"mon"}), time(20, 0), None))
