-- Row-level security: a signed-in user (role authenticated, auth.uid() set from the JWT) sees
-- and writes only rows of the businesses they are a member of; service_role (back office,
-- onboarding) sees everything through an explicit policy rather than the BYPASSRLS attribute,
-- which only a superuser may grant. The table owner (the migrating login, the seed loader) is
-- not subject to RLS because no table uses FORCE ROW LEVEL SECURITY.

-- Membership lookup for the policies. SECURITY DEFINER: it reads user_profiles as the owner,
-- so the policy on user_profiles can call it without recursing into itself (42P17, infinite
-- recursion detected in policy). STABLE + the IN (SELECT ...) form make the planner run it
-- once per statement as a hashed subplan, not once per row.
-- ROWS 5: a user belongs to a handful of businesses, not the planner's default 1,000.
CREATE FUNCTION business_core.current_business_ids() RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER ROWS 5
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT p.business_id FROM business_core.user_profiles AS p WHERE p.user_id = auth.uid()
    $$;
COMMENT ON FUNCTION business_core.current_business_ids() IS 'Businesses the requesting user (auth.uid()) is a member of.';
REVOKE EXECUTE ON FUNCTION business_core.current_business_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION business_core.current_business_ids() TO authenticated, service_role;

GRANT USAGE ON SCHEMA business_core, business_hs, business_rest, business_auto, business_ret
    TO authenticated, service_role;
GRANT USAGE ON SCHEMA business_core TO anon;

-- Reference data is public knowledge.
GRANT SELECT ON business_core.industry_types, business_core.roles, business_core.setting_defaults
    TO anon, authenticated, service_role;

-- Members read their business and may edit it, its settings and its operational data;
-- creating or closing a business and managing memberships goes through service_role.
GRANT SELECT, UPDATE ON business_core.businesses, business_core.business_settings TO authenticated;
GRANT SELECT ON business_core.user_profiles, business_core.user_roles TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    business_core.customers, business_core.invoices,
    business_hs.work_orders,
    business_rest.menu_items, business_rest.reservations,
    business_auto.vehicles, business_auto.repair_orders,
    business_ret.products, business_ret.inventory
    TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA
    business_core, business_hs, business_rest, business_auto, business_ret
    TO service_role;

-- The same two policies on every business table; businesses keys on its own id.
DO $policies$
DECLARE
    target regclass;
    tenant_column name;
BEGIN
    FOR target, tenant_column IN
        SELECT t::regclass, CASE WHEN t = 'business_core.businesses' THEN 'id' ELSE 'business_id' END
          FROM unnest(ARRAY[
              'business_core.businesses', 'business_core.user_profiles', 'business_core.user_roles',
              'business_core.business_settings', 'business_core.customers', 'business_core.invoices',
              'business_hs.work_orders', 'business_rest.menu_items', 'business_rest.reservations',
              'business_auto.vehicles', 'business_auto.repair_orders',
              'business_ret.products', 'business_ret.inventory'
          ]) AS t
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %1$s FOR ALL TO authenticated'
            ' USING (%2$I IN (SELECT business_core.current_business_ids()))'
            ' WITH CHECK (%2$I IN (SELECT business_core.current_business_ids()))',
            target, tenant_column);
        EXECUTE format(
            'CREATE POLICY service_role_all ON %s FOR ALL TO service_role USING (true) WITH CHECK (true)',
            target);
    END LOOP;
END
$policies$;
