-- Verify 20250131000006_audit_log: the log exists and every business table has its four
-- enabled audit triggers calling business_core.audit_rows().
DO $verify$
DECLARE
    name_ text;
    missing text;
BEGIN
    IF to_regclass('business_core.audit_log') IS NULL THEN
        RAISE EXCEPTION 'table business_core.audit_log is missing';
    END IF;
    IF to_regprocedure('business_core.audit_rows()') IS NULL THEN
        RAISE EXCEPTION 'function business_core.audit_rows() is missing';
    END IF;
    FOREACH name_ IN ARRAY ARRAY[
        'business_core.businesses', 'business_core.user_profiles', 'business_core.user_roles',
        'business_core.business_settings', 'business_core.customers', 'business_core.invoices',
        'business_hs.work_orders', 'business_rest.menu_items', 'business_rest.reservations',
        'business_auto.vehicles', 'business_auto.repair_orders',
        'business_ret.products', 'business_ret.inventory'
    ] LOOP
        IF to_regclass(name_) IS NULL THEN
            RAISE EXCEPTION 'table % is missing', name_;
        END IF;
        SELECT string_agg(wanted, ', ') INTO missing
          FROM unnest(ARRAY['audit_insert', 'audit_update', 'audit_delete', 'audit_truncate']) AS wanted
         WHERE NOT EXISTS (
               SELECT 1 FROM pg_catalog.pg_trigger AS t
                WHERE t.tgrelid = to_regclass(name_) AND t.tgname = wanted
                  AND t.tgenabled <> 'D'
                  AND t.tgfoid = 'business_core.audit_rows()'::regprocedure);
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'table % lacks enabled audit trigger(s) %', name_, missing;
        END IF;
    END LOOP;
END
$verify$;
