-- Waves of the programme (issue "Waves"): each opens and closes at set times (WIB is how
-- operators write them; stored as timestamptz), takes a quota of participants and selects
-- them by an eligibility policy that changed between waves, so it is data (a JSON document
-- checked by core.waves.Policy), not code. No personal data.
CREATE TABLE waves (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    opens_at    timestamptz NOT NULL,
    closes_at   timestamptz NOT NULL,
    quota       integer NOT NULL CHECK (quota > 0),
    policy      jsonb NOT NULL,
    -- Set when an operator closed the wave before closes_at.
    closed_at   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (opens_at < closes_at)
);

-- Every operator action, appended, never changed: who (the credential's name), what, on what,
-- with what. Updates and deletes are refused by a trigger (TRUNCATE too), so that a mistake or a
-- compromised operator account cannot rewrite the record.
CREATE TABLE admin_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor   text NOT NULL,
    action  text NOT NULL,
    subject text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE FUNCTION admin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'admin_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER admin_audit_no_update BEFORE UPDATE OR DELETE ON admin_audit
    FOR EACH ROW EXECUTE FUNCTION admin_audit_append_only();
CREATE TRIGGER admin_audit_no_truncate BEFORE TRUNCATE ON admin_audit
    FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_append_only();
