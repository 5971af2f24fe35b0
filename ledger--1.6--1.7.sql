/*
 * ledger--1.6--1.7.sql: the cluster as a user meets it.
 *
 * - ledger_cluster_init() refuses a node map under which some of the node's
 *   workers would never receive an account;
 * - ledger_wait(..., until => 'credited') waits until the credits of an
 *   event have reached the nodes of its payees;
 * - ledger_node_money() gives per currency the external money, the
 *   customers' and the money in flight, which ledger_proxy sums over the
 *   cluster.
 *
 * No table changes: the 1.7 library serves a 1.6 schema as well until this
 * update runs.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.7'" to load this file. \quit

/*
 * The workers of a node that the node map leaves without accounts (see
 * src/node_map.c); empty while the map is.
 */
CREATE FUNCTION ledger.unmapped_workers(node integer) RETURNS integer[]
AS 'MODULE_PATHNAME', 'ledger_unmapped_workers_sql'
LANGUAGE C STABLE STRICT;

CREATE OR REPLACE FUNCTION ledger_cluster_init() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
	me		integer := ledger.node_id();
	nb		integer;
	idle	integer[];
	lo		bigint;
BEGIN
	IF me = 0 THEN
		RAISE EXCEPTION 'ledger.node_id is not set'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Set ledger.node_id in postgresql.conf and restart the server.';
	END IF;
	IF NOT EXISTS (SELECT FROM ledger.cluster_nodes n WHERE n.node_id = me) THEN
		RAISE EXCEPTION 'node % is not in ledger.cluster_nodes', me
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	SELECT count(*) INTO nb FROM ledger.cluster_buckets;
	IF nb = 0 OR nb & (nb - 1) <> 0
	   OR EXISTS (SELECT FROM ledger.cluster_buckets b WHERE b.bucket >= nb) THEN
		RAISE EXCEPTION 'ledger.cluster_buckets must number the buckets 0 to 2^k - 1'
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	idle := ledger.unmapped_workers(me);
	IF idle <> '{}' THEN
		RAISE EXCEPTION 'the node map leaves workers % of node % without accounts', idle, me
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = pg_catalog.format('Node %s owns cluster buckets %s of %s; an account goes to the worker of its id modulo ledger.buckets (%s), and none of those ids falls to these workers.',
											 me,
											 (SELECT array_agg(b.bucket ORDER BY b.bucket)
												FROM ledger.cluster_buckets b WHERE b.node_id = me),
											 nb, pg_catalog.current_setting('ledger.buckets')),
				  HINT = 'Give each node consecutive cluster buckets, at least ledger.buckets of them (node 1 buckets 0 and 1, node 2 buckets 2 and 3, ...), or lower ledger.buckets.';
	END IF;
	IF EXISTS (SELECT FROM ledger.accounts a
				WHERE a.id > 0 AND (SELECT b.node_id FROM ledger.cluster_buckets b
									 WHERE b.bucket = a.id % nb) IS DISTINCT FROM me) THEN
		RAISE EXCEPTION 'node % holds accounts of buckets it does not own', me
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;

	lo := me::bigint << 48;
	IF (SELECT s.last_value FROM ledger.event_id_seq s) < lo THEN
		EXECUTE pg_catalog.format('ALTER SEQUENCE ledger.event_id_seq MINVALUE %s MAXVALUE %s START WITH %s RESTART WITH %s',
								  lo, lo + (1::bigint << 48) - 1, lo + 1, lo + 1);
	END IF;

	INSERT INTO ledger.directory
		SELECT a.id, me, c.code FROM ledger.accounts a JOIN ledger.currencies c ON c.no = a.currency
		 WHERE a.id > 0
		ON CONFLICT DO NOTHING;

	IF NOT EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.pubname = 'ledger_cluster') THEN
		EXECUTE pg_catalog.format('CREATE PUBLICATION ledger_cluster'
								  ' FOR TABLE ledger.directory WHERE (node_id = %s),'
								  ' ledger.transit WHERE (source_node = %s OR target_node = %s)'
								  ' WITH (publish = ''insert'')', me, me, me);
	END IF;
END
$$;
REVOKE ALL ON FUNCTION ledger_cluster_init() FROM PUBLIC;

/*
 * Wake the backends sleeping in ledger_wait() once the current transaction
 * commits: a confirmation from a payee's node changes no batch, yet makes
 * its event credited.
 */
CREATE FUNCTION ledger.wake_waiters() RETURNS void
AS 'MODULE_PATHNAME', 'ledger_wake_waiters'
LANGUAGE C VOLATILE;

