-- Registrations as accepted by the edge and stored by the persist worker.
-- Personal values are stored only encrypted (AES-GCM, key derived from INTAKE_SECRET_KEY);
-- the NIK also as a keyed HMAC, for uniqueness and look-ups without decrypting.
CREATE TABLE registrations (
    id            uuid PRIMARY KEY,
    nik_hmac      bytea NOT NULL,
    nik_enc       bytea NOT NULL,
    personal_enc  bytea NOT NULL,
    status        text NOT NULL CHECK (status IN ('received', 'rejected')),
    reject_reason text CHECK ((status = 'rejected') = (reject_reason IS NOT NULL)),
    submitted_at  timestamptz NOT NULL,
    stored_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX registrations_nik_hmac ON registrations (nik_hmac);

-- One NIK, once in a lifetime: the first registration of a NIK claims it; later ones are
-- stored with status 'rejected' and reason 'duplicate_nik'.
CREATE TABLE nik_claims (
    nik_hmac        bytea PRIMARY KEY,
    registration_id uuid NOT NULL REFERENCES registrations (id) DEFERRABLE INITIALLY DEFERRED,
    claimed_at      timestamptz NOT NULL DEFAULT now()
);
