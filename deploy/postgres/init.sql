-- Runs once, when the postgres volume is created: the state database of ops-workers. The demo
-- platform database is created and filled by the `seed` service (`ops-workers demo seed`).
CREATE DATABASE ops_state;
