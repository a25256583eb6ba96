-- server/store.py _m011_site_revisions (the number is always given: base + 1)
CREATE TABLE site_revisions (
    number BIGINT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    summary TEXT NOT NULL,
    changes TEXT NOT NULL,
    site_toml TEXT NOT NULL,
    rollback_of BIGINT
);
