-- Batch enqueue: :batch random transfers (distinct payer and payee) in one
-- ledger_transfer_many() call.  The transfers are drawn in the server, as
-- for the baseline (insert_many.sql): pgbench allows 255 parameters.
-- Variables (pgbench -D): naccounts, batch.
SELECT cardinality(ledger_transfer_many(array_agg(r.f),
										array_agg(1 + (r.f + r.o) % :naccounts),
										array_agg(r.a)))
  FROM (SELECT 1 + floor(random() * :naccounts)::bigint AS f,
			   floor(random() * (:naccounts - 1))::bigint AS o,
			   1 + floor(random() * 100)::bigint AS a
		  FROM generate_series(1, :batch)) r;
