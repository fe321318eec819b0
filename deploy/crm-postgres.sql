-- Sample CRM on PostgreSQL (15+): the reference set-up of design.md §1,
-- deliberately unlike the ERP (deploy/erp-mariadb.sql): uuid keys, enum
-- types with the CRM's own words (`stage`), numeric and timestamptz.
-- Used by deploy/crm-erp.toml and tests/table_maps.rs.

CREATE TYPE account_stage AS ENUM ('lead', 'prospect', 'customer', 'churned');
CREATE TYPE opportunity_stage AS ENUM ('open', 'proposal', 'won', 'lost');
CREATE TYPE return_status AS ENUM ('requested', 'approved', 'rejected', 'resolved');

CREATE TABLE accounts (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL,
    stage              account_stage NOT NULL DEFAULT 'lead',
    -- contact fields: owned by the CRM
    email              text,
    phone              text,
    billing_city       text,
    -- owned by the ERP (two-way ownership is not carried yet)
    credit_limit       numeric(12, 2),
    payment_terms_days integer,
    tax_id             text,
    -- the number the ERP gives the customer (not carried back yet)
    erp_customer_no    bigint,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id uuid NOT NULL REFERENCES accounts (id),
    full_name  text NOT NULL,
    email      text,
    phone      text,
    is_primary boolean NOT NULL DEFAULT false
);

CREATE TABLE opportunities (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id       uuid NOT NULL REFERENCES accounts (id),
    title            text NOT NULL,
    stage            opportunity_stage NOT NULL DEFAULT 'open',
    amount           numeric(14, 2) NOT NULL DEFAULT 0,
    currency         char(3) NOT NULL DEFAULT 'EUR',
    close_date       date,
    -- fulfilment as the ERP reports it (not carried back yet)
    erp_order_status text,
    shipped_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opportunity_lines (
    opportunity_id uuid NOT NULL REFERENCES opportunities (id),
    line_no        integer NOT NULL,
    product_sku    text NOT NULL,
    quantity       numeric(12, 3) NOT NULL,
    unit_price     numeric(14, 2) NOT NULL,
    PRIMARY KEY (opportunity_id, line_no)
);

-- stock per product and warehouse, from the ERP
CREATE TABLE product_stock (
    sku        text NOT NULL,
    warehouse  text NOT NULL,
    on_hand    numeric(12, 3) NOT NULL,
    reserved   numeric(12, 3) NOT NULL DEFAULT 0,
    updated_at timestamptz,
    PRIMARY KEY (sku, warehouse)
);

-- invoices and their payment, from the ERP
CREATE TABLE invoices (
    erp_invoice_no bigint PRIMARY KEY,
    erp_order_no   bigint NOT NULL,
    amount         numeric(14, 2) NOT NULL,
    status         text NOT NULL,
    issued_on      date,
    paid_at        timestamptz
);

CREATE TABLE returns (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    opportunity_id uuid NOT NULL REFERENCES opportunities (id),
    reason         text NOT NULL,
    amount         numeric(14, 2) NOT NULL,
    status         return_status NOT NULL DEFAULT 'requested',
    resolution     text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);
