-- server/store.py _m004_snapshot_keys
ALTER TABLE snapshots ADD COLUMN site TEXT;
ALTER TABLE snapshots ADD COLUMN kek_id TEXT;
ALTER TABLE snapshots ADD COLUMN wrapped_key BYTEA;
CREATE INDEX idx_snapshots_kek_id ON snapshots (kek_id);
