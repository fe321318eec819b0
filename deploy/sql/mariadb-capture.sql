-- Callosum's capture user for a MariaDB (10.5+) or MySQL source store: read
-- the binlog and the captured tables, nothing else. Run as an administrator,
-- after replacing the password, the database (erp) and the table list
-- (erp.orders) with yours:
--
--   mariadb -u root < deploy/sql/mariadb-capture.sql
--
-- Then `callosum check` lists nothing for this store.

CREATE USER 'callosum_capture'@'%' IDENTIFIED BY 'change-me';

-- REPLICATION SLAVE: the binlog dump; BINLOG MONITOR (MySQL: REPLICATION
-- CLIENT): SHOW BINARY LOGS and the server's binlog position
GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'callosum_capture'@'%';

-- the captured tables' catalog and rows
GRANT SELECT ON erp.orders TO 'callosum_capture'@'%';
