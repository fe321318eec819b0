-- Callosum's apply user for a MariaDB (10.5+) or MySQL target store: write
-- the replicated tables and its own two tables, nothing else. Run as an
-- administrator, after replacing the password, the database (erp) and the
-- table list (erp.orders) with yours:
--
--   mariadb -u root < deploy/sql/mariadb-apply.sql
--
-- Then `callosum check` lists nothing for this store.

CREATE USER 'callosum_apply'@'%' IDENTIFIED BY 'change-me';

-- the replicated tables: upserts and deletes (a source's TRUNCATE is
-- applied as a DELETE)
GRANT SELECT, INSERT, UPDATE, DELETE ON erp.orders TO 'callosum_apply'@'%';

-- its own tables, created by the agent on first start: the checkpoint each
-- target transaction records its source position in, and the durable home
-- of dead letters
GRANT SELECT, INSERT, UPDATE, CREATE ON erp.callosum_checkpoint TO 'callosum_apply'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON erp.callosum_dead_letter TO 'callosum_apply'@'%';
