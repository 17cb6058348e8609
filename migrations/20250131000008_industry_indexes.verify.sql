-- Verify 20250131000008_industry_indexes: each index exists and is valid.
DO $verify$
DECLARE
    name_ text;
BEGIN
    FOREACH name_ IN ARRAY ARRAY[
        'business_hs.work_orders_business_id_customer_id_idx',
        'business_hs.work_orders_business_id_status_scheduled_for_idx',
        'business_hs.work_orders_open_scheduled_for_idx',
        'business_rest.reservations_business_id_reserved_for_idx',
        'business_rest.reservations_business_id_customer_id_idx',
        'business_auto.vehicles_business_id_customer_id_idx',
        'business_auto.repair_orders_business_id_vehicle_id_idx',
        'business_auto.repair_orders_business_id_status_idx'
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
