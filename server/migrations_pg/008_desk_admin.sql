-- server/store.py _m008_desk_admin (folded into 013's tables and dropped by server/people.py's first seed)
CREATE TABLE desk_people (
    id TEXT PRIMARY KEY,
    added BIGINT NOT NULL,
    name TEXT,
    kind TEXT,
    clearance BIGINT,
    access_levels TEXT,
    state TEXT,
    changed_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE desk_cards (
    hash TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    format TEXT NOT NULL,
    last4 TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX idx_desk_cards_person ON desk_cards (person);
