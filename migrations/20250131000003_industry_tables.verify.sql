-- Verify 20250131000003_industry_tables: every industry table exists with a NOT NULL business_id.
DO $verify$
DECLARE
    name_ text;
BEGIN
    FOREACH name_ IN ARRAY ARRAY[
        'business_hs.work_orders', 'business_rest.menu_items', 'business_rest.reservations',
        'business_auto.vehicles', 'business_auto.repair_orders',
        'business_ret.products', 'business_ret.inventory'
    ] LOOP
        IF to_regclass(name_) IS NULL THEN
            RAISE EXCEPTION 'table % is missing', name_;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                        WHERE attrelid = to_regclass(name_) AND attname = 'business_id'
                          AND attnotnull AND NOT attisdropped) THEN
            RAISE EXCEPTION 'table % lacks a NOT NULL business_id column', name_;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conrelid = 'business_hs.work_orders'::regclass AND contype = 'c'
                      AND pg_get_constraintdef(oid) LIKE '%scheduled%in_progress%completed%cancelled%') THEN
        RAISE EXCEPTION 'business_hs.work_orders lacks its status CHECK constraint';
    END IF;
END
$verify$;
