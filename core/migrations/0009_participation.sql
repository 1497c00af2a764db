-- Taking part in a wave (issue "Waves"): the test, then joining the wave that is open.
--
-- A verified registrant fetches a test: the edge draws the questions from the bank and
-- records the attempt with its deadline (the server's clock, from the moment the questions
-- were served). The answers come back through RabbitMQ (intake.tests) and the participation
-- worker scores them: it writes answers and score once, and only if the edge received them
-- before the deadline. No personal data: ids, question ids, the registrant's choices, a score.
CREATE TABLE test_attempts (
    registration_id uuid NOT NULL REFERENCES registrations (id),
    -- The wave the attempt counts for: the one open when it was served, else the next one.
    wave_id         bigint NOT NULL REFERENCES waves (id),
    attempt         smallint NOT NULL CHECK (attempt >= 1),
    -- The drawn question ids, in the order served.
    questions       jsonb NOT NULL,
    served_at       timestamptz NOT NULL,
    deadline_at     timestamptz NOT NULL CHECK (deadline_at > served_at),
    -- When the edge received the answers (its clock), as carried by the message.
    submitted_at    timestamptz,
    answers         jsonb,
    correct         smallint CHECK (correct >= 0),
    score           smallint CHECK (score BETWEEN 0 AND 100),
    scored_at       timestamptz,
    PRIMARY KEY (registration_id, wave_id, attempt),
    CHECK ((score IS NULL) = (scored_at IS NULL))
);

-- A registrant's join of a wave: written by the participation worker from intake.joins,
-- once (the primary key), if the edge received it while the wave was open. ``situation`` is
-- what the registrant declared when joining (laid off, small business owner, ...), which a
-- wave's policy may rank first. The selection at close fills ``outcome`` and ``rank``.
CREATE TABLE wave_joins (
    wave_id         bigint NOT NULL REFERENCES waves (id),
    registration_id uuid NOT NULL REFERENCES registrations (id),
    situation       text NOT NULL,
    -- The edge's receive time (from the message): the join counts if the wave was open then.
    joined_at       timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    outcome         text CHECK (outcome IN ('selected', 'not_selected', 'ineligible')),
    rank            integer CHECK (rank >= 1),
    PRIMARY KEY (wave_id, registration_id)
);

CREATE INDEX wave_joins_registration ON wave_joins (registration_id);
