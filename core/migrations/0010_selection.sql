-- Selection at a wave's close, the benefit once in a lifetime, and the notifications.
--
-- The selection of a wave is written in one transaction: its row here (with the seed of the
-- draw that breaks ties, so that it can be recomputed and compared), every join's outcome and
-- rank, the benefit of each selected NIK, and two notifications per joiner (the outbox of the
-- notifier). A crash leaves all of it or none, and a second run finds the row and stops.
CREATE TABLE wave_selections (
    wave_id     bigint PRIMARY KEY REFERENCES waves (id),
    seed        bytea NOT NULL CHECK (length(seed) = 32),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    joined      integer NOT NULL CHECK (joined >= 0),
    eligible    integer NOT NULL CHECK (eligible >= 0),
    selected    integer NOT NULL CHECK (selected >= 0),
    -- SHA-256 of the ranked input (ids, keys), so that a recomputation shows it saw the same.
    digest      bytea NOT NULL
);

-- A NIK (its keyed HMAC, as in nik_claims) that received the benefit: never again. Kept when
-- everything else about the person is erased, as the once-in-a-lifetime rule needs it.
CREATE TABLE benefit_niks (
    nik_hmac        bytea PRIMARY KEY,
    wave_id         bigint NOT NULL REFERENCES waves (id),
    registration_id uuid NOT NULL,
    granted_at      timestamptz NOT NULL DEFAULT now()
);

-- One email and one SMS per joiner of a closed wave, telling the outcome and what comes next.
-- 'sending' is the intent, committed before the message leaves; a row found 'sending' after a
-- crash is sent again under the same idempotency key (SMS) and Message-ID (email), which the
-- provider and the mailbox deduplicate, so a person gets each message once.
CREATE TABLE notifications (
    wave_id         bigint NOT NULL REFERENCES waves (id),
    registration_id uuid NOT NULL REFERENCES registrations (id),
    channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
    outcome         text NOT NULL CHECK (outcome IN ('selected', 'not_selected', 'ineligible')),
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'sent')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Not before: the backoff after a failed send, or the lease of a 'sending' row.
    next_at         timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    PRIMARY KEY (wave_id, registration_id, channel),
    CHECK ((state = 'sent') = (sent_at IS NOT NULL))
);

CREATE INDEX notifications_due ON notifications (next_at) WHERE state <> 'sent';
