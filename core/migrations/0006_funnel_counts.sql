-- The funnel, counted where it happens. Metrics read the registrations and checks by state
-- from here (core/funnel.py) instead of counting millions of rows on every scrape, and the
-- counts are the database's own: they survive any process restart.
--
-- Statement-level triggers with transition tables append one row per (kind, key) a statement
-- changed to funnel_deltas: an insert-only log, so concurrent transactions never wait on a hot
-- counter row (and cannot deadlock on one). Whoever reads folds the log into funnel_counts
-- under an advisory lock (core.funnel). Current count of a key = its row in funnel_counts plus
-- its deltas not folded yet.
--
-- kind 'status': registrations by status; kind 'reason': rejected and review registrations by
-- 'status:reason'; kind 'check': checks by 'check_name:state'. No personal data, no ids.
CREATE TABLE funnel_counts (
    kind text NOT NULL,
    key  text NOT NULL,
    n    bigint NOT NULL,
    PRIMARY KEY (kind, key)
);

CREATE TABLE funnel_deltas (
    kind text NOT NULL,
    key  text NOT NULL,
    n    bigint NOT NULL
);

CREATE FUNCTION funnel_registration_keys(status text, reason text)
RETURNS TABLE (kind text, key text) LANGUAGE sql IMMUTABLE AS $$
    SELECT 'status', status
    UNION ALL
    SELECT 'reason', status || ':' || reason WHERE reason IS NOT NULL
$$;

CREATE FUNCTION funnel_registrations_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_deltas (kind, key, n)
    SELECT k.kind, k.key, count(*)
    FROM new_rows r, funnel_registration_keys(r.status, r.reject_reason) k
    GROUP BY k.kind, k.key;
    RETURN NULL;
END $$;

CREATE FUNCTION funnel_registrations_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_deltas (kind, key, n)
    SELECT k.kind, k.key, -count(*)
    FROM old_rows r, funnel_registration_keys(r.status, r.reject_reason) k
    GROUP BY k.kind, k.key;
    RETURN NULL;
END $$;

CREATE FUNCTION funnel_registrations_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_deltas (kind, key, n)
    SELECT kind, key, sum(n)
    FROM (
        SELECT k.kind, k.key, -1 AS n
        FROM old_rows o JOIN new_rows r USING (id),
             funnel_registration_keys(o.status, o.reject_reason) k
        WHERE (o.status, o.reject_reason) IS DISTINCT FROM (r.status, r.reject_reason)
        UNION ALL
        SELECT k.kind, k.key, 1
        FROM old_rows o JOIN new_rows r USING (id),
             funnel_registration_keys(r.status, r.reject_reason) k
        WHERE (o.status, o.reject_reason) IS DISTINCT FROM (r.status, r.reject_reason)
    ) changes
    GROUP BY kind, key
    HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION funnel_checks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_deltas (kind, key, n)
    SELECT 'check', check_name || ':' || state, count(*) FROM new_rows GROUP BY 2;
    RETURN NULL;
END $$;

CREATE FUNCTION funnel_checks_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_deltas (kind, key, n)
    SELECT 'check', check_name || ':' || state, -count(*) FROM old_rows GROUP BY 2;
    RETURN NULL;
END $$;

CREATE FUNCTION funnel_checks_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO funnel_deltas (kind, key, n)
    SELECT 'check', key, sum(n)
    FROM (
        SELECT o.check_name || ':' || o.state AS key, -1 AS n
        FROM old_rows o JOIN new_rows r USING (registration_id, check_name)
        WHERE o.state <> r.state
        UNION ALL
        SELECT r.check_name || ':' || r.state, 1
        FROM old_rows o JOIN new_rows r USING (registration_id, check_name)
        WHERE o.state <> r.state
    ) changes
    GROUP BY key
    HAVING sum(n) <> 0;
    RETURN NULL;
END $$;

-- TRUNCATE (tests, a reset) empties the table's counts with it.
CREATE FUNCTION funnel_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'registrations' THEN
        DELETE FROM funnel_counts WHERE kind IN ('status', 'reason');
        DELETE FROM funnel_deltas WHERE kind IN ('status', 'reason');
    ELSE
        DELETE FROM funnel_counts WHERE kind = 'check';
        DELETE FROM funnel_deltas WHERE kind = 'check';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER funnel_registrations_inserted AFTER INSERT ON registrations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_registrations_inserted();
CREATE TRIGGER funnel_registrations_updated AFTER UPDATE ON registrations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_registrations_updated();
CREATE TRIGGER funnel_registrations_deleted AFTER DELETE ON registrations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_registrations_deleted();
CREATE TRIGGER funnel_registrations_truncated AFTER TRUNCATE ON registrations
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_truncated();

CREATE TRIGGER funnel_checks_inserted AFTER INSERT ON checks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_checks_inserted();
CREATE TRIGGER funnel_checks_updated AFTER UPDATE ON checks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_checks_updated();
CREATE TRIGGER funnel_checks_deleted AFTER DELETE ON checks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_checks_deleted();
CREATE TRIGGER funnel_checks_truncated AFTER TRUNCATE ON checks
    FOR EACH STATEMENT EXECUTE FUNCTION funnel_truncated();

-- Registrations and checks stored before this migration are counted once, here.
INSERT INTO funnel_counts (kind, key, n)
SELECT k.kind, k.key, count(*)
FROM registrations r, funnel_registration_keys(r.status, r.reject_reason) k
GROUP BY k.kind, k.key;
INSERT INTO funnel_counts (kind, key, n)
SELECT 'check', check_name || ':' || state, count(*) FROM checks GROUP BY 2;
