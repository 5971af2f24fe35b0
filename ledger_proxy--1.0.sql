/*
 * ledger_proxy--1.0.sql: the front of a cluster of ledger nodes.
 *
 * Installed in a proxy database (not on a node), over PL/Proxy.  It exposes
 * the ledger's API under the same names and sends each call to the node
 * that owns the account paying (or read), or the node that issued the event
 * id (ids carry their node in their top bits).  The node map here must be
 * the same as the nodes' ledger.cluster_nodes and ledger.cluster_buckets.
 *
 * A call through the proxy is one transaction on one node; the hop is not
 * part of the caller's transaction.  A caller that loses the answer retries
 * with the same idempotency key and gets the same event.
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION ledger_proxy CASCADE" to load this file. \quit

CREATE SCHEMA ledger_proxy;
REVOKE ALL ON SCHEMA ledger_proxy FROM PUBLIC;

/* The node map: the cluster's buckets (2^k of them) and their nodes. */
CREATE TABLE ledger_proxy.nodes (
	node_id			integer PRIMARY KEY CHECK (node_id BETWEEN 1 AND 1023),
	conninfo		text NOT NULL
);
CREATE TABLE ledger_proxy.buckets (
	bucket			integer PRIMARY KEY CHECK (bucket >= 0),
	node_id			integer NOT NULL REFERENCES ledger_proxy.nodes
);
SELECT pg_catalog.pg_extension_config_dump('ledger_proxy.nodes', '');
SELECT pg_catalog.pg_extension_config_dump('ledger_proxy.buckets', '');

-- PL/Proxy reloads its partitions when this number changes
CREATE SEQUENCE ledger_proxy.map_version;
CREATE FUNCTION ledger_proxy.map_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
	PERFORM pg_catalog.nextval('ledger_proxy.map_version');
	RETURN NULL;
END
$$;
CREATE TRIGGER map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON ledger_proxy.nodes FOR EACH STATEMENT EXECUTE FUNCTION ledger_proxy.map_changed();
CREATE TRIGGER map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON ledger_proxy.buckets FOR EACH STATEMENT EXECUTE FUNCTION ledger_proxy.map_changed();

/*
 * PL/Proxy's cluster configuration API, on the node map: cluster "ledger"
 * has one partition per bucket, whose connection string is its node's
 * (partitions of one node share a connection).
 */
CREATE SCHEMA plproxy;
CREATE FUNCTION plproxy.get_cluster_version(cluster_name text) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
	IF cluster_name <> 'ledger' THEN
		RAISE EXCEPTION 'unknown cluster "%"', cluster_name
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN (SELECT v.last_value FROM ledger_proxy.map_version v)::integer;
END
$$;

CREATE FUNCTION plproxy.get_cluster_partitions(cluster_name text) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
	nb		integer := (SELECT count(*) FROM ledger_proxy.buckets);
BEGIN
	IF cluster_name <> 'ledger' THEN
		RAISE EXCEPTION 'unknown cluster "%"', cluster_name
			USING ERRCODE = 'undefined_object';
	END IF;
	IF nb = 0 OR nb & (nb - 1) <> 0
	   OR EXISTS (SELECT FROM ledger_proxy.buckets b WHERE b.bucket >= nb) THEN
		RAISE EXCEPTION 'ledger_proxy.buckets must number the buckets 0 to 2^k - 1'
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	RETURN QUERY SELECT n.conninfo FROM ledger_proxy.buckets b
				   JOIN ledger_proxy.nodes n ON n.node_id = b.node_id
				  ORDER BY b.bucket;
END
$$;

CREATE FUNCTION plproxy.get_cluster_config(IN cluster_name text,
										   OUT key text, OUT val text)
RETURNS SETOF record
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS
$$ SELECT 'connection_lifetime'::text, '3600'::text $$;

/* Routing: the bucket of an account, and a bucket of the node of an event. */
CREATE FUNCTION ledger_proxy.account_bucket(account_id bigint) RETURNS integer
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS
$$ SELECT (abs($1) % (SELECT count(*) FROM ledger_proxy.buckets))::integer $$;

CREATE FUNCTION ledger_proxy.event_bucket(event_id bigint) RETURNS integer
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS
$$
	SELECT COALESCE((SELECT min(b.bucket) FROM ledger_proxy.buckets b
					  WHERE b.node_id = ($1 >> 48)::integer), 0)
$$;

