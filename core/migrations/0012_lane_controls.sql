-- Operator controls of the verification lanes (core/controls.py): a lane's circuit breaker
-- forced open or closed, or left to the automatic breaker ('auto', the same as no row), and
-- maintenance windows announced by a registry, during which its lane makes no call. Every
-- lane worker reads both about once a second. Each change is audited in admin_audit.
CREATE TABLE lane_controls (
    check_name  text PRIMARY KEY
        CHECK (check_name IN ('email', 'phone', 'dukcapil', 'dapodik', 'dtks', 'photo')),
    breaker     text NOT NULL CHECK (breaker IN ('auto', 'open', 'closed')),
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by  text NOT NULL
);

-- A window is never deleted: cancelling one sets cancelled_at (an active window cancelled
-- ends then), so that the history of what the lanes were told stays readable.
CREATE TABLE maintenance_windows (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_name    text NOT NULL
        CHECK (check_name IN ('email', 'phone', 'dukcapil', 'dapodik', 'dtks', 'photo')),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    reason        text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by    text NOT NULL,
    cancelled_at  timestamptz,
    cancelled_by  text,
    CHECK (starts_at < ends_at)
);

-- What the lane workers read every second: the windows of a check not over yet.
CREATE INDEX maintenance_windows_pending ON maintenance_windows (check_name, ends_at)
    WHERE cancelled_at IS NULL;
