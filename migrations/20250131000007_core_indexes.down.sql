-- Undo 20250131000007_core_indexes; CONCURRENTLY so rollback does not block writers either.
DROP INDEX CONCURRENTLY IF EXISTS business_core.audit_log_occurred_at_brin;
DROP INDEX CONCURRENTLY IF EXISTS business_core.customers_search_idx;
DROP INDEX CONCURRENTLY IF EXISTS business_core.invoices_business_id_status_due_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS business_core.invoices_business_id_customer_id_idx;
DROP INDEX CONCURRENTLY IF EXISTS business_core.user_roles_business_id_idx;
DROP INDEX CONCURRENTLY IF EXISTS business_core.user_profiles_business_id_idx;
