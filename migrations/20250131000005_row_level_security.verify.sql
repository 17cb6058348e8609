-- Verify 20250131000005_row_level_security: RLS on and both policies present on every business table.
DO $verify$
DECLARE
    name_ text;
BEGIN
    IF to_regprocedure('business_core.current_business_ids()') IS NULL THEN
        RAISE EXCEPTION 'function business_core.current_business_ids() is missing';
    END IF;
    IF NOT (SELECT prosecdef FROM pg_catalog.pg_proc WHERE oid = to_regprocedure('business_core.current_business_ids()')) THEN
        RAISE EXCEPTION 'function business_core.current_business_ids() must be SECURITY DEFINER (its policies would recurse)';
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
        IF NOT (SELECT relrowsecurity FROM pg_catalog.pg_class WHERE oid = to_regclass(name_)) THEN
            RAISE EXCEPTION 'row-level security is not enabled on %', name_;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid = to_regclass(name_) AND polname = 'tenant_isolation') THEN
            RAISE EXCEPTION 'policy tenant_isolation is missing on %', name_;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid = to_regclass(name_) AND polname = 'service_role_all') THEN
            RAISE EXCEPTION 'policy service_role_all is missing on %', name_;
        END IF;
    END LOOP;
    IF NOT has_table_privilege('authenticated', 'business_hs.work_orders', 'INSERT') THEN
        RAISE EXCEPTION 'role authenticated lacks INSERT on business_hs.work_orders';
    END IF;
END
$verify$;
