//! The orders and line_items tables shared by the pipeline tests: their DDL
//! on each engine and how their rows are compared.

use super::{mysql_exec, Databases, MirroredTable};

/// `orders` with `updated_at`, as the replication tests create it.
pub const PG_ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32), amount numeric(12,2), note varchar(200), updated_at timestamp)";
pub const MYSQL_ORDERS: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, status VARCHAR(32), amount DECIMAL(12,2), note VARCHAR(200), updated_at DATETIME(6))";

pub const PG_LINE_ITEMS: &str = "CREATE TABLE line_items (order_id bigint, line_no int, product varchar(50) NOT NULL, qty int NOT NULL, price numeric(10,2), PRIMARY KEY (order_id, line_no))";
pub const MYSQL_LINE_ITEMS: &str = "CREATE TABLE line_items (order_id BIGINT, line_no INT, product VARCHAR(50) NOT NULL, qty INT NOT NULL, price DECIMAL(10,2), PRIMARY KEY (order_id, line_no))";

/// `orders` without `updated_at`, as the crash and fault tests create it.
pub const PG_PLAIN_ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32), amount numeric(12,2), note varchar(200))";
pub const MYSQL_PLAIN_ORDERS: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, status VARCHAR(32), amount DECIMAL(12,2), note VARCHAR(200))";

pub const ORDERS: MirroredTable = MirroredTable {
    name: "orders",
    pg_select: "id::text, customer_id::text, status, amount::text, note, to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS.US')",
    mysql_select: "CAST(id AS CHAR), CAST(customer_id AS CHAR), status, CAST(amount AS CHAR), note, DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f')",
    compare: &[],
};

pub const LINE_ITEMS: MirroredTable = MirroredTable {
    name: "line_items",
    pg_select: "order_id::text || '/' || line_no::text, product, qty::text, price::text",
    mysql_select: "CONCAT(order_id, '/', line_no), product, CAST(qty AS CHAR), CAST(price AS CHAR)",
    compare: &[],
};

/// The plain `orders` (no `updated_at`).
pub const PLAIN_ORDERS: MirroredTable = MirroredTable {
    name: "orders",
    pg_select: "id::text, customer_id::text, status, amount::text, note",
    mysql_select: "CAST(id AS CHAR), CAST(customer_id AS CHAR), status, CAST(amount AS CHAR), note",
    compare: &[],
};

/// Creates orders and line_items on both sides.
pub async fn create_orders_and_line_items(db: &Databases) {
    db.pg.batch_execute(PG_ORDERS).await.unwrap();
    db.pg.batch_execute(PG_LINE_ITEMS).await.unwrap();
    mysql_exec(&db.mysql, MYSQL_ORDERS).await;
    mysql_exec(&db.mysql, MYSQL_LINE_ITEMS).await;
}

/// Creates the plain orders on both sides.
pub async fn create_plain_orders(db: &Databases) {
    db.pg.batch_execute(PG_PLAIN_ORDERS).await.unwrap();
    mysql_exec(&db.mysql, MYSQL_PLAIN_ORDERS).await;
}
