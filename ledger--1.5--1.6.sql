/*
 * ledger--1.5--1.6.sql: each event written once.
 *
 * Up to 1.5 an event was written twice: into ledger.queue by the client,
 * then into ledger.events by the worker that applied it, which deleted the
 * queue row in the same batch (and autovacuum cleaned up after it).  From
 * 1.6 the row the client inserts is the permanent record, in
 * ledger.event_log, and a batch adds only what is new: the legs, one row
 * for itself in ledger.batches, and a row in ledger.outcomes for each event
 * it rejected.  Nothing is updated or deleted.
 *
 * A worker finds its bucket's new events as PgQ does: every event carries
 * the id of the transaction that enqueued it (txid), and a batch takes the
 * events whose transaction is visible in the batch's snapshot and was not
 * in the previous one's.  A transaction that commits out of id order lands
 * in a later batch, never skipped.  A large delta between two snapshots is
 * applied in several batches, in (txid, id) order, each recording how far
 * it got (its cursor).  So an event is decided once the latest batch of
 * its bucket covers it, and its status follows from that batch; see
 * ledger.decided_by() and ledger.log_states.  Events that were decided before
 * 1.6 keep their status, reason and applied_at in their own row.
 *
 * ledger.events and ledger.queue remain, as views: the decided events with
 * their status as before, and the entries still to be applied (events and
 * the credits they sent to other buckets).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.6'" to load this file. \quit

/*
 * The log: every event, written once by the call that enqueues it.  bucket
 * is the worker's that applies it; txid the enqueuing transaction's (for a
 * credit to another bucket, the paying batch's); credit_of, for a credit,
 * the event it completes.  status, reason and applied_at are those of the
 * events decided before 1.6, NULL for the others.
 */
ALTER TABLE ledger.events RENAME TO event_log;
ALTER INDEX ledger.events_pkey RENAME TO event_log_pkey;
ALTER INDEX ledger.events_holds_idx RENAME TO event_log_holds_idx;
ALTER INDEX ledger.events_metadata_idx RENAME TO event_log_metadata_idx;
ALTER TABLE ledger.event_log
	ALTER COLUMN status DROP NOT NULL,
	ALTER COLUMN applied_at DROP NOT NULL,
	ADD COLUMN bucket integer,
	ADD COLUMN txid xid8,
	ADD COLUMN waits_from bigint,
	ADD COLUMN credit_of bigint;
-- how a worker reads its bucket's new events, in (txid, id) order
CREATE INDEX event_log_batch_idx ON ledger.event_log (bucket, txid, id)
	WHERE txid IS NOT NULL;
-- the credits an event sent to other buckets
CREATE INDEX event_log_credit_of_idx ON ledger.event_log (credit_of)
	WHERE credit_of IS NOT NULL;

/*
 * One row per batch.  Its delta is the events of the bucket whose
 * transaction is visible in cur and was not in prev; it decided them up to
 * (cursor_txid, cursor_id), in that order, or all of them when the cursor
 * is NULL.  The delta's first batch has the previous delta's cur as prev.
 */
CREATE SEQUENCE ledger.batch_id_seq;
CREATE TABLE ledger.batches (
	bucket			integer NOT NULL,
	id				bigint NOT NULL,
	prev			pg_snapshot NOT NULL,
	cur				pg_snapshot NOT NULL,
	cur_xmax		xid8 NOT NULL,
	cursor_txid		xid8,
	cursor_id		bigint,
	decided_at		timestamptz NOT NULL,
	applied			integer NOT NULL,
	rejected		integer NOT NULL,
	PRIMARY KEY (bucket, id)
);
-- the batch that decided an event: the first whose snapshot sees it
CREATE INDEX batches_cur_xmax_idx ON ledger.batches (bucket, cur_xmax, id);

/*
 * Events whose outcome is not the common one: rejected ('r', with the
 * reason), or decided by a later batch than the one that first read them
 * ('a' or 'r').
 */
CREATE TABLE ledger.outcomes (
	event_id		bigint PRIMARY KEY,
	status			"char" NOT NULL,
	reason			text,
	batch_id		bigint NOT NULL,
	decided_at		timestamptz NOT NULL
);

/*
 * Events a batch read but left for later: a debit waiting for the credits
 * of its transaction, or a credit that would overflow a balance of before
 * 1.5.  Pending until they have an outcome.
 */
