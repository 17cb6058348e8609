-- Thorbis Business OS core: one schema per industry, the shared tables every business uses,
-- and the reference tables (filled by 20250131000004_reference_data).
-- Every business-owned row carries business_id; row-level security (20250131000005) keys on it.

CREATE SCHEMA business_core;
CREATE SCHEMA business_hs;
CREATE SCHEMA business_rest;
CREATE SCHEMA business_auto;
CREATE SCHEMA business_ret;
COMMENT ON SCHEMA business_core IS 'Tables shared by every business: tenants, people, customers, billing, audit.';
COMMENT ON SCHEMA business_hs IS 'Home services: field work orders.';
COMMENT ON SCHEMA business_rest IS 'Restaurants: menus and reservations.';
COMMENT ON SCHEMA business_auto IS 'Automotive: customer vehicles and repair orders.';
COMMENT ON SCHEMA business_ret IS 'Retail: products and stock levels.';

-- Adding a value later is ALTER TYPE ... ADD VALUE, which cannot run inside a transaction
-- block on PostgreSQL 11 and older and cannot be used in the same transaction on any version:
-- give it a migration of its own.
CREATE TYPE business_core.industry_type AS ENUM ('home_services', 'restaurant', 'automotive', 'retail');

-- Reference tables ---------------------------------------------------------------------------

CREATE TABLE business_core.industry_types (
    code        business_core.industry_type PRIMARY KEY,
    label       text NOT NULL,
    schema_name name NOT NULL UNIQUE
);

CREATE TABLE business_core.roles (
    code        text     PRIMARY KEY CHECK (code ~ '^[a-z_]+$'),
    label       text     NOT NULL,
    rank        smallint NOT NULL UNIQUE  -- lower rank, more authority
);

CREATE TABLE business_core.setting_defaults (
    key         text  PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9_.]*$'),
    value       jsonb NOT NULL,
    description text  NOT NULL
);

-- Tenants and people -------------------------------------------------------------------------

CREATE TABLE business_core.businesses (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL CHECK (btrim(name) <> ''),
    slug        text        NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    industry    business_core.industry_type NOT NULL REFERENCES business_core.industry_types (code),
    email       text,
    phone       text,
    timezone    text        NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A profile is a user's membership of one business; a user may belong to several.
CREATE TABLE business_core.user_profiles (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    business_id uuid        NOT NULL REFERENCES business_core.businesses (id) ON DELETE CASCADE,
    full_name   text        NOT NULL,
    email       text        NOT NULL,
    phone       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, business_id)
);

-- The composite foreign key makes a role impossible without a membership of that business.
CREATE TABLE business_core.user_roles (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL,
    business_id uuid        NOT NULL,
    role        text        NOT NULL REFERENCES business_core.roles (code),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, business_id, role),
    FOREIGN KEY (user_id, business_id)
        REFERENCES business_core.user_profiles (user_id, business_id) ON DELETE CASCADE
);

CREATE TABLE business_core.business_settings (
    business_id uuid        NOT NULL REFERENCES business_core.businesses (id) ON DELETE CASCADE,
    key         text        NOT NULL REFERENCES business_core.setting_defaults (key),
    value       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (business_id, key)
);

-- Customers and billing ----------------------------------------------------------------------

-- UNIQUE (business_id, id) exists for the composite foreign keys below: a row may only point
-- at a customer of its own business, so a bug in one tenant's code cannot link across tenants.
CREATE TABLE business_core.customers (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id uuid        NOT NULL REFERENCES business_core.businesses (id) ON DELETE CASCADE,
    name        text        NOT NULL CHECK (btrim(name) <> ''),
    email       text,
    phone       text,
    notes       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (business_id, id)
);

CREATE TABLE business_core.invoices (
    id          uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id uuid          NOT NULL REFERENCES business_core.businesses (id) ON DELETE CASCADE,
    customer_id uuid          NOT NULL,
    number      text          NOT NULL,
    status      text          NOT NULL DEFAULT 'draft'
                              CHECK (status IN ('draft', 'sent', 'paid', 'overdue', 'void')),
    total       numeric(12,2) NOT NULL CHECK (total >= 0),
    issued_at   timestamptz,
    due_at      timestamptz,
    paid_at     timestamptz,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (business_id, number),
    FOREIGN KEY (business_id, customer_id) REFERENCES business_core.customers (business_id, id),
    CHECK (status = 'draft' OR issued_at IS NOT NULL),
    CHECK ((status = 'paid') = (paid_at IS NOT NULL)),
    CHECK (due_at IS NULL OR issued_at IS NULL OR due_at >= issued_at)
);
