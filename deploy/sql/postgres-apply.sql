-- Callosum's apply user for a PostgreSQL target store: write the replicated
-- tables and its own two tables, nothing else. Run as a superuser (or the
-- tables' owner) in the store's database, after replacing the table list
-- (public.orders) with your target tables:
--
--   psql -v ON_ERROR_STOP=1 -v password='…' -d crm -f deploy/sql/postgres-apply.sql
--
-- Then `callosum check` lists nothing for this store.

CREATE ROLE callosum_apply LOGIN PASSWORD :'password';

-- CREATE: the agent creates public.callosum_checkpoint (where each target
-- transaction records its source position) and public.callosum_dead_letter
-- (the durable home of dead letters) on first start, and owns them
GRANT USAGE, CREATE ON SCHEMA public TO callosum_apply;

-- the replicated tables: upserts, deletes, a source's TRUNCATE
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.orders TO callosum_apply;

-- only if target tables have foreign keys between them: a batch is applied
-- as its net effect, in an order the keys may refuse
-- GRANT SET ON PARAMETER session_replication_role TO callosum_apply;
