-- Undo 20250131000006_audit_log: triggers off every audited table, then policies, functions
-- and the log itself (its rows go with it; archive them first if they matter).
DO $triggers$
DECLARE
    target regclass;
    operation text;
BEGIN
    FOR target IN
        SELECT t::regclass
          FROM unnest(ARRAY[
              'business_core.businesses', 'business_core.user_profiles', 'business_core.user_roles',
              'business_core.business_settings', 'business_core.customers', 'business_core.invoices',
              'business_hs.work_orders', 'business_rest.menu_items', 'business_rest.reservations',
              'business_auto.vehicles', 'business_auto.repair_orders',
              'business_ret.products', 'business_ret.inventory'
          ]) AS t
    LOOP
        FOREACH operation IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER %I ON %s', 'audit_' || operation, target);
        END LOOP;
    END LOOP;
END
$triggers$;

REVOKE ALL ON business_core.audit_log FROM authenticated, service_role;
DROP POLICY service_role_all ON business_core.audit_log;
DROP POLICY tenant_isolation ON business_core.audit_log;
DROP FUNCTION business_core.enable_audit(regclass, name);
DROP FUNCTION business_core.audit_rows();
DROP FUNCTION business_core.audit_row_key(jsonb, text[]);
DROP TABLE business_core.audit_log;
