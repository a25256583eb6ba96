"""Is a schedule open at an instant? Read in the site's time zone.

The instant is UTC epoch seconds and is converted with ``zoneinfo``, so a
window of 07:00–19:00 means local wall time on both sides of a
daylight-saving change.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from doorkeep.model import WEEKDAYS, Schedule


def is_open(schedule: Schedule, epoch: float, tz: str) -> bool:
    local = datetime.fromtimestamp(epoch, tz=ZoneInfo(tz))
    if local.date() in schedule.holidays:
        return False
    day = WEEKDAYS[local.weekday()]
    now = local.time().replace(tzinfo=None)
    for w in schedule.windows:
        if day not in w.days:
            continue
        if now >= w.start and (w.end is None or now < w.end):
            return True
    return False