CREATE TABLE ledger.deferred (
	event_id		bigint PRIMARY KEY,
	bucket			integer NOT NULL,
	batch_id		bigint NOT NULL,
	deferred_at		timestamptz NOT NULL
);

/*
 * Which cluster the log's transaction ids are of: a dump restored into
 * another cluster brings ids that mean nothing there.  The workers take
 * such a ledger over before they read it (src/apply.c): its events still
 * pending are listed in ledger.deferred, read by id from then on, and the
 * events up to base_id are decided by what its batches said, those up to
 * base_batch (ledger.deciding_batches()).  Insert-only: the newest take-over
 * is in force, the one of the highest base_batch (then base_id: a clock is
 * no guide across clusters).  The row this script writes has zeros, and
 * in a restored dump a tie goes to the other cluster's row rather than to
 * the one CREATE EXTENSION wrote.  A dump of a later state of this same
 * cluster restored into an earlier copy of it is taken over too: see
 * ledger_installation() in src/ledger.c.
 */
CREATE FUNCTION ledger.system_identifier() RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_system_identifier'
LANGUAGE C STABLE;
CREATE TABLE ledger.installation (
	system_id		bigint NOT NULL,
	base_id			bigint NOT NULL,
	base_batch		bigint NOT NULL,
	since			timestamptz NOT NULL
);
INSERT INTO ledger.installation VALUES (ledger.system_identifier(), 0, 0, '-infinity');
SELECT pg_catalog.pg_extension_config_dump('ledger.installation', '');
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.installation
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.installation
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- the events up to which the log's transaction ids are of another cluster
CREATE FUNCTION ledger.base_id() RETURNS bigint
LANGUAGE plpgsql STABLE AS
$$
BEGIN
	RETURN (SELECT i.base_id FROM ledger.installation i
			 ORDER BY i.base_batch DESC, i.base_id DESC, i.since DESC,
					  i.system_id = ledger.system_identifier()
			 LIMIT 1);
END
$$;

/*
 * The batches that can have decided an event: those of the cluster that
 * enqueued it.  A batch of this cluster may see a transaction id of the
 * other one as visible; base_batch, the newest batch at the take-over,
 * keeps each cluster's batches to its own events.
 */
CREATE FUNCTION ledger.deciding_batches(event_id bigint, OUT after bigint, OUT upto bigint)
LANGUAGE sql STABLE AS
$$
	SELECT COALESCE(max(i.base_batch) FILTER (WHERE i.base_id < event_id), 0),
		   COALESCE(min(i.base_batch) FILTER (WHERE i.base_id >= event_id),
					9223372036854775807)
	  FROM ledger.installation i
$$;

SELECT pg_catalog.pg_extension_config_dump('ledger.batches', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.batch_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.outcomes', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.deferred', '');
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.batches
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.batches
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.outcomes
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.outcomes
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.deferred
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.deferred
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

/*
 * The events still queued move into the log, as if enqueued by this
 * transaction: the workers see them once the update commits.  A credit
 * keeps its place in its bucket's order: its queue seq, a number of the
 * event id sequence no event has, becomes its id.
 */
INSERT INTO ledger.event_log (id, kind, account_id, to_account, amount, to_accounts,
							  amounts, enqueued_at, hold_id, expires_at, metadata,
							  bucket, txid, waits_from, credit_of)
SELECT CASE WHEN q.kind = 'c' THEN q.seq ELSE q.id END, q.kind, q.account_id,
	   q.to_account, q.amount, q.to_accounts, q.amounts, q.enqueued_at, q.hold_id,
	   q.expires_at, q.metadata, q.bucket, pg_catalog.pg_current_xact_id(),
	   q.waits_from, CASE WHEN q.kind = 'c' THEN q.id END
  FROM ledger.queue q
 ORDER BY q.seq;
DROP VIEW ledger_stats;
DROP TABLE ledger.queue;

/*
 * Deciding, from batches.  These helpers are for the extension's own
 * functions and workers, which pin the search path themselves: without a
 * SET clause of their own, the planner can inline them into the queries
 * that use them.
 */

/*
 * Has the batch of (prev, cur, cursor_txid, cursor_id) decided the event of
 * (txid, id) of its bucket?
 */
CREATE FUNCTION ledger.decided_by(prev pg_snapshot, cur pg_snapshot,
								  cursor_txid xid8, cursor_id bigint,
								  txid xid8, id bigint)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS
