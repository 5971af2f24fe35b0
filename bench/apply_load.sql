-- Load pending events straight into ledger.event_log, in one transaction,
-- for the apply workload (bench/run.sh).  The workers see none of them until
-- the commit, then all at once, as one delta.  Rows are as the API writes
-- them (src/enqueue.c): bucket = the payer's account bucket, id from
-- ledger.event_id_seq, txid = the transaction's, kind 't' (to_account,
-- amount), 's' (to_accounts, amounts, amount = their total) or 'd',
-- enqueued_at.
--
-- Variables: mix (uniform | hot | cross25 | disburse | deep), n (events),
-- naccounts (a multiple of 10 and of ledger.buckets).
--   uniform   payer and payee random and distinct
--   hot       half the transfers paid by account 1, the rest uniform
--   cross25   a quarter of the payees in another bucket than the payer's
--             (with one bucket there is no other bucket: none are)
--   disburse  10 payees each, spaced naccounts/10 apart from a random offset
--   deep      deposits of 1 to account naccounts + 1 (the balance workload)
-- Prints: first event id, last event id, and the last id of each bucket.
\set ON_ERROR_STOP 1
-- the log's columns, as this file writes them (1.2 added hold_id,
-- expires_at and metadata, 1.6 bucket to credit_of, 1.9 occurred_at and
-- link_of, NULL but for imported and linked events)
SELECT string_agg(attname, ',' ORDER BY attnum)
	   = 'id,kind,account_id,to_account,amount,to_accounts,amounts,status,reason,enqueued_at,applied_at,hold_id,expires_at,metadata,bucket,txid,waits_from,credit_of,occurred_at,link_of'
	   AS log_as_expected
  FROM pg_attribute
 WHERE attrelid = 'ledger.event_log'::regclass AND attnum > 0 AND NOT attisdropped \gset
\if :log_as_expected
\else
DO $$ BEGIN RAISE EXCEPTION 'ledger.event_log has changed: update bench/apply_load.sql to write rows as src/enqueue.c does'; END $$;
\endif
BEGIN;
WITH logged AS (
INSERT INTO ledger.event_log (bucket, txid, id, kind, account_id, to_account, amount,
							  to_accounts, amounts, enqueued_at)
SELECT a.bucket, pg_current_xact_id(), e.id, e.kind, e.payer, e.payee,
	   e.amount, e.payees, e.amounts, statement_timestamp()
  FROM (SELECT nextval('ledger.event_id_seq') AS id, CASE :'mix' WHEN 'disburse' THEN 's' WHEN 'deep' THEN 'd'
						   ELSE 't' END::"char" AS kind,
			   p.payer,
			   CASE WHEN :'mix' IN ('disburse', 'deep') THEN NULL
					ELSE 1 + (p.payer - 1 + p.off) % :naccounts END AS payee,
			   CASE :'mix' WHEN 'disburse'
					THEN (SELECT sum(v)::bigint FROM unnest(p.amts) v)
					WHEN 'deep' THEN 1
					ELSE p.amts[1] END AS amount,
			   CASE WHEN :'mix' = 'disburse'
					THEN ARRAY(SELECT 1 + (p.payer - 1 + p.off + j * (:naccounts / 10)) % :naccounts
								 FROM generate_series(0, 9) j) END AS payees,
			   CASE WHEN :'mix' = 'disburse' THEN p.amts END AS amounts
		  FROM (SELECT r.g,
					   CASE WHEN :'mix' = 'deep' THEN :naccounts + 1
							WHEN :'mix' = 'hot' AND r.r0 < 0.5 THEN 1
							ELSE 1 + floor(r.r1 * :naccounts)::bigint END AS payer,
					   CASE :'mix'
							WHEN 'disburse' THEN 1 + floor(r.r2 * (:naccounts / 10 - 1))::bigint
							WHEN 'cross25' THEN
								CASE WHEN r.nb > 1 AND r.r0 < 0.25
									 -- another bucket: nb*k + (1 .. nb-1)
									 THEN r.nb * floor(r.r2 * (:naccounts / r.nb))::bigint
										  + 1 + floor(r.r3 * (r.nb - 1))::bigint
									 -- the same bucket: nb*k, k in 1 .. naccounts/nb - 1
									 ELSE r.nb * (1 + floor(r.r2 * (:naccounts / r.nb - 1))::bigint)
								END
							ELSE 1 + floor(r.r2 * (:naccounts - 1))::bigint
					   END AS off,
					   r.amts
				  FROM (SELECT g, random() AS r0, random() AS r1, random() AS r2,
							   random() AS r3,
							   current_setting('ledger.buckets')::bigint AS nb,
							   ARRAY(SELECT 1 + floor(random() * 100)::bigint
									   FROM generate_series(1, CASE WHEN :'mix' = 'disburse'
																	THEN 10 ELSE 1 END)
									  WHERE g > 0) AS amts
						  FROM generate_series(1, :n) g
						OFFSET 0) r
				OFFSET 0) p
		OFFSET 0) e
  JOIN ledger.accounts a ON a.id = e.payer
RETURNING bucket, id
)
SELECT min(l.id), max(l.id),
	   (SELECT array_agg(m.id) FROM (SELECT max(l2.id) AS id FROM logged l2
									  GROUP BY l2.bucket) m)
  FROM logged l;
COMMIT;
