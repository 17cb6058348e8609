-- Verify 20250131000007_core_indexes: each index exists and is valid (a failed concurrent
-- build leaves an index that exists but has indisvalid = false and is never used).
DO $verify$
DECLARE
    name_ text;
BEGIN
    FOREACH name_ IN ARRAY ARRAY[
        'business_core.user_profiles_business_id_idx', 'business_core.user_roles_business_id_idx',
        'business_core.invoices_business_id_customer_id_idx', 'business_core.invoices_business_id_status_due_at_idx',
        'business_core.customers_search_idx', 'business_core.audit_log_occurred_at_brin'
    ] LOOP
        IF to_regclass(name_) IS NULL THEN
            RAISE EXCEPTION 'index % is missing', name_;
        END IF;
        IF NOT (SELECT indisvalid AND indisready FROM pg_catalog.pg_index WHERE indexrelid = to_regclass(name_)) THEN
            RAISE EXCEPTION 'index % is INVALID (a concurrent build failed); drop it and apply again', name_;
        END IF;
    END LOOP;
END
$verify$;
