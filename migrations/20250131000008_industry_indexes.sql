-- Performance indexes on the industry tables, built CONCURRENTLY (see 20250131000007 for
-- why this file holds nothing else). Composite (business_id, x) indexes serve both the
-- tenant filter every policy adds and the composite foreign keys.

-- Work orders: the bulk table. The customer index backs the foreign key to customers (and
-- ON DELETE checks); the status/date index serves "this business's scheduled jobs by date".
CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_business_id_customer_id_idx
    ON business_hs.work_orders (business_id, customer_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_business_id_status_scheduled_for_idx
    ON business_hs.work_orders (business_id, status, scheduled_for);

-- The dispatch board across all businesses: only open jobs, a small fraction of the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS work_orders_open_scheduled_for_idx
    ON business_hs.work_orders (scheduled_for)
    WHERE status IN ('scheduled', 'in_progress');

CREATE INDEX CONCURRENTLY IF NOT EXISTS reservations_business_id_reserved_for_idx
    ON business_rest.reservations (business_id, reserved_for);

CREATE INDEX CONCURRENTLY IF NOT EXISTS reservations_business_id_customer_id_idx
    ON business_rest.reservations (business_id, customer_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS vehicles_business_id_customer_id_idx
    ON business_auto.vehicles (business_id, customer_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS repair_orders_business_id_vehicle_id_idx
    ON business_auto.repair_orders (business_id, vehicle_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS repair_orders_business_id_status_idx
    ON business_auto.repair_orders (business_id, status);
