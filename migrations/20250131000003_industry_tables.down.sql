-- Undo 20250131000003_industry_tables: dependants first; the schemas belong to 20250131000002.
DROP TABLE business_ret.inventory;
DROP TABLE business_ret.products;
DROP TABLE business_auto.repair_orders;
DROP TABLE business_auto.vehicles;
DROP TABLE business_rest.reservations;
DROP TABLE business_rest.menu_items;
DROP TABLE business_hs.work_orders;
