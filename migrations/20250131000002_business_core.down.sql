-- Undo 20250131000002_business_core: tables in reverse dependency order, then the type and the
-- schemas. No CASCADE anywhere: an object added outside the migrations stops the rollback
-- with an error naming it, rather than being dropped unseen.
DROP TABLE business_core.invoices;
DROP TABLE business_core.customers;
DROP TABLE business_core.business_settings;
DROP TABLE business_core.user_roles;
DROP TABLE business_core.user_profiles;
DROP TABLE business_core.businesses;
DROP TABLE business_core.setting_defaults;
DROP TABLE business_core.roles;
DROP TABLE business_core.industry_types;
DROP TYPE business_core.industry_type;
DROP SCHEMA business_ret;
DROP SCHEMA business_auto;
DROP SCHEMA business_rest;
DROP SCHEMA business_hs;
DROP SCHEMA business_core;
