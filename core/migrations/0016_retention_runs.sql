-- The retention job's own record (core/retention.py, core/retention_metrics.py): one row per
-- `intake retention run`, written when it starts and completed when it ends, so that a run that
-- died (killed, out of memory, its node lost, its deadline reached) stays a row without an
-- outcome, and "the last complete pass" is what happened, not what was hoped. No personal
-- data: the counts the run printed, and the type of the error that stopped it (never its
-- message, which can quote a value).
--
-- outcome: NULL while running, and for ever for a run that died; 'ok': a whole pass (with
-- dry_run, counted only); 'stopped': ended early without an error (--max-batches), what it
-- erased is erased; 'failed': an error stopped it (error: its type).
CREATE TABLE retention_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text CHECK (outcome IN ('ok', 'stopped', 'failed')),
    dry_run     boolean NOT NULL,
    report      jsonb,
    error       text,
    CHECK ((outcome IS NULL) = (finished_at IS NULL)),
    CHECK ((outcome = 'failed') = (error IS NOT NULL))
);

-- Rejected registrations whose personal data is still stored, by the date their retention
-- period starts from (the decision; a duplicate's storing): the metrics count those whose
-- period ended (intake_retention_overdue) over a range of it. It holds only what the job has
-- not erased yet (an erasure leaves the index), and the intake peak's INSERT of a received
-- registration does not write it (only a duplicate's, stored rejected). The columns the key
-- reads are included, so that the count is an index-only scan.
CREATE INDEX registrations_rejected_kept ON registrations ((coalesce(decided_at, stored_at)))
    INCLUDE (decided_at, stored_at)
    WHERE status = 'rejected' AND erased_at IS NULL;
