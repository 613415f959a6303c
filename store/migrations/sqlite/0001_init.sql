-- Threads of cluster mode: who owns each (tenant), who drives it now (a lease fenced by epoch),
-- and the last rollout published under a lease. Times are milliseconds since the Unix epoch
-- on the local clock (SQLite has no server: every process on the host shares that clock).
CREATE TABLE threads (
    thread          TEXT PRIMARY KEY NOT NULL,
    tenant          TEXT,
    epoch           INTEGER NOT NULL DEFAULT 0,
    holder          TEXT,
    expires_at      INTEGER NOT NULL DEFAULT 0,
    published_epoch INTEGER,
    rollout         TEXT
);

-- Idempotency records, one per (tenant, key): running under a holder, or done with the reply
-- text kept (state 'done') or too large to keep (state 'too_large').
CREATE TABLE idempotency (
    tenant   TEXT NOT NULL,
    key      TEXT NOT NULL,
    holder   TEXT NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('running', 'done', 'too_large')),
    reply    TEXT,
    began_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);

-- The lazy purge deletes by age.
CREATE INDEX idempotency_began_at ON idempotency (began_at);
