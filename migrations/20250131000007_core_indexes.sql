-- Performance indexes on business_core, built CONCURRENTLY so a live database keeps taking
-- writes. CREATE INDEX CONCURRENTLY cannot run inside a transaction block: the runner sees
-- it when parsing and runs this file statement by statement in autocommit. A failed build
-- leaves an INVALID index behind, which the runner drops; IF NOT EXISTS makes a rerun skip
-- the indexes already built. Keep ordinary DDL out of this file.
-- Leading business_id columns of UNIQUE constraints (customers, invoices, business_settings,
-- user_roles' membership key) already index those foreign keys; they are not repeated here.

-- Policies and per-business listings filter memberships by business.
CREATE INDEX CONCURRENTLY IF NOT EXISTS user_profiles_business_id_idx
    ON business_core.user_profiles (business_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS user_roles_business_id_idx
    ON business_core.user_roles (business_id);

-- The composite foreign key to customers, and a customer's invoice history.
CREATE INDEX CONCURRENTLY IF NOT EXISTS invoices_business_id_customer_id_idx
    ON business_core.invoices (business_id, customer_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS invoices_business_id_status_due_at_idx
    ON business_core.invoices (business_id, status, due_at);

-- Customer search box. The expression must be repeated verbatim in queries for the index to
-- be used; 'simple' keeps names and e-mail addresses unstemmed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_search_idx
    ON business_core.customers
    USING gin (to_tsvector('simple', coalesce(name, '') || ' ' || coalesce(email, '')));

-- The log is append-only and occurred_at grows with it, so a BRIN index (a few pages for
-- millions of rows, next to no cost per insert) answers "what changed since the restore
-- point" without slowing the audit triggers the way a B-tree would.
CREATE INDEX CONCURRENTLY IF NOT EXISTS audit_log_occurred_at_brin
    ON business_core.audit_log USING brin (occurred_at);
