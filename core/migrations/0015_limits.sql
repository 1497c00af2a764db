-- Limits per person and per client (core/limits.py): one fixed-window counter per key, shared by
-- every edge and worker. A key is a keyed HMAC (of a NIK, or of a client's address), never the
-- value itself. kind: 'nik' (registrations and resends of one NIK) or 'client' (requests of one
-- client address to the registrant's routes).
CREATE TABLE limit_hits (
    kind         text NOT NULL CHECK (kind IN ('nik', 'client')),
    key          bytea NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (kind, key)
);

-- The edges read the NIKs over their limit every INTAKE_LIMIT_REFRESH_S: only the rows of the
-- current windows that reached a limit are worth an index entry.
CREATE INDEX limit_hits_window ON limit_hits (kind, window_start);
