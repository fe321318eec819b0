-- Sample ERP on MariaDB (10.11) / MySQL 8: the reference set-up of
-- design.md §1, deliberately unlike the CRM (deploy/crm-postgres.sql):
-- AUTO_INCREMENT numbers as primary keys, the CRM's key kept in a UNIQUE
-- column (the external key Callosum finds rows by), ENUM status codes,
-- DECIMAL and DATETIME(6). Used by deploy/crm-erp.toml and
-- tests/table_maps.rs. Statements end with `;` at the end of a line.

CREATE TABLE customers (
    customer_no        INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    crm_id             CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    name               VARCHAR(200) NOT NULL,
    -- A active, P prospect, X blocked
    status             ENUM('A', 'P', 'X') NOT NULL DEFAULT 'P',
    email              VARCHAR(254) NULL,
    phone              VARCHAR(40) NULL,
    city               VARCHAR(100) NULL,
    credit_limit       DECIMAL(12, 2) NOT NULL DEFAULT 0,
    payment_terms_days SMALLINT UNSIGNED NOT NULL DEFAULT 30,
    tax_id             VARCHAR(32) NULL,
    source_system      VARCHAR(8) NOT NULL DEFAULT 'erp',
    created_at         DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY customers_crm_id (crm_id)
) ENGINE = InnoDB;

CREATE TABLE sales_orders (
    order_no           INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    crm_opportunity_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    -- the customer's number: a lookup of crm_account_id (not carried yet)
    customer_no        INT UNSIGNED NULL,
    crm_account_id     CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    title              VARCHAR(200) NOT NULL,
    status             ENUM('draft', 'confirmed', 'shipped', 'cancelled') NOT NULL DEFAULT 'draft',
    total              DECIMAL(14, 2) NOT NULL,
    currency           CHAR(3) NOT NULL DEFAULT 'EUR',
    order_date         DATE NULL,
    source_system      VARCHAR(8) NOT NULL DEFAULT 'erp',
    created_at         DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    shipped_at         DATETIME(6) NULL,
    UNIQUE KEY sales_orders_crm_opportunity_id (crm_opportunity_id)
) ENGINE = InnoDB;

CREATE TABLE sales_order_lines (
    order_no   INT UNSIGNED NOT NULL,
    line_no    SMALLINT UNSIGNED NOT NULL,
    item_no    VARCHAR(40) NOT NULL,
    qty        DECIMAL(12, 3) NOT NULL,
    unit_price DECIMAL(14, 2) NOT NULL,
    PRIMARY KEY (order_no, line_no)
) ENGINE = InnoDB;

CREATE TABLE warehouse_stock (
    item_no        VARCHAR(40) NOT NULL,
    warehouse_code CHAR(4) NOT NULL,
    qty_on_hand    DECIMAL(12, 3) NOT NULL,
    qty_reserved   DECIMAL(12, 3) NOT NULL DEFAULT 0,
    updated_at     DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (item_no, warehouse_code)
) ENGINE = InnoDB;

CREATE TABLE invoices (
    invoice_no  INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_no    INT UNSIGNED NOT NULL,
    customer_no INT UNSIGNED NULL,
    amount      DECIMAL(14, 2) NOT NULL,
    status      ENUM('open', 'paid', 'void') NOT NULL DEFAULT 'open',
    issued_on   DATE NULL,
    paid_at     DATETIME(6) NULL
) ENGINE = InnoDB;

CREATE TABLE credit_notes (
    credit_note_no INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    crm_return_id  CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    -- the order credited: a lookup of the return's opportunity (not carried yet)
    order_no       INT UNSIGNED NULL,
    amount         DECIMAL(14, 2) NOT NULL,
    status         ENUM('pending', 'approved', 'rejected', 'settled') NOT NULL DEFAULT 'pending',
    reason         VARCHAR(500) NULL,
    source_system  VARCHAR(8) NOT NULL DEFAULT 'erp',
    created_at     DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY credit_notes_crm_return_id (crm_return_id)
) ENGINE = InnoDB;
