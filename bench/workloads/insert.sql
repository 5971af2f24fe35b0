-- Baseline for enqueue: one plain single-row INSERT of a transfer-shaped row
-- into bench.queue, a table with ledger.event_log's columns and indexes.
-- Variables (pgbench -D): naccounts, buckets.
\set from random(1, :naccounts)
\set to 1 + (:from + random(0, :naccounts - 2)) % :naccounts
\set amount random(1, 100)
\set bucket :from % :buckets
INSERT INTO bench.queue (bucket, txid, id, kind, account_id, to_account, amount, enqueued_at)
VALUES (:bucket, pg_current_xact_id(), nextval('bench.queue_id_seq'), 't',
		:from, :to, :amount, statement_timestamp());