$$
	SELECT pg_catalog.pg_visible_in_snapshot(txid, cur)
		   AND (cursor_txid IS NULL OR pg_catalog.pg_visible_in_snapshot(txid, prev)
				OR (txid, id) <= (cursor_txid, cursor_id))
$$;

/*
 * The state of each row of the log, as its worker left it: 'p' pending, 'a'
 * applied, 'r' rejected (a credit is 'a' once posted); with the reason of a
 * rejection.  An event whose credits to other buckets are pending is still
 * pending as a whole: see ledger.event_state().  The newest batch of the
 * row's bucket decides it: one probe a row.  ledger.row_state() says the
 * same of one row.
 */
CREATE VIEW ledger.log_states AS
	SELECT e.*,
		   CASE
			   WHEN e.status IS NOT NULL THEN e.status
			   WHEN o.status IS NOT NULL THEN o.status
			   WHEN d.event_id IS NOT NULL THEN 'p'
			   WHEN e.id <= ledger.base_id() THEN 'a'
			   WHEN l.id IS NULL OR NOT ledger.decided_by(l.prev, l.cur, l.cursor_txid, l.cursor_id, e.txid, e.id) THEN 'p'
			   ELSE 'a'
		   END::"char" AS state,
		   COALESCE(e.reason, o.reason) AS outcome_reason,
		   o.decided_at AS outcome_at
	  FROM ledger.event_log e
	  LEFT JOIN ledger.outcomes o ON o.event_id = e.id
	  LEFT JOIN ledger.deferred d ON d.event_id = e.id
	  LEFT JOIN LATERAL (SELECT * FROM ledger.batches b WHERE b.bucket = e.bucket
						  ORDER BY b.id DESC LIMIT 1) l ON true;

/*
 * The state of one row of the log, as ledger.log_states has it: by the
 * newest batch of its bucket (one probe), for the callers that ask about
 * one event at a time.  In PL/pgSQL, as ledger.base_id() and
 * ledger.event_state(), so that a session plans their statements once: a
 * SQL function that cannot be inlined is parsed and planned again at every
 * execution of the query that calls it, and ledger_wait() polls with these.
 */
CREATE FUNCTION ledger.row_state(e ledger.event_log)
RETURNS "char"
LANGUAGE plpgsql STABLE AS
$$
BEGIN
	RETURN (SELECT CASE
			   WHEN e.status IS NOT NULL THEN e.status
			   WHEN o.status IS NOT NULL THEN o.status
			   WHEN EXISTS (SELECT FROM ledger.deferred d WHERE d.event_id = e.id) THEN 'p'
			   WHEN e.id <= ledger.base_id() THEN 'a'
			   WHEN l.id IS NULL OR NOT ledger.decided_by(l.prev, l.cur, l.cursor_txid, l.cursor_id, e.txid, e.id) THEN 'p'
			   ELSE 'a'
		   END::"char"
	  FROM (SELECT) one
	  LEFT JOIN ledger.outcomes o ON o.event_id = e.id
	  LEFT JOIN LATERAL (SELECT * FROM ledger.batches b WHERE b.bucket = e.bucket
						  ORDER BY b.id DESC LIMIT 1) l ON true);
END
$$;

-- The state of an event, counting the credits it sent to other buckets.
CREATE FUNCTION ledger.event_state(e ledger.event_log)
RETURNS "char"
LANGUAGE plpgsql STABLE AS
$$
DECLARE
	state "char" := ledger.row_state(e);
BEGIN
	IF state = 'a' AND EXISTS (SELECT FROM ledger.event_log c
								WHERE c.credit_of = e.id
								  AND ledger.row_state(c) = 'p') THEN
		RETURN 'p';
	END IF;
	RETURN state;
END
$$;

/*
 * The batches' cursors, by bucket: the first batch of an event's delta
 * whose cursor reached it is the one that decided it (ledger.events).
 */
CREATE INDEX batches_cursor_idx ON ledger.batches (bucket, cursor_txid, cursor_id)
	WHERE cursor_txid IS NOT NULL;

/*
 * The decided events, as 1.5's table of them: status, reason and the time
 * of the batch that decided each.  A post shows the amount it posted.  That
 * batch is the first of the event's delta whose cursor reached it, found
 * by the cursors' index, or else the first whose snapshot saw it (the last
 * of its delta, which has no cursor): the second search walks the batches
 * of the delta, but only for the events of its last batch.  Each row costs
 * index probes: read applied_at for a few events, or a range of them, not
 * for the whole history at once.
 */
