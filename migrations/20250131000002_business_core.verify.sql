-- Verify 20250131000002_business_core: schemas, enum and tables exist, tenant columns are NOT NULL.
DO $verify$
DECLARE
    name_ text;
    labels text[];
BEGIN
    FOREACH name_ IN ARRAY ARRAY['business_core', 'business_hs', 'business_rest', 'business_auto', 'business_ret'] LOOP
        IF to_regnamespace(name_) IS NULL THEN
            RAISE EXCEPTION 'schema % is missing', name_;
        END IF;
    END LOOP;

    IF to_regtype('business_core.industry_type') IS NULL THEN
        RAISE EXCEPTION 'type business_core.industry_type is missing';
    END IF;
    SELECT array_agg(enumlabel::text ORDER BY enumsortorder) INTO labels
      FROM pg_catalog.pg_enum WHERE enumtypid = to_regtype('business_core.industry_type');
    IF labels IS DISTINCT FROM ARRAY['home_services', 'restaurant', 'automotive', 'retail'] THEN
        RAISE EXCEPTION 'type business_core.industry_type has values %, expected home_services, restaurant, automotive, retail', labels;
    END IF;

    FOREACH name_ IN ARRAY ARRAY[
        'business_core.industry_types', 'business_core.roles', 'business_core.setting_defaults',
        'business_core.businesses', 'business_core.user_profiles', 'business_core.user_roles',
        'business_core.business_settings', 'business_core.customers', 'business_core.invoices'
    ] LOOP
        IF to_regclass(name_) IS NULL THEN
            RAISE EXCEPTION 'table % is missing', name_;
        END IF;
        IF name_ NOT IN ('business_core.industry_types', 'business_core.roles', 'business_core.setting_defaults', 'business_core.businesses')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                            WHERE attrelid = to_regclass(name_) AND attname = 'business_id'
                              AND attnotnull AND NOT attisdropped) THEN
            RAISE EXCEPTION 'table % lacks a NOT NULL business_id column', name_;
        END IF;
    END LOOP;
END
$verify$;
