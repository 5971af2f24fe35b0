/*
 * ledger--1.2--1.3.sql: a ledger spread over several PostgreSQL nodes.
 *
 * Each node runs the ledger for the accounts of the buckets it owns; a
 * proxy database (extension ledger_proxy, over PL/Proxy) routes each call to
 * the node owning the paying account.  A credit for a payee on another node
 * leaves the paying node as a row of ledger.transit, written by the worker
 * in the batch that debits the payer, and reaches the payee's node by
 * PostgreSQL's logical replication.  There a trigger queues it for the
 * payee's worker, once: (source_node, id) is the primary key.  The row then
 * travels back, and the paying node moves its copy to ledger.transit_acked.
 *
 * A node with ledger.node_id = 0 (the default) is a ledger on its own, and
 * none of this is used.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.3'" to load this file. \quit

/*
 * The node map, the same on every node and on the proxy: the cluster's
 * buckets (a power of two of them) and the node owning each.  An account's
 * cluster bucket is its id modulo their number.
 */
CREATE TABLE ledger.cluster_nodes (
	node_id			integer PRIMARY KEY CHECK (node_id BETWEEN 1 AND 1023),
	conninfo		text NOT NULL
);
CREATE TABLE ledger.cluster_buckets (
	bucket			integer PRIMARY KEY CHECK (bucket >= 0),
	node_id			integer NOT NULL REFERENCES ledger.cluster_nodes
);

/*
 * Where every account of the cluster lives, with its currency: each node
 * publishes the rows of its own accounts, and receives the others'.  Paying
 * an account of another node needs only this.
 */
CREATE TABLE ledger.directory (
	account_id		bigint PRIMARY KEY,
	node_id			integer NOT NULL,
	currency		text NOT NULL
);

/*
 * Credits between nodes.  On the paying node (source_node) a row is a
 * credit sent and not yet confirmed; on the payee's node (target_node) a
 * credit received, kept as the proof that it was.  amount is the sum of
 * amounts; currency the code of the payees'.
 */
CREATE TABLE ledger.transit (
	source_node		integer NOT NULL,
	id				bigint NOT NULL,
	target_node		integer NOT NULL,
	event_id		bigint NOT NULL,
	payer			bigint NOT NULL,
	currency		text NOT NULL,
	to_accounts		bigint[] NOT NULL,
	amounts			bigint[] NOT NULL,
	amount			bigint NOT NULL,
	created_at		timestamptz NOT NULL,
	PRIMARY KEY (source_node, id)
);
CREATE INDEX ON ledger.transit (event_id);

/*
 * Confirmations received for credits sent.  A confirmation can arrive
 * before its credit's row is visible here (the row's transaction is durable,
 * and so replicated, a moment before it is visible), so confirmations are
 * kept until their rows can be moved to ledger.transit_acked.
 */
CREATE TABLE ledger.transit_acks (
	source_node		integer NOT NULL,
	id				bigint NOT NULL,
	PRIMARY KEY (source_node, id)
);

/* Credits sent that the payee's node confirmed it received. */
CREATE TABLE ledger.transit_acked (
	LIKE ledger.transit,
	acked_at		timestamptz NOT NULL,
	PRIMARY KEY (source_node, id)
);
CREATE INDEX ON ledger.transit_acked (event_id);