CREATE VIEW ledger.events AS
	SELECT s.id, s.kind, s.account_id, s.to_account,
		   CASE WHEN s.kind = 'p'
				THEN COALESCE((SELECT h.amount FROM ledger.hold_ends h WHERE h.event_id = s.id),
							  s.amount)
				ELSE s.amount END AS amount,
		   s.to_accounts, s.amounts, s.state AS status, s.outcome_reason AS reason,
		   s.enqueued_at,
		   COALESCE(s.applied_at, s.outcome_at,
					(SELECT b.decided_at FROM ledger.batches b, ledger.deciding_batches(s.id) r
					  WHERE b.bucket = s.bucket AND b.cursor_txid IS NOT NULL
						AND (b.cursor_txid, b.cursor_id) >= (s.txid, s.id)
						AND b.id > r.after AND b.id <= r.upto
						AND pg_catalog.pg_visible_in_snapshot(s.txid, b.cur)
						AND NOT pg_catalog.pg_visible_in_snapshot(s.txid, b.prev)
					  ORDER BY b.cursor_txid, b.cursor_id LIMIT 1),
					(SELECT b.decided_at FROM ledger.batches b, ledger.deciding_batches(s.id) r
					  WHERE b.bucket = s.bucket AND b.cur_xmax > s.txid
						AND b.id > r.after AND b.id <= r.upto
						AND ledger.decided_by(b.prev, b.cur, b.cursor_txid, b.cursor_id, s.txid, s.id)
					  ORDER BY b.cur_xmax, b.id LIMIT 1)) AS applied_at,
		   s.hold_id, s.expires_at, s.metadata
	  FROM ledger.log_states s
	 WHERE s.credit_of IS NULL AND s.state <> 'p';

-- When an event was decided, as ledger.events has it.
CREATE FUNCTION ledger.decided_at(e ledger.event_log)
RETURNS timestamptz
LANGUAGE sql STABLE AS
$$
	SELECT s.applied_at FROM ledger.events s WHERE s.id = e.id
$$;

/*
 * What is still to be applied, as 1.5's queue: events not decided, and
 * credits not posted, under the id of the event they complete (seq orders
 * a bucket's entries).  Only the log's entries not visible to each bucket's
 * newest batch's prev (from its xmax on, or in progress then; found by the
 * index the workers read), and those it deferred, can be pending.  A
 * function, so that the planner takes it for the few rows it returns
 * rather than cost it over the whole log (and compile it); the owner's, as
 * ledger_stats, which clients may read, reads the log through it.
 */
CREATE FUNCTION ledger.pending_entries(OUT bucket integer, OUT seq bigint, OUT id bigint,
									   OUT kind "char", OUT account_id bigint,
									   OUT to_account bigint, OUT amount bigint,
									   OUT to_accounts bigint[], OUT amounts bigint[],
									   OUT enqueued_at timestamptz, OUT hold_id bigint,
									   OUT expires_at timestamptz, OUT metadata jsonb,
									   OUT waits_from bigint)
RETURNS SETOF record
LANGUAGE sql STABLE ROWS 100 SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET jit = off AS
$$
	SELECT e.bucket, e.id, COALESCE(e.credit_of, e.id), e.kind, e.account_id,
		   e.to_account, e.amount, e.to_accounts, e.amounts, e.enqueued_at,
		   e.hold_id, e.expires_at, e.metadata, e.waits_from
	  FROM pg_catalog.generate_series(0, 63) k(bucket)
	  LEFT JOIN LATERAL (SELECT * FROM ledger.batches b WHERE b.bucket = k.bucket
						  ORDER BY b.id DESC LIMIT 1) l ON true
	  JOIN LATERAL
		   (SELECT e.* FROM (SELECT COALESCE(pg_catalog.pg_snapshot_xmax(l.prev), '0') AS lo,
									'18446744073709551615'::xid8 AS hi
							  UNION ALL
							  SELECT x, x FROM pg_catalog.pg_snapshot_xip(l.prev) x) r
			   JOIN ledger.event_log e
				 ON e.bucket = k.bucket AND e.txid >= r.lo AND e.txid <= r.hi
			 WHERE e.id > ledger.base_id()
			   AND NOT EXISTS (SELECT FROM ledger.outcomes o WHERE o.event_id = e.id)
			   AND NOT EXISTS (SELECT FROM ledger.deferred d WHERE d.event_id = e.id)
			   AND (l.id IS NULL
					OR NOT ledger.decided_by(l.prev, l.cur, l.cursor_txid, l.cursor_id, e.txid, e.id))
			UNION ALL
			SELECT e.* FROM ledger.deferred d JOIN ledger.event_log e ON e.id = d.event_id
			 WHERE d.bucket = k.bucket
			   AND NOT EXISTS (SELECT FROM ledger.outcomes o WHERE o.event_id = d.event_id)) e ON true
