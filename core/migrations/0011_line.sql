-- A registrant's place in line (intake/line.py): how many items of a lane are ahead of theirs,
-- and how fast the lane drains. Counted over these indexes; none of them is touched by the
-- intake peak's write (the persist worker's INSERT of a registration with dispatched_at NULL:
-- every index here is partial and excludes it).
--
-- The lane's line: dispatched checks not final, ordered as they (re-)entered the lane's queue.
-- A pending check entered when its task was published (dispatched_at); a retrying one re-enters
-- at the back after its delay, approximated by when its retry was recorded (updated_at). The
-- dispatcher publishes a round with one timestamp (its transaction's now()), in created_at
-- order: the next keys break the tie as the publishes did. An entry is added when a task is
-- published or a retry recorded (updates that were not HOT already: the outbox index's
-- predicate names both columns), and the index holds only the backlog. The columns the key is
-- made of are included so that a count is an index-only scan (PostgreSQL needs the columns
-- an expression reads in the index, not only the expression).
CREATE INDEX checks_line ON checks (
    check_name,
    (CASE WHEN state = 'retrying' THEN updated_at ELSE dispatched_at END),
    created_at,
    registration_id
) INCLUDE (state, updated_at, dispatched_at)
    WHERE state IN ('pending', 'retrying') AND dispatched_at IS NOT NULL;

-- What a lane handled, when: every outcome a lane records (passed, failed, waiting, retrying)
-- sets updated_at. The drain rate is read from the most recent entries of one lane.
CREATE INDEX checks_handled ON checks (check_name, updated_at) INCLUDE (state)
    WHERE state <> 'pending';

-- The dispatcher's drain: registrations started, when. Partial, so the persist worker's
-- INSERT (dispatched_at NULL) does not write it.
CREATE INDEX registrations_dispatched ON registrations (dispatched_at)
    WHERE dispatched_at IS NOT NULL;
