-- Multi-index hashing for the reused-selfie search (verifiers/phash_chunks.py): the 64-bit
-- perceptual hash cut into four 16-bit chunks, one B-tree index each, so that a look-up reads
-- only the entries whose chunk is within a bit or two of the new photo's, instead of
-- measuring the distance to every analysed photo. Every stored hash within
-- SAME_PHOTO_MAX_DISTANCE bits of the new one is among them (the pigeonhole principle), and
-- the query keeps those within the exact distance.
--
-- The indexes carry phash and registration_id (INCLUDE), so the candidates are checked without
-- visiting the table: an index-only scan per chunk. The query in verifiers/photo.py spells the
-- chunk expressions exactly as here, or the planner would not use the indexes.
--
-- An index-only scan skips the table only for pages the visibility map marks all-visible, which
-- (auto)vacuum does. By default autovacuum comes once a fifth of the table is new or changed, so
-- during a wave up to a fifth of the candidates would be looked up in the table as well: about
-- 2,000 table pages more per look-up at 1.5 million photos. Here once a fiftieth is.
--
-- Expression indexes rather than generated columns: adding a stored column rewrites the whole
-- table under an exclusive lock. Building an index lets reads go on; uploads and analyses wait
-- until the four are built (seconds at 1.5 million photos), so apply it outside a wave.
CREATE INDEX photos_phash_chunk0 ON photos (((phash >> 48) & 65535)) INCLUDE (phash, registration_id);
CREATE INDEX photos_phash_chunk1 ON photos (((phash >> 32) & 65535)) INCLUDE (phash, registration_id);
CREATE INDEX photos_phash_chunk2 ON photos (((phash >> 16) & 65535)) INCLUDE (phash, registration_id);
CREATE INDEX photos_phash_chunk3 ON photos ((phash & 65535)) INCLUDE (phash, registration_id);
ALTER TABLE photos SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02
);
