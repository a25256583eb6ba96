-- server/store.py _m010_device_clock
CREATE TABLE device_clock (device TEXT PRIMARY KEY, drift_s DOUBLE PRECISION NOT NULL, measured_at TEXT NOT NULL);
