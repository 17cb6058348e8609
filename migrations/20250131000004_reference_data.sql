-- Reference data (industries, roles, setting defaults) and the trigger that gives every new
-- business its default settings, so no code path can create a business without them.
-- ON CONFLICT DO NOTHING: the down script keeps rows still in use (see there), so applying
-- this again after a rollback of a populated database must tolerate them.

INSERT INTO business_core.industry_types (code, label, schema_name) VALUES
    ('home_services', 'Home services', 'business_hs'),
    ('restaurant',    'Restaurant',    'business_rest'),
    ('automotive',    'Automotive',    'business_auto'),
    ('retail',        'Retail',        'business_ret')
ON CONFLICT (code) DO NOTHING;

INSERT INTO business_core.roles (code, label, rank) VALUES
    ('owner',      'Owner',      10),
    ('admin',      'Administrator', 20),
    ('manager',    'Manager',    30),
    ('technician', 'Technician', 40),
    ('staff',      'Staff',      50),
    ('viewer',     'Viewer',     60)
ON CONFLICT (code) DO NOTHING;

INSERT INTO business_core.setting_defaults (key, value, description) VALUES
    ('currency',                     '"USD"',   'ISO 4217 code used on invoices'),
    ('locale',                       '"en-US"', 'Language and number format of documents'),
    ('invoice.prefix',               '"INV-"',  'Prefix of invoice numbers'),
    ('invoice.payment_terms_days',   '30',      'Days between issue and due date'),
    ('tax.rate_percent',             '0',       'Default sales tax rate'),
    ('work_orders.default_priority', '"normal"', 'Priority given to new work orders'),
    ('notifications.email',          'true',    'Send customer notifications by e-mail'),
    ('notifications.sms',            'false',   'Send customer notifications by SMS')
ON CONFLICT (key) DO NOTHING;

-- Statement-level with a transition table: one set-based INSERT however many businesses a
-- statement creates (a bulk COPY of 1,000 businesses fires it once, not 1,000 times).
-- SECURITY DEFINER so the defaults are written whatever the inserting role may do on
-- business_settings; search_path is pinned because a definer function must not resolve
-- names through the caller's path.
CREATE FUNCTION business_core.insert_default_settings() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    INSERT INTO business_core.business_settings (business_id, key, value)
    SELECT b.id, d.key, d.value
      FROM new_businesses AS b
     CROSS JOIN business_core.setting_defaults AS d
        ON CONFLICT (business_id, key) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER insert_default_settings
    AFTER INSERT ON business_core.businesses
    REFERENCING NEW TABLE AS new_businesses
    FOR EACH STATEMENT EXECUTE FUNCTION business_core.insert_default_settings();
