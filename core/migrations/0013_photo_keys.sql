-- Photos encrypted at rest (core/photo_vault.py): a blob is named by the keyed HMAC of the
-- uploaded bytes, no longer by their plain SHA-256 (which anyone holding a copy of a photo could
-- compute to confirm it is stored), and sealed with a random data key of its own, kept here
-- wrapped under the current key version (core/keys.py; re-wrapped by `intake keys reencrypt`).
--
-- The column keeps its role: the reuse check's exact match (the same upload on another
-- registration) and a retried upload's recognition, now on the keyed name.
ALTER TABLE photos RENAME COLUMN sha256 TO blob_hmac;
ALTER INDEX photos_sha256 RENAME TO photos_blob_hmac;

-- One row per blob name (two registrations uploading one photo share its blob and key). The
-- key row is committed before its blob is written; deleting it makes the blob unreadable.
CREATE TABLE photo_keys (
    blob_hmac   text PRIMARY KEY CHECK (blob_hmac ~ '^[0-9a-f]{64}$'),
    -- Key version byte, nonce, the wrapped 32-byte key, tag (core.keys.WRAPPED_KEY_BYTES).
    key_enc     bytea NOT NULL CHECK (length(key_enc) = 61),
    created_at  timestamptz NOT NULL DEFAULT now()
);
