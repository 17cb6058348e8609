-- Industry tables: at least one per industry schema. Each carries business_id, and every
-- reference to another business-owned row is a composite (business_id, id) foreign key so
-- rows of two tenants can never point at each other.
-- A table whose composite key points at a customer, vehicle or product has no separate
-- foreign key to businesses: the composite one already proves the business exists (the
-- parent row has one), and its ON DELETE CASCADE carries a business's deletion down the
-- chain. Each foreign key costs a lookup per inserted row, which on the million-row
-- work_orders table is seconds of every bulk load.

-- Home services -------------------------------------------------------------------------------
-- Work orders are the bulk table (about 1,000 per business). Every industry dispatches field
-- jobs (restaurants book equipment repairs, retailers installations), so any business may
-- hold them; home-services businesses hold the most.
CREATE TABLE business_hs.work_orders (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id   uuid        NOT NULL,
    customer_id   uuid        NOT NULL,
    status        text        NOT NULL DEFAULT 'scheduled'
                              CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled')),
    priority      text        NOT NULL DEFAULT 'normal'
                              CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    scheduled_for timestamptz,
    completed_at  timestamptz,
    description   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (business_id, customer_id) REFERENCES business_core.customers (business_id, id) ON DELETE CASCADE,
    CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);

-- Restaurants ---------------------------------------------------------------------------------
CREATE TABLE business_rest.menu_items (
    id          uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id uuid          NOT NULL REFERENCES business_core.businesses (id) ON DELETE CASCADE,
    name        text          NOT NULL CHECK (btrim(name) <> ''),
    category    text          NOT NULL DEFAULT 'main',
    price       numeric(10,2) NOT NULL CHECK (price >= 0),
    available   boolean       NOT NULL DEFAULT true,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (business_id, name)
);

CREATE TABLE business_rest.reservations (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id  uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    party_size   smallint    NOT NULL CHECK (party_size BETWEEN 1 AND 100),
    reserved_for timestamptz NOT NULL,
    status       text        NOT NULL DEFAULT 'booked'
                             CHECK (status IN ('booked', 'seated', 'completed', 'cancelled', 'no_show')),
    notes        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (business_id, customer_id) REFERENCES business_core.customers (business_id, id) ON DELETE CASCADE
);

-- Automotive ----------------------------------------------------------------------------------
CREATE TABLE business_auto.vehicles (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id   uuid        NOT NULL,
    customer_id   uuid        NOT NULL,
    vin           text        NOT NULL CHECK (vin ~ '^[A-HJ-NPR-Z0-9]{17}$'),  -- no I, O or Q in a VIN
    make          text        NOT NULL,
    model         text        NOT NULL,
    model_year    smallint    CHECK (model_year BETWEEN 1886 AND 2100),
    license_plate text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (business_id, vin),
    UNIQUE (business_id, id),
    FOREIGN KEY (business_id, customer_id) REFERENCES business_core.customers (business_id, id) ON DELETE CASCADE
);

CREATE TABLE business_auto.repair_orders (
    id          uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id uuid         NOT NULL,
    vehicle_id  uuid         NOT NULL,
    status      text         NOT NULL DEFAULT 'open'
                             CHECK (status IN ('open', 'in_progress', 'waiting_parts', 'completed', 'cancelled')),
    odometer    integer      CHECK (odometer >= 0),
    complaint   text         NOT NULL,
    labor_hours numeric(6,2) NOT NULL DEFAULT 0 CHECK (labor_hours >= 0),
    opened_at   timestamptz  NOT NULL DEFAULT now(),
    closed_at   timestamptz  CHECK (closed_at >= opened_at),
    FOREIGN KEY (business_id, vehicle_id) REFERENCES business_auto.vehicles (business_id, id) ON DELETE CASCADE
);

-- Retail --------------------------------------------------------------------------------------
CREATE TABLE business_ret.products (
    id          uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    business_id uuid          NOT NULL REFERENCES business_core.businesses (id) ON DELETE CASCADE,
    sku         text          NOT NULL,
    name        text          NOT NULL CHECK (btrim(name) <> ''),
    price       numeric(10,2) NOT NULL CHECK (price >= 0),
    active      boolean       NOT NULL DEFAULT true,
    created_at  timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (business_id, sku),
    UNIQUE (business_id, id)
);

CREATE TABLE business_ret.inventory (
    business_id   uuid        NOT NULL,
    product_id    uuid        NOT NULL,
    location      text        NOT NULL DEFAULT 'main',
    quantity      integer     NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    reorder_level integer     NOT NULL DEFAULT 0 CHECK (reorder_level >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (business_id, product_id, location),
    FOREIGN KEY (business_id, product_id) REFERENCES business_ret.products (business_id, id) ON DELETE CASCADE
);
