/*
 * ledger_proxy--1.1--1.2.sql: the API of ledger 1.7 through the proxy.
 *
 * - External accounts are refused: each node numbers its own (one per
 *   bucket and currency, from -1 down), so an id up to zero names a
 *   different account on every node and no routing could be right.
 *   ledger_cluster_money() gives the cluster's external money instead.
 * - ledger_wait(..., until => 'credited').
 * - ledger_proxy.config: PL/Proxy's connection settings (timeouts).
 * - Any role may call through the proxy, as the README always said: until
 *   1.2 only a superuser could, the routing reading the node map in a
 *   schema no one else may use.  The nodes decide, since the proxy connects
 *   to them as its caller; the map stays readable only through the routing
 *   functions, which run as the extension's owner.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger_proxy UPDATE TO '1.2'" to load this file. \quit

CREATE FUNCTION ledger_proxy.refuse_external(account_id bigint) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
	RAISE EXCEPTION 'account % cannot be reached through the proxy', account_id
		USING ERRCODE = 'invalid_parameter_value',
			  DETAIL = 'Ids up to zero are the external accounts, and every node numbers its own: the id names a different account on each node.',
			  HINT = 'ledger_cluster_money() gives the external money of the whole cluster per currency; read a node''s external accounts on that node.';
END
$$;

CREATE OR REPLACE FUNCTION ledger_proxy.account_bucket(account_id bigint) RETURNS integer
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS
$$
	SELECT CASE WHEN $1 > 0
				THEN ($1 % (SELECT count(*) FROM ledger_proxy.buckets))::integer
				ELSE ledger_proxy.refuse_external($1) END
$$;

/* The node of a bucket. */
CREATE FUNCTION ledger_proxy.bucket_node(bucket integer) RETURNS integer
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS
$$ SELECT b.node_id FROM ledger_proxy.buckets b WHERE b.bucket = $1 $$;

GRANT USAGE ON SCHEMA ledger_proxy, plproxy TO PUBLIC;
ALTER FUNCTION ledger_proxy.account_bucket(bigint) SECURITY DEFINER;
ALTER FUNCTION ledger_proxy.event_bucket(bigint) SECURITY DEFINER;
ALTER FUNCTION ledger_proxy.node_buckets() SECURITY DEFINER;
ALTER FUNCTION ledger_proxy.bucket_node(integer) SECURITY DEFINER;
ALTER FUNCTION plproxy.get_cluster_version(text) SECURITY DEFINER;
ALTER FUNCTION plproxy.get_cluster_partitions(text) SECURITY DEFINER;

/*
 * PL/Proxy's settings for its connections to the nodes, a row each (keys
 * as PL/Proxy's documentation gives them: query_timeout, keepalive_idle,
 * ...); connection_lifetime is an hour unless set here.  A query_timeout
 * makes a call to a node cut off by the network fail after that many
 * seconds instead of waiting for TCP to give up; connect_timeout goes in
 * the nodes' connection strings.
 */
CREATE TABLE ledger_proxy.config (
	key				text PRIMARY KEY,
	val				text NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('ledger_proxy.config', '');
CREATE TRIGGER map_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON ledger_proxy.config FOR EACH STATEMENT EXECUTE FUNCTION ledger_proxy.map_changed();

CREATE OR REPLACE FUNCTION plproxy.get_cluster_config(IN cluster_name text,
													 OUT key text, OUT val text)
RETURNS SETOF record
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'connection_lifetime'::text, '3600'::text
	 WHERE NOT EXISTS (SELECT FROM ledger_proxy.config c WHERE c.key = 'connection_lifetime')
	UNION ALL
	SELECT c.key, c.val FROM ledger_proxy.config c
$$;

/* As in 1.0, grouping the transfers by node through the routing functions. */
CREATE OR REPLACE FUNCTION ledger_transfer_many(from_accounts bigint[],
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
		SELECT min(r.bucket) AS bucket, array_agg(r.n ORDER BY r.n) AS positions
		  FROM (SELECT u.n, ledger_proxy.account_bucket(u.account_id) AS bucket
				  FROM unnest(from_accounts) WITH ORDINALITY AS u(account_id, n)) r
		 GROUP BY ledger_proxy.bucket_node(r.bucket)
		 ORDER BY min(r.n)
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

DROP FUNCTION ledger_wait(bigint, integer);
CREATE FUNCTION ledger_wait(event_id bigint, timeout_ms integer DEFAULT 10000,
							until text DEFAULT 'decided')
RETURNS text AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.event_bucket(event_id);
$$ LANGUAGE plproxy;

CREATE FUNCTION ledger_proxy.money_at(bucket integer,
									  OUT node_id integer, OUT currency text,
									  OUT external numeric, OUT customers numeric,
									  OUT in_flight numeric)
RETURNS SETOF record AS $$
	CLUSTER 'ledger';
	RUN ON bucket;
	SELECT * FROM ledger_node_money();
$$ LANGUAGE plproxy;

/*
 * The cluster's money per currency: what came in from outside (the
 * external accounts, negated), what the customers hold, and what is on its
 * way from a payer's node or bucket to its payees.  The three sum to zero.
 */
CREATE FUNCTION ledger_cluster_money(OUT currency text, OUT external numeric,
									 OUT customers numeric, OUT in_flight numeric)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT m.currency, sum(m.external), sum(m.customers), sum(m.in_flight)
	  FROM ledger_proxy.node_buckets() n, LATERAL ledger_proxy.money_at(n.bucket) m
	 GROUP BY m.currency
	 ORDER BY m.currency
$$;
