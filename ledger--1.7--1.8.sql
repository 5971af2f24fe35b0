/* ledger--1.7--1.8.sql */

\echo Use "ALTER EXTENSION ledger UPDATE TO '1.8'" to load this file. \quit

/*
 * ledger_stats has a row per worker, and its first column says so: worker,
 * where 1.7 called it bucket.  A worker serves the bucket of its number and
 * any bucket left from a larger ledger.buckets whose number is the same
 * modulo the setting; its pending entries and lag are those of all of
 * them.  Nothing else changes.
 */
DROP VIEW ledger_stats;
DROP FUNCTION ledger_worker_stats();
CREATE FUNCTION ledger_worker_stats(OUT worker integer, OUT pid integer,
									OUT state text, OUT paused boolean,
									OUT events_applied bigint,
									OUT events_rejected bigint,
									OUT credits_applied bigint,
									OUT batches bigint,
									OUT last_batch_ms float8,
									OUT avg_batch_ms float8,
									OUT last_batch_size integer,
									OUT avg_batch_size float8,
									OUT last_batch_at timestamptz,
									OUT events_per_second float8,
									OUT failures integer,
									OUT last_error text,
									OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ledger_worker_stats'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION ledger_worker_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_worker_stats() TO ledger_client;

CREATE VIEW ledger_stats AS
	SELECT s.worker, s.pid, s.state, s.paused,
		   s.events_applied, s.events_rejected, s.credits_applied,
		   s.batches, s.last_batch_ms, s.avg_batch_ms, s.last_batch_size,
		   s.avg_batch_size, s.last_batch_at, s.events_per_second,
		   q.pending, q.lag, s.failures, s.last_error, s.last_error_at
	  FROM @extschema@.ledger_worker_stats() s
	  LEFT JOIN LATERAL
		   (SELECT pg_catalog.count(*) AS pending,
				   pg_catalog.now() - pg_catalog.min(q.enqueued_at) AS lag
			  FROM ledger.queue q
			 WHERE q.bucket % pg_catalog.current_setting('ledger.buckets')::integer = s.worker) q
		ON true;
GRANT SELECT ON ledger_stats TO ledger_client;

/* ledger_health reads the workers by their new column; nothing else changes. */
CREATE OR REPLACE FUNCTION ledger_health(pending_after interval DEFAULT '1 minute',
							  max_rows integer DEFAULT 100,
							  OUT problem text, OUT bucket integer,
							  OUT event_id bigint, OUT account_id bigint,
							  OUT since timestamptz, OUT detail text)
RETURNS SETOF record
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH workers AS (
		SELECT w.worker, w.pid, w.paused FROM @extschema@.ledger_worker_stats() w
	), late AS (
		SELECT q.* FROM ledger.queue q
		 WHERE q.enqueued_at < pg_catalog.now() - $1
		 ORDER BY q.enqueued_at, q.seq LIMIT $2
	), exposure AS (
		SELECT a.bucket, a.currency,
			   sum(GREATEST(COALESCE(h.held, 0)::numeric - COALESCE(t.balance_after, 0), 0)) AS owed
		  FROM ledger.accounts a
		  LEFT JOIN LATERAL (SELECT t.balance_after FROM ledger.transactions t
							  WHERE t.account_id = a.id ORDER BY t.id DESC LIMIT 1) t ON true
		  LEFT JOIN LATERAL (SELECT h.held FROM ledger.account_holds h
							  WHERE h.account_id = a.id ORDER BY h.id DESC LIMIT 1) h ON true
		 WHERE a.allow_negative OR EXISTS (SELECT FROM ledger.limits l WHERE l.account_id = a.id)
		 GROUP BY a.bucket, a.currency
	)
	SELECT 'pending', l.bucket, l.id,
		   CASE WHEN l.kind = 'c' THEN l.to_accounts[1] ELSE l.account_id END,
		   l.enqueued_at,
		   CASE
			   WHEN w.pid IS NULL THEN 'the worker of its bucket is not running'
			   WHEN w.paused THEN 'its bucket is paused'
			   WHEN EXISTS (SELECT FROM ledger.queue d
							 WHERE d.id >= l.waits_from AND d.id < l.id
							   AND ((d.kind <> 'c' AND d.bucket <> l.bucket)
									OR (d.kind = 'c' AND d.bucket = l.bucket))
							   AND (l.account_id = d.to_account
									OR l.account_id = ANY (d.to_accounts)))
				   THEN pg_catalog.format('waits for credits to account %s from event %s on',
										  l.account_id, l.waits_from)
			   WHEN l.kind = 'c' AND EXISTS (
					SELECT FROM unnest(l.to_accounts, l.amounts) p(account_id, amount)
					 WHERE @extschema@.ledger_balance(p.account_id)::numeric + p.amount > 9223372036854775807)
				   THEN 'a credit held back: its payee''s balance would overflow'
			   ELSE pg_catalog.format('%s entries of its bucket are before it',
									  (SELECT pg_catalog.count(*) FROM ledger.queue b
										WHERE b.bucket = l.bucket AND b.seq < l.seq))
		   END
	  FROM late l
	  LEFT JOIN workers w ON w.worker = l.bucket % pg_catalog.current_setting('ledger.buckets')::integer
	UNION ALL
	SELECT 'supply', x.bucket, NULL, NULL, NULL,
		   pg_catalog.format('in %s, its accounts owe %s of the bound %s',
							 c.code, x.owed, @extschema@.ledger_supply_bound())
	  FROM exposure x JOIN ledger.currencies c ON c.no = x.currency
	 WHERE x.owed > 0.9 * @extschema@.ledger_supply_bound()
$$;
