/* ledger--1.0--1.1.sql: statistics and controls for operators */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.1'" to load this file. \quit

CREATE FUNCTION ledger_worker_stats(OUT bucket integer, OUT pid integer,
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
									OUT events_per_second float8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ledger_worker_stats'
LANGUAGE C VOLATILE STRICT;

/*
 * One row per bucket worker: what its shared-memory counters say, and what
 * its queue holds (pending entries, and the age of the oldest).
 */
CREATE VIEW ledger_stats AS
	SELECT s.bucket, s.pid, s.state, s.paused,
		   s.events_applied, s.events_rejected, s.credits_applied,
		   s.batches, s.last_batch_ms, s.avg_batch_ms, s.last_batch_size,
		   s.avg_batch_size, s.last_batch_at, s.events_per_second,
		   q.pending, q.lag
	  FROM @extschema@.ledger_worker_stats() s
	  LEFT JOIN LATERAL
		   (SELECT pg_catalog.count(*) AS pending,
				   pg_catalog.now() - pg_catalog.min(q.enqueued_at) AS lag
			  FROM ledger.queue q
			 WHERE q.bucket % pg_catalog.current_setting('ledger.buckets')::integer = s.bucket) q
		ON true;

CREATE FUNCTION ledger_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_stats_reset'
LANGUAGE C VOLATILE;

CREATE FUNCTION ledger_pause(bucket integer)
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_pause'
LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION ledger_resume(bucket integer)
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_resume'
LANGUAGE C VOLATILE STRICT;

-- reading the statistics is for everyone who may use the ledger; changing
-- them, or pausing a worker, for the owner
REVOKE ALL ON FUNCTION ledger_worker_stats(), ledger_stats_reset(),
	ledger_pause(integer), ledger_resume(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_worker_stats() TO ledger_client;
GRANT SELECT ON ledger_stats TO ledger_client;

-- the queue churns: every entry is deleted once applied, so let autovacuum
-- visit it after a fixed number of dead rows rather than a fraction of it
ALTER TABLE ledger.queue SET (autovacuum_vacuum_scale_factor = 0,
							  autovacuum_vacuum_threshold = 20000,
							  autovacuum_vacuum_insert_scale_factor = 0,
							  autovacuum_vacuum_insert_threshold = 20000);

-- the two most frequent reads, in C with kept plans rather than SQL
-- functions planned at every call
CREATE OR REPLACE FUNCTION ledger_balance(account_id bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_balance'
LANGUAGE C STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION ledger_event_status(event_id bigint)
RETURNS text
AS 'MODULE_PATHNAME', 'ledger_event_status'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