$$;
CREATE VIEW ledger.queue AS SELECT * FROM ledger.pending_entries();

/* The API, on the log */

DROP FUNCTION ledger_event(bigint);
CREATE FUNCTION ledger_event(event_id bigint,
							 OUT kind text, OUT account_id bigint,
							 OUT to_accounts bigint[], OUT amounts bigint[],
							 OUT amount bigint, OUT status text,
							 OUT reason text, OUT enqueued_at timestamptz,
							 OUT applied_at timestamptz, OUT hold_id bigint,
							 OUT expires_at timestamptz, OUT metadata jsonb)
RETURNS SETOF record
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT ledger.kind_name(e.kind),
		   e.account_id,
		   CASE WHEN e.kind IN ('t', 'h', 'p') THEN ARRAY[e.to_account] ELSE e.to_accounts END,
		   CASE WHEN e.kind IN ('t', 'h', 'p') THEN ARRAY[x.amount] ELSE e.amounts END,
		   x.amount,
		   CASE s.state WHEN 'p' THEN 'pending' WHEN 'a' THEN 'applied' ELSE 'rejected' END,
		   COALESCE(e.reason, (SELECT o.reason FROM ledger.outcomes o WHERE o.event_id = e.id)),
		   e.enqueued_at,
		   CASE WHEN s.state <> 'p' THEN ledger.decided_at(e) END,
		   e.hold_id, e.expires_at, e.metadata
	  FROM ledger.event_log e,
		   LATERAL (SELECT ledger.event_state(e) AS state) s,
		   LATERAL (SELECT CASE WHEN e.kind = 'p'
								THEN COALESCE((SELECT h.amount FROM ledger.hold_ends h
												WHERE h.event_id = e.id), e.amount)
								ELSE e.amount END AS amount) x
	 WHERE e.id = $1 AND e.credit_of IS NULL
$$;

CREATE OR REPLACE FUNCTION ledger_hold_status(hold_id bigint)
RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE ledger.row_state(e)
			   WHEN 'p' THEN 'pending'
			   WHEN 'r' THEN 'rejected'
			   ELSE CASE h.status WHEN 'p' THEN 'posted' WHEN 'v' THEN 'voided'
								  WHEN 'x' THEN 'expired' ELSE 'open' END
		   END
	  FROM ledger.event_log e
	  LEFT JOIN ledger.hold_ends h ON h.hold_id = e.id
	 WHERE e.id = $1 AND e.kind = 'h'
$$;

/*
 * Events, applied or pending, whose metadata contains the object given,
 * newest first, through the GIN index that holds only the events with
 * metadata.
 */
CREATE OR REPLACE FUNCTION ledger_find_events(metadata jsonb, max_rows integer DEFAULT 100,
								   OUT event_id bigint, OUT kind text,
								   OUT account_id bigint, OUT amount bigint,
								   OUT status text, OUT event_metadata jsonb)
RETURNS SETOF record
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF jsonb_typeof(ledger_find_events.metadata) <> 'object' THEN
		RAISE EXCEPTION 'metadata to find must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF max_rows < 0 THEN
		RAISE EXCEPTION 'max_rows must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		SELECT e.id, ledger.kind_name(e.kind), e.account_id,
			   CASE WHEN e.kind = 'p'
					THEN COALESCE((SELECT h.amount FROM ledger.hold_ends h
									WHERE h.event_id = e.id), e.amount)
					ELSE e.amount END,
			   CASE ledger.event_state(e) WHEN 'p' THEN 'pending' WHEN 'a' THEN 'applied'
										  ELSE 'rejected' END,
			   e.metadata
		  FROM ledger.event_log e
		 WHERE e.metadata IS NOT NULL AND e.metadata @> ledger_find_events.metadata
		   AND e.credit_of IS NULL
		 ORDER BY e.id DESC
		 LIMIT max_rows;
