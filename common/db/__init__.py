"""PostgreSQL: the Database (aiopg pool, transactions), multi-host failover, group commit, idempotency keys."""
