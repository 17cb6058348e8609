-- Verify 20250131000001_auth_compat: schema, table, function and roles are in place.
DO $verify$
DECLARE
    role_name text;
BEGIN
    IF to_regnamespace('auth') IS NULL THEN
        RAISE EXCEPTION 'schema auth is missing';
    END IF;
    IF to_regclass('auth.users') IS NULL THEN
        RAISE EXCEPTION 'table auth.users is missing';
    END IF;
    IF to_regprocedure('auth.uid()') IS NULL THEN
        RAISE EXCEPTION 'function auth.uid() is missing';
    END IF;
    IF (SELECT provolatile FROM pg_catalog.pg_proc WHERE oid = to_regprocedure('auth.uid()')) <> 's' THEN
        RAISE EXCEPTION 'function auth.uid() must be STABLE';
    END IF;
    FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            RAISE EXCEPTION 'role % is missing', role_name;
        END IF;
    END LOOP;
END
$verify$;
