-- Audit system: every row written to a business table is recorded in business_core.audit_log
-- (which business, which row, before and after, who, in which transaction). Reports of what
-- changed after a point-in-time-restore point read it, so no row change may escape it.

CREATE TABLE business_core.audit_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_schema text        NOT NULL,
    table_name   text        NOT NULL,
    operation    text        NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    business_id  uuid,       -- no foreign key: the history of a deleted business must survive it
    row_pk       text,       -- primary-key value(s), comma-separated in key order; NULL for TRUNCATE
    old_row      jsonb,
    new_row      jsonb,
    actor        uuid        DEFAULT auth.uid(),
    -- txid_current() rather than pg_current_xact_id(): a bigint compares with the epoch-extended
    -- ids of txid_snapshot functions and needs no xid8 casts in reports.
    txid         bigint      NOT NULL DEFAULT txid_current()
);
COMMENT ON TABLE business_core.audit_log IS 'One row per row inserted, updated or deleted in a business table (one per TRUNCATE).';

-- One function serves every audited table. Statement-level triggers with transition tables
-- turn a statement touching N rows (a bulk COPY included) into one set-based INSERT ... SELECT
-- instead of N trigger calls. PostgreSQL allows a transition table only on a trigger with a
-- single event, hence one trigger per operation. plpgsql compiles a trigger function once per
-- trigger, so to_jsonb(n) is planned for each table's row type.
-- Arguments: TG_ARGV[0] the tenant column, TG_ARGV[1:] the primary-key columns.
-- SECURITY DEFINER: members may write business rows but hold no privilege on audit_log.
CREATE FUNCTION business_core.audit_rows() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    tenant_column text   := TG_ARGV[0];
    key_columns   text[] := TG_ARGV[1:];
    actor_id      uuid   := auth.uid();
    tx            bigint := txid_current();
BEGIN
    -- OFFSET 0 below keeps each subquery from being pulled up into the outer query, which
    -- would copy to_jsonb(row) into every place doc is used and build the document three
    -- times per row (measured: the audit cost doubles).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO business_core.audit_log
               (table_schema, table_name, operation, business_id, row_pk, new_row, actor, txid)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, (r.doc ->> tenant_column)::uuid,
               business_core.audit_row_key(r.doc, key_columns), r.doc, actor_id, tx
          FROM (SELECT to_jsonb(n) AS doc FROM new_rows AS n OFFSET 0) AS r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO business_core.audit_log
               (table_schema, table_name, operation, business_id, row_pk, old_row, actor, txid)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, (r.doc ->> tenant_column)::uuid,
               business_core.audit_row_key(r.doc, key_columns), r.doc, actor_id, tx
          FROM (SELECT to_jsonb(o) AS doc FROM old_rows AS o OFFSET 0) AS r;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Transition tables carry no row pairing, so old and new images are matched on the
        -- primary key. An update that changes a key yields two rows (old only, new only).
        INSERT INTO business_core.audit_log
               (table_schema, table_name, operation, business_id, row_pk, old_row, new_row, actor, txid)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
               coalesce(new_image.doc ->> tenant_column, old_image.doc ->> tenant_column)::uuid,
               coalesce(new_image.row_key, old_image.row_key), old_image.doc, new_image.doc, actor_id, tx
          FROM (SELECT business_core.audit_row_key(d.doc, key_columns) AS row_key, d.doc
                  FROM (SELECT to_jsonb(o) AS doc FROM old_rows AS o OFFSET 0) AS d) AS old_image
          FULL JOIN (SELECT business_core.audit_row_key(d.doc, key_columns) AS row_key, d.doc
                       FROM (SELECT to_jsonb(n) AS doc FROM new_rows AS n OFFSET 0) AS d) AS new_image
            ON new_image.row_key = old_image.row_key;
    ELSE
        -- TRUNCATE has no transition tables: record that the table was emptied.
        INSERT INTO business_core.audit_log (table_schema, table_name, operation, actor, txid)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, actor_id, tx);
    END IF;
    RETURN NULL;
END
$$;

-- The row's primary key as text, its columns comma-separated in key order. A single
-- expression so the planner inlines it (no per-row function call); concat_ws skips the NULLs
-- of unused slots (primary-key columns are never NULL), so keys of up to four columns fit,
-- which enable_audit checks. STABLE, not IMMUTABLE: concat_ws is STABLE, and a function
-- declared stricter than its body is not inlined.
CREATE FUNCTION business_core.audit_row_key(doc jsonb, key_columns text[]) RETURNS text
    LANGUAGE sql STABLE
    AS $$
        SELECT concat_ws(',', doc ->> key_columns[1], doc ->> key_columns[2],
                              doc ->> key_columns[3], doc ->> key_columns[4])
    $$;

-- Attach the four audit triggers to a table; later migrations call it for new business tables.
-- The key columns are read from the table's primary key so they cannot drift from it.
CREATE FUNCTION business_core.enable_audit(target regclass, tenant_column name DEFAULT 'business_id')
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    key_columns text;
    key_count   integer;
    operation   text;
BEGIN
    SELECT string_agg(quote_literal(a.attname), ', ' ORDER BY k.ord), count(*) INTO key_columns, key_count
      FROM pg_constraint AS c
     CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
     WHERE c.conrelid = target AND c.contype = 'p';
    IF key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key; audit rows could not name their row', target;
    END IF;
    IF key_count > 4 THEN
        RAISE EXCEPTION 'table % has a primary key of % columns; business_core.audit_row_key handles up to 4', target, key_count;
    END IF;
    FOREACH operation IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s TABLE AS %I'
            ' FOR EACH STATEMENT EXECUTE FUNCTION business_core.audit_rows(%L, %s)',
            'audit_' || operation, upper(operation), target,
            CASE operation WHEN 'delete' THEN 'OLD' WHEN 'insert' THEN 'NEW' ELSE 'OLD TABLE AS old_rows NEW' END,
            CASE operation WHEN 'delete' THEN 'old_rows' ELSE 'new_rows' END,
            tenant_column, key_columns);
    END LOOP;
    EXECUTE format(
        'CREATE TRIGGER audit_truncate AFTER TRUNCATE ON %s'
        ' FOR EACH STATEMENT EXECUTE FUNCTION business_core.audit_rows(%L, %s)',
        target, tenant_column, key_columns);
END
$$;

SELECT business_core.enable_audit('business_core.businesses', 'id');
SELECT business_core.enable_audit('business_core.user_profiles');
SELECT business_core.enable_audit('business_core.user_roles');
SELECT business_core.enable_audit('business_core.business_settings');
SELECT business_core.enable_audit('business_core.customers');
SELECT business_core.enable_audit('business_core.invoices');
SELECT business_core.enable_audit('business_hs.work_orders');
SELECT business_core.enable_audit('business_rest.menu_items');
SELECT business_core.enable_audit('business_rest.reservations');
SELECT business_core.enable_audit('business_auto.vehicles');
SELECT business_core.enable_audit('business_auto.repair_orders');
SELECT business_core.enable_audit('business_ret.products');
SELECT business_core.enable_audit('business_ret.inventory');

-- Members read their own businesses' history; nobody but the owner writes it directly.
ALTER TABLE business_core.audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON business_core.audit_log FOR SELECT TO authenticated
    USING (business_id IN (SELECT business_core.current_business_ids()));
CREATE POLICY service_role_all ON business_core.audit_log FOR SELECT TO service_role USING (true);
GRANT SELECT ON business_core.audit_log TO authenticated, service_role;
