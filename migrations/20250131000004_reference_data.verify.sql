-- Verify 20250131000004_reference_data: reference rows present, default-settings trigger enabled.
DO $verify$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(code::text, ', ') INTO missing
      FROM unnest(enum_range(NULL::business_core.industry_type)) AS code
     WHERE code NOT IN (SELECT t.code FROM business_core.industry_types AS t);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'business_core.industry_types lacks %', missing;
    END IF;

    SELECT string_agg(code, ', ') INTO missing
      FROM unnest(ARRAY['owner', 'admin', 'manager', 'technician', 'staff', 'viewer']) AS code
     WHERE code NOT IN (SELECT r.code FROM business_core.roles AS r);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'business_core.roles lacks %', missing;
    END IF;

    IF (SELECT count(*) FROM business_core.setting_defaults) < 8 THEN
        RAISE EXCEPTION 'business_core.setting_defaults holds fewer than the 8 default settings';
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger
                    WHERE tgrelid = 'business_core.businesses'::regclass
                      AND tgname = 'insert_default_settings' AND tgenabled <> 'D') THEN
        RAISE EXCEPTION 'trigger insert_default_settings on business_core.businesses is missing or disabled';
    END IF;
END
$verify$;