SELECT pg_catalog.pg_extension_config_dump('ledger.cluster_nodes', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.cluster_buckets', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.directory', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.transit', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.transit_acked', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.transit_acks', '');

CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.transit_acked
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.transit_acked
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

CREATE FUNCTION ledger.node_id() RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$ SELECT COALESCE(NULLIF(pg_catalog.current_setting('ledger.node_id', true), ''), '0')::integer $$;

/* A node's own accounts enter the directory as they are opened. */
CREATE FUNCTION ledger.list_account() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
	IF ledger.node_id() > 0 AND NEW.id > 0 THEN
		INSERT INTO ledger.directory
			SELECT NEW.id, ledger.node_id(), c.code
			  FROM ledger.currencies c WHERE c.no = NEW.currency;
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER list_account AFTER INSERT ON ledger.accounts
	FOR EACH ROW EXECUTE FUNCTION ledger.list_account();

CREATE FUNCTION ledger_wake_buckets(buckets integer[]) RETURNS void
AS 'MODULE_PATHNAME', 'ledger_wake_buckets'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION ledger_wake_buckets(integer[]) FROM PUBLIC;

/*
 * A row of ledger.transit arriving by replication (the apply worker runs
 * with session_replication_role = replica, hence ENABLE ALWAYS below):
 * - a credit for this node: queued for the payees' workers in the same
 *   transaction that stores the row, unless the row is here already (a
 *   redelivery), then nothing;
 * - a credit this node sent, coming back from the node that received it:
 *   the confirmation; the sent row moves to ledger.transit_acked;
 * - anything else (credits between two other nodes): dropped.
 * Rows written on this node (the workers bypass triggers) are left alone.
 */
CREATE FUNCTION ledger.transit_arrived() RETURNS trigger
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
			INSERT INTO ledger.queue (bucket, seq, id, kind, account_id, amount,
									  to_accounts, amounts, enqueued_at)
			SELECT p.bucket, pg_catalog.nextval('ledger.event_id_seq'), NEW.event_id, 'c',
				   NEW.payer, sum(p.amount), array_agg(p.account_id ORDER BY p.ord),
				   array_agg(p.amount ORDER BY p.ord), pg_catalog.now()
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

/* Move the credits sent whose confirmation arrived to transit_acked. */
CREATE FUNCTION ledger.move_acked() RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS
$$
	WITH moved AS (
		DELETE FROM ledger.transit t USING ledger.transit_acks a
		 WHERE t.source_node = a.source_node AND t.id = a.id
		RETURNING t.*
	), kept AS (
		INSERT INTO ledger.transit_acked
		SELECT m.source_node, m.id, m.target_node, m.event_id, m.payer, m.currency,
			   m.to_accounts, m.amounts, m.amount, m.created_at, pg_catalog.now()
		  FROM moved m
		RETURNING source_node, id
	), done AS (
		DELETE FROM ledger.transit_acks a USING kept k
		 WHERE a.source_node = k.source_node AND a.id = k.id
		RETURNING 1
	)
	SELECT count(*) FROM done
$$;
CREATE TRIGGER arrived BEFORE INSERT ON ledger.transit
	FOR EACH ROW EXECUTE FUNCTION ledger.transit_arrived();
ALTER TABLE ledger.transit ENABLE ALWAYS TRIGGER arrived;

/*
 * Make this database a node of the cluster described by the node map:
 * ledger.node_id must be set (and the server restarted) first.  Event ids
 * become node-tagged (node_id * 2^48 upwards), the node's accounts enter the
 * directory, and the publication the other nodes subscribe to is created.
 * Subscribing to the other nodes is done by CREATE SUBSCRIPTION, which
 * cannot run in a function: see the README.
 */
CREATE FUNCTION ledger_cluster_init() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
	me		integer := ledger.node_id();
	nb		integer;
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
 * What this node adds up to, per currency: its legs, the credits waiting
 * in its queue, the credits it sent to other nodes and those it received.
 * Summed over all nodes, legs + queued + sent - received is zero.
 */
CREATE FUNCTION ledger_node_totals(OUT node_id integer, OUT currency text,
								   OUT legs numeric, OUT queued numeric,
								   OUT sent numeric, OUT received numeric,
								   OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH per AS (
		SELECT c.code, t.amount::numeric AS legs, 0::numeric AS queued,
			   0::numeric AS sent, 0::numeric AS received
		  FROM ledger.transactions t
		  JOIN ledger.accounts a ON a.id = t.account_id
		  JOIN ledger.currencies c ON c.no = a.currency
		UNION ALL
		SELECT c.code, 0, q.amount, 0, 0
		  FROM ledger.queue q
		  JOIN ledger.accounts a ON a.id = q.to_accounts[1]
		  JOIN ledger.currencies c ON c.no = a.currency
		 WHERE q.kind = 'c'
		UNION ALL
		SELECT x.currency, 0, 0, x.amount, 0
		  FROM (SELECT t.currency, t.amount FROM ledger.transit t
				 WHERE t.source_node = ledger.node_id()
				UNION ALL
				SELECT k.currency, k.amount FROM ledger.transit_acked k) x
		UNION ALL
		SELECT t.currency, 0, 0, 0, t.amount
		  FROM ledger.transit t WHERE t.target_node = ledger.node_id()
	)
	SELECT ledger.node_id(), p.code, sum(p.legs), sum(p.queued), sum(p.sent),
		   sum(p.received),
		   (SELECT count(*) FROM ledger.queue)
	  FROM per p GROUP BY p.code
$$;
GRANT EXECUTE ON FUNCTION ledger_node_totals() TO ledger_client;

/*
 * The audit of one node of a cluster: as in 1.2, with credits sent to other
 * nodes counted as the missing halves of their events (whether confirmed or
 * not), and the legs of credits received from other nodes accounted to the
 * credits that brought them.  On a node that is not in a cluster there are
 * neither.
 */
CREATE OR REPLACE FUNCTION ledger_verify(OUT problem text, OUT account_id bigint,
										 OUT event_id bigint, OUT expected bigint,
										 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH legs AS (
		SELECT t.account_id, t.id, t.event_id, t.amount, t.balance_after,
			   sum(t.amount::numeric) OVER (PARTITION BY t.account_id ORDER BY t.id) AS running
		  FROM ledger.transactions t
	), sent AS (
		SELECT t.event_id, t.to_accounts, t.amounts, t.amount FROM ledger.transit t
		 WHERE t.source_node = ledger.node_id()
		UNION ALL
		SELECT k.event_id, k.to_accounts, k.amounts, k.amount FROM ledger.transit_acked k
	), received AS (
		SELECT t.event_id, t.to_accounts, t.amounts, t.amount, t.currency FROM ledger.transit t
		 WHERE t.target_node = ledger.node_id() AND t.source_node <> ledger.node_id()
	), in_flight AS (
		SELECT f.event_id, sum(f.amount) AS amount
		  FROM (SELECT q.id AS event_id, q.amount::numeric AS amount
				  FROM ledger.queue q WHERE q.kind = 'c'
				UNION ALL
				SELECT s.event_id, s.amount FROM sent s) f
		 GROUP BY f.event_id
	)
	-- each leg's running balance is the sum of the legs before it
	SELECT 'balance_after', l.account_id, l.event_id, l.running::bigint, l.balance_after
	  FROM legs l WHERE l.running IS DISTINCT FROM l.balance_after
	UNION ALL
	-- an account's balance is the sum of all its legs
	SELECT 'balance', a.id, NULL, s.total::bigint, @extschema@.ledger_balance(a.id)
	  FROM ledger.accounts a
	  LEFT JOIN (SELECT l.account_id, sum(l.amount::numeric) AS total
				   FROM legs l GROUP BY l.account_id) s ON s.account_id = a.id
	 WHERE COALESCE(s.total, 0) IS DISTINCT FROM @extschema@.ledger_balance(a.id)
	UNION ALL
	-- a breakpoint agrees with the legs it covers and those before it
	SELECT 'breakpoint', b.account_id, NULL,
		   (SELECT COALESCE(sum(l.amount::numeric), 0)::bigint FROM ledger.transactions l
			 WHERE l.account_id = b.account_id AND l.id <= b.last_txn_id),
		   b.current_balance
	  FROM ledger.breakpoints b
	 WHERE b.current_balance IS DISTINCT FROM
		   (SELECT COALESCE(sum(l.amount::numeric), 0) FROM ledger.transactions l
			 WHERE l.account_id = b.account_id AND l.id <= b.last_txn_id)
		OR b.previous_balance IS DISTINCT FROM
		   (SELECT COALESCE(sum(l.amount::numeric), 0) FROM ledger.transactions l
			 WHERE l.account_id = b.account_id AND l.id < b.first_txn_id)
		OR b.amount_difference::numeric <> b.current_balance::numeric - b.previous_balance
	UNION ALL
	-- every applied event's legs, with its credits in flight or sent to
	-- other nodes, sum to zero
	SELECT 'event_sum', NULL, e.id, 0, (COALESCE(s.total, 0) + COALESCE(f.amount, 0))::bigint
	  FROM ledger.events e
	  LEFT JOIN (SELECT l.event_id, sum(l.amount::numeric) AS total
				   FROM ledger.transactions l GROUP BY l.event_id) s ON s.event_id = e.id
	  LEFT JOIN in_flight f ON f.event_id = e.id
	 WHERE e.status = 'a' AND COALESCE(s.total, 0) + COALESCE(f.amount, 0) <> 0
	UNION ALL
	-- a credit received from another node posts exactly its payees' legs
	-- (once applied; until then its queue entries hold them)
	SELECT 'received_sum', NULL, r.event_id, r.amount,
		   (COALESCE((SELECT sum(l.amount) FROM ledger.transactions l
					   WHERE l.event_id = r.event_id), 0)
			+ COALESCE((SELECT sum(q.amount) FROM ledger.queue q
						 WHERE q.id = r.event_id AND q.kind = 'c'), 0))::bigint
	  FROM (SELECT r.event_id, sum(r.amount) AS amount FROM received r GROUP BY r.event_id) r
	 WHERE r.amount <> COALESCE((SELECT sum(l.amount) FROM ledger.transactions l
								  WHERE l.event_id = r.event_id), 0)
					   + COALESCE((SELECT sum(q.amount) FROM ledger.queue q
								    WHERE q.id = r.event_id AND q.kind = 'c'), 0)
	UNION ALL
	-- the legs of each event, posted, in flight or sent, are exactly the
	-- ones it names (the external accounts' legs are checked by event_sum);
	-- holds and voids move no money
	SELECT 'leg_mismatch', COALESCE(x.account_id, y.account_id),
		   COALESCE(x.event_id, y.event_id), x.amount, y.amount
	  FROM (SELECT e.id AS event_id, e.account_id,
				   CASE e.kind WHEN 'd' THEN e.amount ELSE -e.amount END AS amount
			  FROM ledger.events e WHERE e.status = 'a' AND e.kind IN ('d', 'w', 't', 's', 'p')
			UNION ALL
			SELECT e.id, e.to_account, e.amount
			  FROM ledger.events e WHERE e.status = 'a' AND e.kind IN ('t', 'p')
			UNION ALL
			SELECT e.id, p.account_id, p.amount
			  FROM ledger.events e, unnest(e.to_accounts, e.amounts) AS p(account_id, amount)
			 WHERE e.status = 'a' AND e.kind = 's') x
	  FULL JOIN
		   (SELECT l.event_id, l.account_id, l.amount
			  FROM ledger.transactions l
			 WHERE l.account_id > 0
			   AND NOT EXISTS (SELECT FROM received r WHERE r.event_id = l.event_id)
			UNION ALL
			SELECT q.id, p.account_id, p.amount
			  FROM ledger.queue q, unnest(q.to_accounts, q.amounts) AS p(account_id, amount)
			 WHERE q.kind = 'c'
			   AND NOT EXISTS (SELECT FROM received r WHERE r.event_id = q.id)
			UNION ALL
			SELECT s.event_id, p.account_id, p.amount
			  FROM sent s, unnest(s.to_accounts, s.amounts) AS p(account_id, amount)) y
		ON y.event_id = x.event_id AND y.account_id = x.account_id AND y.amount = x.amount
	 WHERE x.event_id IS NULL OR y.event_id IS NULL
	UNION ALL
	-- a rejected event posts nothing
	SELECT 'rejected_with_legs', NULL, e.id, 0, count(*)
	  FROM ledger.events e JOIN ledger.transactions l ON l.event_id = e.id
	 WHERE e.status = 'r'
	 GROUP BY e.id
	UNION ALL
	-- every leg belongs to an applied event, or to a credit received
	SELECT 'orphan_leg', l.account_id, l.event_id, NULL, l.amount
	  FROM ledger.transactions l
	 WHERE NOT EXISTS (SELECT 1 FROM ledger.events e WHERE e.id = l.event_id)
	   AND NOT EXISTS (SELECT 1 FROM received r WHERE r.event_id = l.event_id)
	UNION ALL
	-- a hold ends once, by an applied post or void of it or by expiry, and
	-- posts no more than it held
	SELECT 'hold_end', h.account_id, h.hold_id, e.amount, h.amount
	  FROM ledger.hold_ends h
	  LEFT JOIN ledger.events e ON e.id = h.hold_id AND e.kind = 'h' AND e.status = 'a'
	  LEFT JOIN ledger.events p ON p.id = h.event_id
	 WHERE e.id IS NULL
		OR h.amount < 0 OR h.amount > e.amount
		OR (h.status = 'p' AND (p.kind IS DISTINCT FROM 'p' OR p.status <> 'a'
								OR p.amount <> h.amount OR p.hold_id <> h.hold_id))
		OR (h.status = 'v' AND (p.kind IS DISTINCT FROM 'v' OR p.status <> 'a'
								OR h.amount <> 0 OR p.hold_id <> h.hold_id))
		OR (h.status = 'x' AND (h.event_id IS NOT NULL OR h.amount <> 0))
	UNION ALL
	-- an applied post or void ended its hold
	SELECT 'hold_end_missing', e.account_id, e.id, e.hold_id, NULL
	  FROM ledger.events e
	 WHERE e.status = 'a' AND e.kind IN ('p', 'v')
	   AND NOT EXISTS (SELECT 1 FROM ledger.hold_ends h
						WHERE h.hold_id = e.hold_id AND h.event_id = e.id)
	UNION ALL
	-- the legs of each event stay in one currency
	SELECT 'currency', NULL, l.event_id, NULL, count(DISTINCT a.currency)
	  FROM ledger.transactions l JOIN ledger.accounts a ON a.id = l.account_id
	 GROUP BY l.event_id
	HAVING count(DISTINCT a.currency) > 1
	UNION ALL
	-- in each currency, the legs, the credits waiting in the queue and those
	-- sent to other nodes, less those received from them, sum to zero
	SELECT 'total', NULL, NULL, 0, z.total::bigint
	  FROM (SELECT n.legs + n.queued + n.sent - n.received AS total
			  FROM @extschema@.ledger_node_totals() n) z
	 WHERE z.total <> 0
$$;
