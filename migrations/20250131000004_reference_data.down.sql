-- Undo 20250131000004_reference_data: the trigger, its function and the reference rows.
-- Rows still referenced by business data are kept: a schema rollback of a populated database
-- goes on to 20250131000002's down, which drops the referencing tables and these with them,
-- whereas deleting them here would fail on the foreign keys and stop the rollback halfway.
-- On an empty database (the round trip the tests run) every row goes.
DROP TRIGGER insert_default_settings ON business_core.businesses;
DROP FUNCTION business_core.insert_default_settings();
DELETE FROM business_core.setting_defaults AS d
 WHERE d.key IN ('currency', 'locale', 'invoice.prefix', 'invoice.payment_terms_days', 'tax.rate_percent',
                 'work_orders.default_priority', 'notifications.email', 'notifications.sms')
   AND NOT EXISTS (SELECT 1 FROM business_core.business_settings AS s WHERE s.key = d.key);
DELETE FROM business_core.roles AS r
 WHERE r.code IN ('owner', 'admin', 'manager', 'technician', 'staff', 'viewer')
   AND NOT EXISTS (SELECT 1 FROM business_core.user_roles AS u WHERE u.role = r.code);
DELETE FROM business_core.industry_types AS t
 WHERE t.code IN ('home_services', 'restaurant', 'automotive', 'retail')
   AND NOT EXISTS (SELECT 1 FROM business_core.businesses AS b WHERE b.industry = t.code);
