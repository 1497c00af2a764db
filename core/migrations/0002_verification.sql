-- The verification state machine.
--
-- A registration is 'received' while its checks run, then 'verified', 'rejected' (with the
-- reason of the first failed check) or 'review' (a person must look at it).
ALTER TABLE registrations DROP CONSTRAINT registrations_status_check;
ALTER TABLE registrations DROP CONSTRAINT registrations_check;
ALTER TABLE registrations
    ADD CONSTRAINT registrations_status_check
        CHECK (status IN ('received', 'verified', 'rejected', 'review')),
    ADD CONSTRAINT registrations_reason_check
        CHECK ((status IN ('rejected', 'review')) = (reject_reason IS NOT NULL)),
    -- DTKS welfare recipients are not excluded but come after others (0 first).
    ADD COLUMN priority smallint NOT NULL DEFAULT 0,
    ADD COLUMN decided_at timestamptz,
    -- When the dispatcher started the registration's checks. NULL: not yet; the persist
    -- worker only inserts the registration (the intake peak must not pay for the fan-out).
    ADD COLUMN dispatched_at timestamptz;

CREATE INDEX registrations_undispatched ON registrations (submitted_at)
    WHERE dispatched_at IS NULL AND status = 'received';

-- One row per registration and check, created by the dispatcher when it starts the checks.
-- 'waiting' means waiting for the registrant (an email link to follow, an OTP to enter, a
-- photo to upload). A check started later (Dapodik and DTKS after Dukcapil) is inserted with
-- dispatched_at NULL in the transaction that decides it: the row is the outbox of its task,
-- so a task is never lost between a commit and a publish.
CREATE TABLE checks (
    registration_id uuid NOT NULL REFERENCES registrations (id),
    check_name      text NOT NULL
        CHECK (check_name IN ('email', 'phone', 'dukcapil', 'dapodik', 'dtks', 'photo')),
    state           text NOT NULL
        CHECK (state IN ('pending', 'waiting', 'retrying', 'passed', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    dispatched_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    PRIMARY KEY (registration_id, check_name)
);

CREATE INDEX checks_outbox ON checks (created_at) WHERE dispatched_at IS NULL AND state = 'pending';
