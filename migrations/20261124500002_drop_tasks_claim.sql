-- no-transaction
-- The global claim-order index is replaced by tasks_queue (previous migration); dropping it
-- saves a write on every task insert and every pending/running transition.
DROP INDEX CONCURRENTLY IF EXISTS tasks_claim
