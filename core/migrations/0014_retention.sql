-- Retention and the person's rights (core/retention.py, docs/privacy.md): a registration whose
-- purpose has ended, or whose person asked for erasure, keeps its row without personal data:
-- the NIK's keyed hash (the once-in-a-lifetime rule: nik_claims, benefit_niks), the outcome
-- (status, reason, dates) and erased_at. Its ciphertexts become NULL; its contact codes and
-- photos (their rows, keys and blobs) are deleted.
--
-- Dropping NOT NULL and adding a column without a default change the catalogue only; the
-- constraint is NOT VALID (every existing row has both ciphertexts) so that applying it does
-- not scan the table: new and updated rows are checked.
ALTER TABLE registrations
    ALTER COLUMN nik_enc DROP NOT NULL,
    ALTER COLUMN personal_enc DROP NOT NULL,
    ADD COLUMN erased_at timestamptz;
ALTER TABLE registrations
    ADD CONSTRAINT registrations_erased_check
        CHECK ((erased_at IS NULL) = (nik_enc IS NOT NULL AND personal_enc IS NOT NULL))
        NOT VALID;
