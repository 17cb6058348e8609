-- {version}_{name}: what this migration changes and why.
--
-- The runner wraps this file in one transaction with lock_timeout and statement_timeout set;
-- do not write BEGIN/COMMIT. A file holding CREATE INDEX CONCURRENTLY (or anything else that
-- cannot run in a transaction) is run statement by statement outside one: keep such
-- statements in a file of their own, written with IF NOT EXISTS.

SELECT 1;  -- replace with the migration's SQL
