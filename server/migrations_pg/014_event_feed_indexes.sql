-- server/store.py _m014_event_feed_indexes
CREATE INDEX IF NOT EXISTS events_person_ts ON events (person, ts);
CREATE INDEX IF NOT EXISTS events_door ON events (door);
DROP INDEX IF EXISTS idx_events_person;
