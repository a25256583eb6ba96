-- Head counts by area: several server workers count a limited area's people inside each decision
-- (server/shared_decisions.py dk_read), which without an index reads every row of presence.
CREATE INDEX IF NOT EXISTS presence_area ON presence (area);