/* One bucket of each node, to run a call once on every node. */
CREATE FUNCTION ledger_proxy.node_buckets(OUT node_id integer, OUT bucket integer)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$ SELECT b.node_id, min(b.bucket) FROM ledger_proxy.buckets b GROUP BY b.node_id ORDER BY 1 $$;

/* The API, each call on one node. */
CREATE FUNCTION ledger_open_account(account_id bigint,
									allow_negative boolean DEFAULT false,
									currency text DEFAULT NULL)
RETURNS void AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_deposit(account_id bigint, amount bigint,
							   idempotency_key text DEFAULT NULL,
							   metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_withdraw(account_id bigint, amount bigint,
								idempotency_key text DEFAULT NULL,
								metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_transfer(from_account bigint, to_account bigint,
								amount bigint,
								idempotency_key text DEFAULT NULL,
								metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(from_account);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_disburse(from_account bigint, to_accounts bigint[],
								amounts bigint[],
								idempotency_key text DEFAULT NULL,
								metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(from_account);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_hold(from_account bigint, to_account bigint,
							amount bigint, timeout interval DEFAULT NULL,
							idempotency_key text DEFAULT NULL,
							metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(from_account);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_post(hold_id bigint, amount bigint DEFAULT NULL,
							idempotency_key text DEFAULT NULL,
							metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(hold_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_void(hold_id bigint, idempotency_key text DEFAULT NULL,
							metadata jsonb DEFAULT NULL)
RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(hold_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_event_status(event_id bigint) RETURNS text AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(event_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_wait(event_id bigint, timeout_ms integer DEFAULT 10000)
RETURNS text AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(event_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_hold_status(hold_id bigint) RETURNS text AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(hold_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_event(event_id bigint,
							 OUT kind text, OUT account_id bigint,
							 OUT to_accounts bigint[], OUT amounts bigint[],
							 OUT amount bigint, OUT status text,
							 OUT reason text, OUT enqueued_at timestamptz,
							 OUT applied_at timestamptz, OUT hold_id bigint,
							 OUT expires_at timestamptz, OUT metadata jsonb)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(event_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_balance(account_id bigint) RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_balance(account_id bigint, as_of timestamptz) RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_available(account_id bigint) RETURNS bigint AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_history(account_id bigint, max_rows integer DEFAULT 100,
							   OUT transaction_id bigint, OUT event_id bigint,
							   OUT amount bigint, OUT balance_after bigint,
							   OUT created_at timestamptz)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_history(account_id bigint, since timestamptz,
							   until timestamptz,
							   OUT transaction_id bigint, OUT event_id bigint,
							   OUT amount bigint, OUT balance_after bigint,
							   OUT created_at timestamptz)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;

/* Calls run on the node of a given bucket. */
CREATE FUNCTION ledger_proxy.transfer_many_at(bucket integer,
											  from_accounts bigint[],
											  to_accounts bigint[],
											  amounts bigint[],
											  idempotency_keys text[],
											  metadata jsonb[])
RETURNS bigint[] AS $$
	CLUSTER 'ledger';
	RUN ON bucket;
	SELECT ledger_transfer_many(from_accounts, to_accounts, amounts,
								idempotency_keys, metadata) AS transfer_many_at;
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_proxy.find_events_at(bucket integer, metadata jsonb,
											max_rows integer,
											OUT event_id bigint, OUT kind text,
											OUT account_id bigint, OUT amount bigint,
											OUT status text, OUT event_metadata jsonb)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON bucket;
	SELECT * FROM ledger_find_events(metadata, max_rows);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_proxy.verify_at(bucket integer,
									   OUT problem text, OUT account_id bigint,
									   OUT event_id bigint, OUT expected bigint,
									   OUT found bigint)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON bucket;
	SELECT * FROM ledger_verify();
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_proxy.totals_at(bucket integer,
									   OUT node_id integer, OUT currency text,
									   OUT legs numeric, OUT queued numeric,
									   OUT sent numeric, OUT received numeric,
									   OUT pending_events bigint)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON bucket;
	SELECT * FROM ledger_node_totals();
$$ LANGUAGE plproxy;

/*
 * Many transfers, each on its payer's node: one call per node, in the
 * order of their first transfers; ids returned in the order given.  Each
 * node's share commits on its own: after an error, some shares may have
 * been enqueued, and a retry with idempotency keys enqueues only the rest.
 */
CREATE FUNCTION ledger_transfer_many(from_accounts bigint[],
									 to_accounts bigint[], amounts bigint[],
									 idempotency_keys text[] DEFAULT NULL,
									 metadata jsonb[] DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
	result	bigint[] := '{}';
	share	record;
	ids		bigint[];
	i		integer;
BEGIN
	IF cardinality(from_accounts) IS DISTINCT FROM cardinality(to_accounts)
	   OR cardinality(from_accounts) IS DISTINCT FROM cardinality(amounts) THEN
		RAISE EXCEPTION 'from_accounts, to_accounts and amounts must have the same length'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR share IN
		SELECT min(b.bucket) AS bucket, array_agg(u.n ORDER BY u.n) AS positions
		  FROM unnest(from_accounts) WITH ORDINALITY AS u(account_id, n)
		  JOIN ledger_proxy.buckets b ON b.bucket = ledger_proxy.account_bucket(u.account_id)
		 GROUP BY b.node_id
		 ORDER BY min(u.n)
	LOOP
		ids := ledger_proxy.transfer_many_at(
			share.bucket,
			ARRAY(SELECT from_accounts[p] FROM unnest(share.positions) p),
			ARRAY(SELECT to_accounts[p] FROM unnest(share.positions) p),
			ARRAY(SELECT amounts[p] FROM unnest(share.positions) p),
			CASE WHEN idempotency_keys IS NULL THEN NULL
				 ELSE ARRAY(SELECT idempotency_keys[p] FROM unnest(share.positions) p) END,
			CASE WHEN metadata IS NULL THEN NULL
				 ELSE ARRAY(SELECT metadata[p] FROM unnest(share.positions) p) END);
		FOR i IN 1 .. cardinality(share.positions) LOOP
			result[share.positions[i]] := ids[i];
		END LOOP;
	END LOOP;
	RETURN result;
END
$$;

/* Events of every node whose metadata contains the object given. */
CREATE FUNCTION ledger_find_events(metadata jsonb, max_rows integer DEFAULT 100,
								   OUT event_id bigint, OUT kind text,
								   OUT account_id bigint, OUT amount bigint,
								   OUT status text, OUT event_metadata jsonb)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT f.* FROM ledger_proxy.node_buckets() n,
		   LATERAL ledger_proxy.find_events_at(n.bucket, $1, $2) f
	 ORDER BY f.event_id DESC LIMIT $2
$$;

/*
 * The audit of the whole cluster: each node's own ledger_verify() (a node
 * counts the credits it sent as the missing halves of their events, and
 * accounts for the legs of those it received), then, per currency, the
 * balances of all nodes and the credits in flight: the credits queued on
 * the nodes, and those sent to another node and not yet received there.
 * Rows mean trouble; none means the books of the cluster balance.
 */
CREATE FUNCTION ledger_verify_cluster(OUT node_id integer, OUT problem text,
									  OUT account_id bigint, OUT event_id bigint,
									  OUT expected numeric, OUT found numeric)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT n.node_id, v.problem, v.account_id, v.event_id, v.expected, v.found
	  FROM ledger_proxy.node_buckets() n, LATERAL ledger_proxy.verify_at(n.bucket) v
	UNION ALL
	SELECT NULL, 'cluster_total ' || t.currency, NULL, NULL, 0,
		   sum(t.legs + t.queued) + sum(t.sent) - sum(t.received)
	  FROM ledger_proxy.node_buckets() n, LATERAL ledger_proxy.totals_at(n.bucket) t
	 GROUP BY t.currency
	HAVING sum(t.legs + t.queued) + sum(t.sent) - sum(t.received) <> 0
	UNION ALL
	-- a credit is received at most once: never more received than sent
	SELECT NULL, 'received_more_than_sent ' || t.currency, NULL, NULL,
		   sum(t.sent), sum(t.received)
	  FROM ledger_proxy.node_buckets() n, LATERAL ledger_proxy.totals_at(n.bucket) t
	 GROUP BY t.currency
	HAVING sum(t.received) > sum(t.sent)
$$;

/* Per node and currency: what ledger_verify_cluster() adds up. */
CREATE FUNCTION ledger_cluster_totals(OUT node_id integer, OUT currency text,
									  OUT legs numeric, OUT queued numeric,
									  OUT sent numeric, OUT received numeric,
									  OUT pending_events bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT t.* FROM ledger_proxy.node_buckets() n, LATERAL ledger_proxy.totals_at(n.bucket) t
	 ORDER BY 1, 2
$$;
