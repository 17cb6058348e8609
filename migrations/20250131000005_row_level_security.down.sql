-- Undo 20250131000005_row_level_security: policies and RLS off, grants revoked, function dropped.
DO $policies$
DECLARE
    target regclass;
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
        EXECUTE format('DROP POLICY service_role_all ON %s', target);
        EXECUTE format('DROP POLICY tenant_isolation ON %s', target);
        EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', target);
    END LOOP;
END
$policies$;

REVOKE ALL ON ALL TABLES IN SCHEMA
    business_core, business_hs, business_rest, business_auto, business_ret
    FROM anon, authenticated, service_role;
REVOKE USAGE ON SCHEMA business_core FROM anon;
REVOKE USAGE ON SCHEMA business_core, business_hs, business_rest, business_auto, business_ret
    FROM authenticated, service_role;
DROP FUNCTION business_core.current_business_ids();
