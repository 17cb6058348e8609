-- Supabase-compatible auth layer: the auth schema, auth.users, auth.uid() and the three API roles.
-- Application code written for Supabase runs unchanged against a plain PostgreSQL server.

-- Roles are cluster-global: several databases of one cluster (tenants, test databases) share
-- them, so creation must tolerate roles that already exist. CREATE ROLE has no IF NOT EXISTS,
-- hence the catalog check. NOLOGIN: they are assumed with SET ROLE by a pooler or API gateway.
-- Two databases migrating at once can both pass the check; the loser's CREATE ROLE then fails
-- with duplicate_object or, having waited on the winner's catalog row, unique_violation, and
-- either means the role now exists. Creating roles needs CREATEROLE (or superuser).
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;

CREATE SCHEMA auth;
COMMENT ON SCHEMA auth IS 'Supabase-compatible identities; written by the auth service, read by policies.';

CREATE TABLE auth.users (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email       text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The current user's id from the JWT claims the gateway sets per transaction
-- (set_config('request.jwt.claim.sub', ..., true)). missing_ok = true makes an unset claim NULL
-- rather than an error, and nullif maps an empty claim to NULL: no user, no rows.
-- STABLE lets the planner evaluate it once per statement inside policies.
CREATE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;

COMMENT ON FUNCTION auth.uid() IS 'Id of the user making the request, from request.jwt.claim.sub; NULL when anonymous.';

-- Roles need USAGE to call auth.uid() from policies; only service_role may touch the table.
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON auth.users TO service_role;
