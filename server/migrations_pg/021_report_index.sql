-- server/store_reports.py m021_report_index: the same expressions as its queries (_HOUR_X, _QUARTER_X), so the
-- planner can match them.
CREATE INDEX IF NOT EXISTS events_badge_quarters
    ON events (substr(ts, 1, 13), (CAST(substr(ts, 15, 2) AS INTEGER) / 15), decision, door) WHERE type = 'access';