END
$$;

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
GRANT SELECT ON ledger_stats TO ledger_client;

/*
 * A row of ledger.transit arriving by replication (see ledger--1.2--1.3.sql):
 * a credit for this node is logged for its payees' buckets, as credits of
 * the event that sent it, and their workers are woken.
 */
CREATE OR REPLACE FUNCTION ledger.transit_arrived() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
	me		integer := ledger.node_id();
	queued	integer;
	buckets	integer[];
BEGIN
	IF pg_catalog.current_setting('session_replication_role') <> 'replica' THEN
		RETURN NEW;
	END IF;

	IF NEW.target_node = me AND NEW.source_node <> me THEN
		IF EXISTS (SELECT FROM ledger.transit t
					WHERE t.source_node = NEW.source_node AND t.id = NEW.id) THEN
			RETURN NULL;
		END IF;
		WITH p AS (
			SELECT a.bucket, p.account_id, p.amount, p.ord
			  FROM unnest(NEW.to_accounts, NEW.amounts) WITH ORDINALITY AS p(account_id, amount, ord)
			  JOIN ledger.accounts a ON a.id = p.account_id
		), q AS (
			INSERT INTO ledger.event_log (id, kind, account_id, amount, to_accounts, amounts,
										  enqueued_at, bucket, txid, credit_of)
			SELECT pg_catalog.nextval('ledger.event_id_seq'), 'c', NEW.payer, sum(p.amount),
				   array_agg(p.account_id ORDER BY p.ord), array_agg(p.amount ORDER BY p.ord),
				   pg_catalog.now(), p.bucket, pg_catalog.pg_current_xact_id(), NEW.event_id
			  FROM p GROUP BY p.bucket
			RETURNING bucket, cardinality(to_accounts) AS n
		)
		SELECT sum(q.n), array_agg(q.bucket) INTO queued, buckets FROM q;
		-- money in flight is never dropped: a payee not here stops the
		-- subscription, visibly, until the operator sees to it
		IF COALESCE(queued, 0) <> cardinality(NEW.to_accounts) THEN
			RAISE EXCEPTION 'credit %/% names payees that are not accounts of node %',
				NEW.source_node, NEW.id, me
				USING ERRCODE = 'foreign_key_violation',
					  DETAIL = pg_catalog.format('Payees: %s.', NEW.to_accounts);
		END IF;
		PERFORM @extschema@.ledger_wake_buckets(buckets);
		RETURN NEW;
	END IF;

	IF NEW.source_node = me THEN
		INSERT INTO ledger.transit_acks VALUES (NEW.source_node, NEW.id)
			ON CONFLICT DO NOTHING;
		PERFORM ledger.move_acked();
	END IF;
	RETURN NULL;
END
$$;

-- every idempotency key names an event of the log
CREATE OR REPLACE FUNCTION ledger.verify_keys(OUT problem text, OUT account_id bigint,
											  OUT event_id bigint, OUT expected bigint,
											  OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'key_without_event', NULL::bigint, i.event_id, NULL::bigint, NULL::bigint
	  FROM ledger.idempotency i
	 WHERE NOT EXISTS (SELECT FROM ledger.event_log e WHERE e.id = i.event_id)
$$;

REVOKE ALL ON FUNCTION
	ledger_event(bigint),
	ledger_hold_status(bigint),
	ledger_find_events(jsonb, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	ledger_event(bigint),
	ledger_hold_status(bigint),
	ledger_find_events(jsonb, integer)
TO ledger_client;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
-- for ledger_stats (the schema stays out of the clients' reach)
GRANT EXECUTE ON FUNCTION ledger.pending_entries() TO ledger_client;

/*
 * The audit reads whole tables: hash joins suit it, and so do index probes
 * for the legs under each breakpoint, whatever the statistics say.  After
 * a crash they are gone until the next analyze, and a planner that takes a
 * table of millions of legs for an empty one would join it in nested loops,
 * or scan it whole for every breakpoint.  The nested loops it cannot do
 * without are then costed as disabled, far above jit_above_cost: without
 * jit = off, every audit, even of an empty ledger, would first spend a
 * second or more compiling its plans.
 */
ALTER FUNCTION ledger_verify() SET enable_nestloop = off;
ALTER FUNCTION ledger_verify() SET jit = off;
ALTER FUNCTION ledger.verify_breakpoints() SET enable_seqscan = off;
