-- server/store_photos.py m017_person_photos
CREATE TABLE person_photos (
    person TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    site TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_key BYTEA NOT NULL,
    body BYTEA NOT NULL,
    bytes BIGINT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    uploaded_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX idx_person_photos_kek_id ON person_photos (kek_id);
