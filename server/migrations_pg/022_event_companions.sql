-- server/store.py _m022_event_companions
ALTER TABLE events ADD COLUMN companions TEXT;
ALTER TABLE events ADD COLUMN "grant" TEXT;
