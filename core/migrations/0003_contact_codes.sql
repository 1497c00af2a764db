-- The one live secret per registration and contact channel: the single-use secret of an email
-- link ('email') or a one-time code sent by SMS ('sms').
--
-- The secret is stored only as a keyed HMAC (core.keys, 'contact-code'), bound to the
-- registration, the channel and the generation: the table alone reveals no code and no link.
-- A row is created by the lane when it first sends, and reused by every resend.
--
-- Sending is at most once per generation: the lane commits send_started_at (the intent)
-- before it sends and sent_at after, and never sends for a generation whose send was started.
-- A resend (the edge) starts a new generation and clears the secret.
--
-- No foreign key to registrations: rows are only written for stored registrations, and the
-- table must not block maintenance that empties registrations.
CREATE TABLE contact_codes (
    registration_id uuid NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('email', 'sms')),
    -- 1 for the first send, incremented by each resend; part of the HMAC input, so a secret
    -- of an earlier generation can never match.
    generation      integer NOT NULL DEFAULT 1,
    -- NULL: no live secret (not sent yet, a send that certainly failed, or replaced).
    secret_hmac     bytea,
    expires_at      timestamptz,
    -- Wrong entries left before the code is locked; NULL for email links (not guessable).
    attempts_left   smallint,
    send_started_at timestamptz,
    sent_at         timestamptz,
    -- When the secret was used (the link followed, the code entered): single use.
    used_at         timestamptz,
    resends         integer NOT NULL DEFAULT 0,
    resent_at       timestamptz,
    PRIMARY KEY (registration_id, channel)
);
