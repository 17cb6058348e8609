-- Undo 20250131000001_auth_compat.
-- The roles anon, authenticated and service_role are NOT dropped: they are cluster-global and
-- other databases of the cluster may still use them (DROP ROLE would fail while any database
-- holds a privilege or object of theirs). Only this database's part is undone: the grants go
-- with the objects they were made on, and the schema is dropped without CASCADE so that an
-- object someone added by hand stops the rollback instead of vanishing.
REVOKE ALL ON auth.users FROM service_role;
REVOKE USAGE ON SCHEMA auth FROM anon, authenticated, service_role;
DROP FUNCTION auth.uid();
DROP TABLE auth.users;
DROP SCHEMA auth;
