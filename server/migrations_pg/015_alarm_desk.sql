-- server/store_alarm_desk.py m015_alarm_desk
ALTER TABLE alarms ADD COLUMN escalated_at DOUBLE PRECISION;
CREATE INDEX alarms_open ON alarms (last_raised_at) WHERE resolved_at IS NULL;
CREATE TABLE operator_prefs (
    operator TEXT,
    name TEXT,
    value TEXT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (operator, name)
);
-- The desk's alarm watch wakes on alarm writes (server/store_alarm_desk.py on_alarm_write). SQLite does it with
-- temporary triggers calling a Python function; here the same three triggers, stored, notify a channel that the
-- store's connection LISTENs on: a new alarm; one raised again, acknowledged, resolved or escalated (the columns
-- named in the SET list, as SQLite's UPDATE OF); an open one deleted. Row triggers, so an UPDATE matching no row
-- wakes nobody, as on SQLite.
CREATE FUNCTION doorkeep_alarm_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('doorkeep_alarm_changed', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER alarm_watch_insert AFTER INSERT ON alarms FOR EACH ROW EXECUTE FUNCTION doorkeep_alarm_changed();
CREATE TRIGGER alarm_watch_update AFTER UPDATE OF last_raised_at, acknowledged_at, resolved_at, escalated_at
    ON alarms FOR EACH ROW EXECUTE FUNCTION doorkeep_alarm_changed();
CREATE TRIGGER alarm_watch_delete AFTER DELETE ON alarms FOR EACH ROW WHEN (OLD.resolved_at IS NULL)
    EXECUTE FUNCTION doorkeep_alarm_changed();
