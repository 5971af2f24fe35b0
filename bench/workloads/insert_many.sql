-- Baseline for batch enqueue: one INSERT statement of :batch transfer-shaped
-- rows into bench.queue (ledger.event_log's columns and indexes), drawn as in
-- transfer_many.sql.
-- Variables (pgbench -D): naccounts, buckets, batch.
INSERT INTO bench.queue (bucket, txid, id, kind, account_id, to_account, amount, enqueued_at)
SELECT r.f % :buckets, pg_current_xact_id(), nextval('bench.queue_id_seq'), 't',
	   r.f, 1 + (r.f + r.o) % :naccounts, r.a, statement_timestamp()
  FROM (SELECT 1 + floor(random() * :naccounts)::bigint AS f,
			   floor(random() * (:naccounts - 1))::bigint AS o,
			   1 + floor(random() * 100)::bigint AS a
		  FROM generate_series(1, :batch)) r;
