-- Callosum's capture user for a PostgreSQL source store: logical replication
-- of the captured tables and nothing else. Run as a superuser in the store's
-- database, after replacing the table list (public.orders) with yours:
--
--   psql -v ON_ERROR_STOP=1 -v password='…' -d crm -f deploy/sql/postgres-capture.sql
--
-- and let it connect in pg_hba.conf (a logical replication connection is
-- matched by the database name, not by `replication`):
--   host  crm  callosum_capture  <agent address>/32  scram-sha-256
-- Then `callosum check` lists nothing for this store.

-- REPLICATION: the replication connection, its slot (created by the agent
-- on first start) and the pgoutput stream; no superuser, no ownership
CREATE ROLE callosum_capture LOGIN REPLICATION PASSWORD :'password';

-- read the captured tables' catalog and rows
GRANT USAGE ON SCHEMA public TO callosum_capture;
GRANT SELECT ON public.orders TO callosum_capture;

-- the publication the agent streams (default name callosum_<store>): only a
-- table's owner may add it, so it is created here; when the store is also a
-- target of Callosum (both directions), run postgres-apply.sql first, let the
-- agent start once to create public.callosum_checkpoint, and add that table
-- too (ALTER PUBLICATION callosum_crm ADD TABLE public.callosum_checkpoint)
CREATE PUBLICATION callosum_crm FOR TABLE public.orders;
