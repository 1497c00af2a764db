-- The selfie with the ID card: one current upload per registration. The bytes are a
-- content-addressed blob (core.blobs, named by sha256); the row says which blob and what the
-- photo lane found.
--
-- A new upload (allowed only while the photo check waits for one) replaces the row and clears
-- the analysis. Reuse of a selfie across registrations is found by an exact sha256 match (the
-- index below) or by a perceptual hash within a few bits: bit_count((phash # $1)::bit(64)),
-- a sequential scan over the analysed photos (see docs/architecture.md for its limit).
CREATE TABLE photos (
    registration_id uuid PRIMARY KEY REFERENCES registrations (id),
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes      integer NOT NULL CHECK (size_bytes >= 0),
    uploaded_at     timestamptz NOT NULL DEFAULT now(),
    -- The 64-bit perceptual hash as a signed bigint (two's complement of the 16 hex digits).
    phash           bigint,
    analysed_at     timestamptz,
    -- verifiers.imaging.PhotoOutcome of the last analysis ('ok', 'no_face', ...).
    outcome         text
);

CREATE INDEX photos_sha256 ON photos (sha256);
