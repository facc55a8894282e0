-- Leader election of `cloudpods operator` replicas. The leader is whoever holds the session
-- advisory lock hashtextextended('cloudpods-leader:' || id, 0) on a dedicated connection; the
-- lock goes away with that connection. This row tells a newly elected leader how long the
-- previous one may still believe it leads (renewed_at + lease_ms), so the two never work at
-- the same time. A leader that shuts down cleanly marks the row released: no wait then.
CREATE TABLE IF NOT EXISTS cloudpods_leader (
    id          TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    renewed_at  TIMESTAMPTZ NOT NULL,
    lease_ms    BIGINT NOT NULL CHECK (lease_ms > 0),
    released    BOOLEAN NOT NULL DEFAULT false
);