/* As in 1.6, and a confirmation wakes those waiting for the credit. */
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
		PERFORM ledger.wake_waiters();
	END IF;
	RETURN NULL;
END
$$;

/*
 * Move the credits sent whose confirmation arrived to transit_acked, each
 * by its key.  ledger.transit also keeps every credit this node received,
 * for good: the join 1.3 made read it whole at every confirmation, so a
 * node's confirmations cost more the more it had received.
 */
CREATE OR REPLACE FUNCTION ledger.move_acked() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
	a		record;
	moved	bigint := 0;
BEGIN
	FOR a IN SELECT k.source_node, k.id FROM ledger.transit_acks k LOOP
		WITH m AS (
			DELETE FROM ledger.transit t
			 WHERE t.source_node = a.source_node AND t.id = a.id
			RETURNING t.*
		)
		INSERT INTO ledger.transit_acked
		SELECT m.source_node, m.id, m.target_node, m.event_id, m.payer, m.currency,
			   m.to_accounts, m.amounts, m.amount, m.created_at, pg_catalog.now()
		  FROM m;
		-- a confirmation can come before its row is visible: it waits
		IF FOUND THEN
			DELETE FROM ledger.transit_acks k
			 WHERE k.source_node = a.source_node AND k.id = a.id;
			moved := moved + 1;
		END IF;
	END LOOP;
	RETURN moved;
END
$$;

/*
 * ledger_wait() learns what to wait for: 'decided' (applied or rejected, as
 * before) or 'credited' (applied, and every credit to a payee on another
 * node received there: the payee's node has confirmed it).
 */
DROP FUNCTION ledger_wait(bigint, integer);
CREATE FUNCTION ledger_wait(event_id bigint, timeout_ms integer DEFAULT 10000,
							until text DEFAULT 'decided')
RETURNS text
AS 'MODULE_PATHNAME', 'ledger_wait'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION ledger_wait(bigint, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_wait(bigint, integer, text) TO ledger_client;

/*
 * This node's money per currency: what the external accounts hold (the
 * money that came in, negated), what the customers' accounts hold, and the
 * money in flight (credits waiting for their payees' workers, and credits
 * sent to other nodes less those received from them).  The three sum to
 * zero over the nodes of a cluster, and on a ledger on its own.
 */
CREATE FUNCTION ledger_node_money(OUT node_id integer, OUT currency text,
								  OUT external numeric, OUT customers numeric,
								  OUT in_flight numeric)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH legs AS (
		SELECT c.code,
			   sum(t.amount) FILTER (WHERE t.account_id < 0) AS external,
			   sum(t.amount) FILTER (WHERE t.account_id > 0) AS customers
		  FROM ledger.transactions t
		  JOIN ledger.accounts a ON a.id = t.account_id
		  JOIN ledger.currencies c ON c.no = a.currency
		 GROUP BY c.code
	)
	SELECT n.node_id, n.currency, COALESCE(l.external, 0), COALESCE(l.customers, 0),
		   n.queued + n.sent - n.received
	  FROM @extschema@.ledger_node_totals() n
	  LEFT JOIN legs l ON l.code = n.currency
	 ORDER BY n.currency
$$;
REVOKE ALL ON FUNCTION ledger_node_money() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger_node_money() TO ledger_client;

REVOKE ALL ON FUNCTION ledger.wake_waiters(), ledger.unmapped_workers(integer) FROM PUBLIC;

/*
 * ledger_stats shows a worker's errors: how many passes in a row failed
 * (the worker waits longer after each before it tries again), and the last
 * error's message and time.
 */
DROP VIEW ledger_stats;
DROP FUNCTION ledger_worker_stats();
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
	SELECT s.bucket, s.pid, s.state, s.paused,
		   s.events_applied, s.events_rejected, s.credits_applied,
		   s.batches, s.last_batch_ms, s.avg_batch_ms, s.last_batch_size,
		   s.avg_batch_size, s.last_batch_at, s.events_per_second,
		   q.pending, q.lag, s.failures, s.last_error, s.last_error_at
	  FROM @extschema@.ledger_worker_stats() s
	  LEFT JOIN LATERAL
		   (SELECT pg_catalog.count(*) AS pending,
				   pg_catalog.now() - pg_catalog.min(q.enqueued_at) AS lag
			  FROM ledger.queue q
			 WHERE q.bucket % pg_catalog.current_setting('ledger.buckets')::integer = s.bucket) q
		ON true;
GRANT SELECT ON ledger_stats TO ledger_client;
