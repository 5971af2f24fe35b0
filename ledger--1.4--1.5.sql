/*
 * ledger--1.4--1.5.sql: the trust boundary.
 *
 * Up to 1.4 a member of ledger_client could open accounts that may go
 * negative and deposit without bound, reuse an idempotency key to be told
 * an event happened that did not, and stall a worker with credits that
 * could not be posted.  1.5 draws the boundary where a bank would:
 * - two roles: ledger_client moves money between existing accounts and
 *   reads; ledger_operator (a member of ledger_client) also opens accounts,
 *   moves money across the ledger's edge (deposits, withdrawals), sets
 *   limits, pauses workers and audits;
 * - accounts may have an owner role: only its members may debit them;
 * - an idempotency key names one request of one role, and a retry with
 *   other arguments is an error naming what differs;
 * - every bucket bounds, per currency, what its accounts may owe (negative
 *   balances and holds beyond the balance): the money of a currency can
 *   then never pass the range of bigint, so no balance can overflow and a
 *   credit always posts;
 * - an account's open holds are kept as a running total, so that reading
 *   them costs one probe however many holds the account had;
 * - an event whose payer is credited by an earlier event of the same
 *   transaction, from another bucket, waits for that credit.
 *
 * The 1.5 library serves this schema only: until the update its workers
 * wait and its enqueue functions refuse, with a hint to run ALTER
 * EXTENSION ledger UPDATE.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.5'" to load this file. \quit

/* The second role: operators of the ledger, clients with more rights. */
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ledger_operator') THEN
		CREATE ROLE ledger_operator NOLOGIN;
	END IF;
	IF NOT pg_catalog.pg_has_role('ledger_operator', 'ledger_client', 'MEMBER') THEN
		GRANT ledger_client TO ledger_operator;
	END IF;
END
$$;

/*
 * An account's owner role, or NULL: only the owner's members (and
 * superusers) may debit an owned account.  regrole, so that a dump names
 * the role rather than its OID.
 */
ALTER TABLE ledger.accounts ADD COLUMN owner regrole;

/*
 * Idempotency keys are per role.  kind and request describe the request the
 * key first named: request is four 8-byte digests (SHA-256, truncated) of
 * its accounts, amounts, hold (a post's or void's) or timeout (a hold's),
 * and metadata, so that a retry is told apart from another request without
 * reading the event.  Keys recorded before 1.5 belong to no role (0) and
 * carry no request: they answer as they did, with their event, to any
 * caller.
 */
ALTER TABLE ledger.idempotency ADD COLUMN role regrole,
	ADD COLUMN kind "char", ADD COLUMN request bytea;
UPDATE ledger.idempotency SET role = 0::oid::regrole;
ALTER TABLE ledger.idempotency ALTER COLUMN role SET NOT NULL;
ALTER TABLE ledger.idempotency DROP CONSTRAINT idempotency_pkey;
ALTER TABLE ledger.idempotency ADD PRIMARY KEY (role, key);

/*
 * A debit enqueued after its transaction queued a credit of its payer from
 * another bucket: the first such credit's event id.  While the debit would
 * be refused for want of money, it waits for the credits to its payer from
 * that id on (NULL for nearly every event).
 */
ALTER TABLE ledger.queue ADD COLUMN waits_from bigint;

/*
 * The total of each account's open holds, after every batch that changed
 * it: insert-only, the newest row per account is in force.  Ids come from
 * the legs' sequence.
 */
CREATE TABLE ledger.account_holds (
	account_id		bigint NOT NULL,
	id				bigint NOT NULL,
	held			bigint NOT NULL,
	changed_at		timestamptz NOT NULL,
	PRIMARY KEY (account_id, id)
);
INSERT INTO ledger.account_holds
	SELECT e.account_id, pg_catalog.nextval('ledger.transaction_id_seq'),
		   sum(e.amount), pg_catalog.now()
	  FROM ledger.events e
	 WHERE e.kind = 'h' AND e.status = 'a'
	   AND NOT EXISTS (SELECT FROM ledger.hold_ends h WHERE h.hold_id = e.id)
	 GROUP BY e.account_id;
SELECT pg_catalog.pg_extension_config_dump('ledger.account_holds', '');
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.account_holds
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.account_holds
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

/* Every kind by its name; NULL for none. */
CREATE OR REPLACE FUNCTION ledger.kind_name(kind "char") RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS
$$
	SELECT CASE kind WHEN 'd' THEN 'deposit' WHEN 'w' THEN 'withdraw'
					 WHEN 't' THEN 'transfer' WHEN 's' THEN 'disburse'
					 WHEN 'h' THEN 'hold' WHEN 'p' THEN 'post'
					 WHEN 'v' THEN 'void' WHEN 'c' THEN 'credit' END
$$;

/*
 * The enqueue functions run as their caller: the library itself switches to
 * the extension's owner and pins the search path for the statements it runs
 * (src/caller.c), so that it knows who calls (for owners and idempotency
 * keys) and spares every call the save and restore of a SET clause.
 */
CREATE OR REPLACE FUNCTION ledger_deposit(account_id bigint, amount bigint,
										  idempotency_key text DEFAULT NULL,
										  metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_deposit'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_withdraw(account_id bigint, amount bigint,
										   idempotency_key text DEFAULT NULL,
										   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_withdraw'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_transfer(from_account bigint, to_account bigint,
										   amount bigint,
										   idempotency_key text DEFAULT NULL,
										   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_transfer'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_disburse(from_account bigint, to_accounts bigint[],
										   amounts bigint[],
										   idempotency_key text DEFAULT NULL,
										   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_disburse'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_transfer_many(from_accounts bigint[],
												to_accounts bigint[], amounts bigint[],
												idempotency_keys text[] DEFAULT NULL,
												metadata jsonb[] DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'ledger_transfer_many'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_hold(from_account bigint, to_account bigint,
									   amount bigint, timeout interval DEFAULT NULL,
									   idempotency_key text DEFAULT NULL,
									   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_hold'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_post(hold_id bigint, amount bigint DEFAULT NULL,
									   idempotency_key text DEFAULT NULL,
									   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_post'
LANGUAGE C VOLATILE;

CREATE OR REPLACE FUNCTION ledger_void(hold_id bigint, idempotency_key text DEFAULT NULL,
									   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_void'
LANGUAGE C VOLATILE;

/* Opening an account gains its owner. */
DROP FUNCTION ledger_open_account(bigint, boolean, text);
CREATE FUNCTION ledger_open_account(account_id bigint,
									allow_negative boolean DEFAULT false,
									currency text DEFAULT NULL,
									owner regrole DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_open_account'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*
 * The external account of a bucket for a currency (by number), as the
 * library computes it: -1 - bucket - 64 * currency.
 */
CREATE FUNCTION ledger.external_account(bucket integer, currency integer)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_external_account'
LANGUAGE C IMMUTABLE STRICT;

/* The bound on what the accounts of one bucket may owe, per currency. */
CREATE FUNCTION ledger_supply_bound()
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_supply_bound'
LANGUAGE C IMMUTABLE;

/*
 * Balance minus open holds: the newest running total of the account's
 * holds.  Computed wide and saturated at the ends of bigint, so that an
 * account that may go negative, near the edge, with a large hold, still
 * gets an answer.
 */
CREATE OR REPLACE FUNCTION ledger_available(account_id bigint)
RETURNS bigint
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT GREATEST(LEAST(@extschema@.ledger_balance($1)::numeric
						  - COALESCE((SELECT h.held FROM ledger.account_holds h
									   WHERE h.account_id = $1
									   ORDER BY h.id DESC LIMIT 1), 0),
						  9223372036854775807),
					-9223372036854775808)::bigint
$$;

/*
 * The audit, one function per invariant (ledger.verify_*), each returning
 * the rows that break it; ledger_verify() returns them all.  An update
 * replaces only the invariants that change.
 */

-- each leg's running balance is the sum of the legs before it
CREATE FUNCTION ledger.verify_running_balances(OUT problem text, OUT account_id bigint,
											   OUT event_id bigint, OUT expected bigint,
											   OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'balance_after', l.account_id, l.event_id, l.running::bigint, l.balance_after
	  FROM (SELECT t.account_id, t.event_id, t.balance_after,
				   sum(t.amount::numeric) OVER (PARTITION BY t.account_id ORDER BY t.id) AS running
			  FROM ledger.transactions t) l
	 WHERE l.running IS DISTINCT FROM l.balance_after
$$;

-- an account's balance is the sum of all its legs
CREATE FUNCTION ledger.verify_balances(OUT problem text, OUT account_id bigint,
									   OUT event_id bigint, OUT expected bigint,
									   OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'balance', a.id, NULL::bigint, s.total::bigint, @extschema@.ledger_balance(a.id)
	  FROM ledger.accounts a
	  LEFT JOIN (SELECT t.account_id, sum(t.amount::numeric) AS total
				   FROM ledger.transactions t GROUP BY t.account_id) s ON s.account_id = a.id
	 WHERE COALESCE(s.total, 0) IS DISTINCT FROM @extschema@.ledger_balance(a.id)
$$;

-- a breakpoint agrees with the legs it covers and those before it
CREATE FUNCTION ledger.verify_breakpoints(OUT problem text, OUT account_id bigint,
										  OUT event_id bigint, OUT expected bigint,
										  OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'breakpoint', b.account_id, NULL::bigint,
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
$$;

/*
 * Credits this node sent to other nodes (confirmed or not), and those it
 * received from them: empty on a ledger on its own.
 */
CREATE FUNCTION ledger.credits_sent(OUT event_id bigint, OUT to_accounts bigint[],
									OUT amounts bigint[], OUT amount bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT t.event_id, t.to_accounts, t.amounts, t.amount FROM ledger.transit t
	 WHERE t.source_node = ledger.node_id()
	UNION ALL
	SELECT k.event_id, k.to_accounts, k.amounts, k.amount FROM ledger.transit_acked k
$$;

CREATE FUNCTION ledger.credits_received(OUT event_id bigint, OUT amount bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT t.event_id, t.amount FROM ledger.transit t
	 WHERE t.target_node = ledger.node_id() AND t.source_node <> ledger.node_id()
$$;

-- every applied event's legs, with its credits queued in other buckets or
-- sent to other nodes, sum to zero
CREATE FUNCTION ledger.verify_event_sums(OUT problem text, OUT account_id bigint,
										 OUT event_id bigint, OUT expected bigint,
										 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'event_sum', NULL::bigint, e.id, 0::bigint, (COALESCE(s.total, 0) + COALESCE(f.amount, 0))::bigint
	  FROM ledger.events e
	  LEFT JOIN (SELECT l.event_id, sum(l.amount::numeric) AS total
				   FROM ledger.transactions l GROUP BY l.event_id) s ON s.event_id = e.id
	  LEFT JOIN (SELECT f.event_id, sum(f.amount) AS amount
				   FROM (SELECT q.id AS event_id, q.amount::numeric AS amount
						   FROM ledger.queue q WHERE q.kind = 'c'
						 UNION ALL
						 SELECT s.event_id, s.amount FROM ledger.credits_sent() s) f
				  GROUP BY f.event_id) f ON f.event_id = e.id
	 WHERE e.status = 'a' AND COALESCE(s.total, 0) + COALESCE(f.amount, 0) <> 0
$$;

-- a credit received from another node posts exactly its payees' legs (once
-- applied; until then its queue entries hold them): one pass over the legs
CREATE FUNCTION ledger.verify_received_credits(OUT problem text, OUT account_id bigint,
											   OUT event_id bigint, OUT expected bigint,
											   OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	WITH r AS (
		SELECT r.event_id, sum(r.amount::numeric) AS amount
		  FROM ledger.credits_received() r GROUP BY r.event_id
	), got AS (
		SELECT g.event_id, sum(g.amount) AS amount
		  FROM (SELECT l.event_id, l.amount::numeric AS amount
				  FROM ledger.transactions l WHERE l.event_id IN (SELECT r.event_id FROM r)
				UNION ALL
				SELECT q.id, q.amount::numeric
				  FROM ledger.queue q
				 WHERE q.kind = 'c' AND q.id IN (SELECT r.event_id FROM r)) g
		 GROUP BY g.event_id
	)
	SELECT 'received_sum', NULL::bigint, r.event_id, r.amount::bigint, COALESCE(got.amount, 0)::bigint
	  FROM r LEFT JOIN got ON got.event_id = r.event_id
	 WHERE r.amount <> COALESCE(got.amount, 0)
$$;

-- the legs of each event, posted, queued or sent, are exactly the ones it
-- names (the external accounts' legs are checked by the event sums); holds
-- and voids move no money
CREATE FUNCTION ledger.verify_legs(OUT problem text, OUT account_id bigint,
								   OUT event_id bigint, OUT expected bigint,
								   OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	WITH received AS (SELECT DISTINCT r.event_id FROM ledger.credits_received() r)
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
			   AND l.event_id NOT IN (SELECT r.event_id FROM received r)
			UNION ALL
			SELECT q.id, p.account_id, p.amount
			  FROM ledger.queue q, unnest(q.to_accounts, q.amounts) AS p(account_id, amount)
			 WHERE q.kind = 'c'
			   AND q.id NOT IN (SELECT r.event_id FROM received r)
			UNION ALL
			SELECT s.event_id, p.account_id, p.amount
			  FROM ledger.credits_sent() s, unnest(s.to_accounts, s.amounts) AS p(account_id, amount)) y
		ON y.event_id = x.event_id AND y.account_id = x.account_id AND y.amount = x.amount
	 WHERE x.event_id IS NULL OR y.event_id IS NULL
$$;

-- a rejected event posts nothing, and every leg belongs to an applied
-- event or to a credit received
CREATE FUNCTION ledger.verify_leg_owners(OUT problem text, OUT account_id bigint,
										 OUT event_id bigint, OUT expected bigint,
										 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'rejected_with_legs', NULL::bigint, e.id, 0::bigint, count(*)
	  FROM ledger.events e JOIN ledger.transactions l ON l.event_id = e.id
	 WHERE e.status = 'r'
	 GROUP BY e.id
	UNION ALL
	SELECT 'orphan_leg', l.account_id, l.event_id, NULL::bigint, l.amount
	  FROM ledger.transactions l
	 WHERE NOT EXISTS (SELECT 1 FROM ledger.events e WHERE e.id = l.event_id)
	   AND l.event_id NOT IN (SELECT r.event_id FROM ledger.credits_received() r)
$$;

-- a hold ends once, by an applied post or void of it or by expiry, and
-- posts no more than it held; an applied post or void ended its hold
CREATE FUNCTION ledger.verify_hold_ends(OUT problem text, OUT account_id bigint,
										OUT event_id bigint, OUT expected bigint,
										OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
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
	SELECT 'hold_end_missing', e.account_id, e.id, e.hold_id, NULL::bigint
	  FROM ledger.events e
	 WHERE e.status = 'a' AND e.kind IN ('p', 'v')
	   AND NOT EXISTS (SELECT 1 FROM ledger.hold_ends h
						WHERE h.hold_id = e.hold_id AND h.event_id = e.id)
$$;

-- an account's running total of open holds is the sum of its open holds
CREATE FUNCTION ledger.verify_held(OUT problem text, OUT account_id bigint,
								   OUT event_id bigint, OUT expected bigint,
								   OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	WITH open AS (
		SELECT e.account_id, sum(e.amount::numeric) AS held
		  FROM ledger.events e
		 WHERE e.kind = 'h' AND e.status = 'a'
		   AND NOT EXISTS (SELECT FROM ledger.hold_ends h WHERE h.hold_id = e.id)
		 GROUP BY e.account_id
	), total AS (
		SELECT DISTINCT ON (h.account_id) h.account_id, h.held
		  FROM ledger.account_holds h
		 ORDER BY h.account_id, h.id DESC
	)
	SELECT 'held', COALESCE(o.account_id, t.account_id), NULL::bigint,
		   COALESCE(o.held, 0)::bigint, COALESCE(t.held, 0)
	  FROM open o FULL JOIN total t ON t.account_id = o.account_id
	 WHERE COALESCE(o.held, 0) <> COALESCE(t.held, 0)
$$;

-- the legs of each event stay in one currency
CREATE FUNCTION ledger.verify_currencies(OUT problem text, OUT account_id bigint,
										 OUT event_id bigint, OUT expected bigint,
										 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'currency', NULL::bigint, l.event_id, NULL::bigint, count(DISTINCT a.currency)
	  FROM ledger.transactions l JOIN ledger.accounts a ON a.id = l.account_id
	 GROUP BY l.event_id
	HAVING count(DISTINCT a.currency) > 1
$$;

-- every idempotency key names an event that exists, pending or decided
CREATE FUNCTION ledger.verify_keys(OUT problem text, OUT account_id bigint,
								   OUT event_id bigint, OUT expected bigint,
								   OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'key_without_event', NULL::bigint, i.event_id, NULL::bigint, NULL::bigint
	  FROM ledger.idempotency i
	 WHERE NOT EXISTS (SELECT FROM ledger.events e WHERE e.id = i.event_id)
	   AND NOT EXISTS (SELECT FROM ledger.queue q WHERE q.id = i.event_id AND q.kind <> 'c')
$$;

-- in each currency, the legs, the credits waiting in the queue and those
-- sent to other nodes, less those received from them, sum to zero
CREATE FUNCTION ledger.verify_totals(OUT problem text, OUT account_id bigint,
									 OUT event_id bigint, OUT expected bigint,
									 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	SELECT 'total', NULL::bigint, NULL::bigint, 0::bigint, z.total::bigint
	  FROM (SELECT n.legs + n.queued + n.sent - n.received AS total
			  FROM @extschema@.ledger_node_totals() n) z
	 WHERE z.total <> 0
$$;

CREATE OR REPLACE FUNCTION ledger_verify(OUT problem text, OUT account_id bigint,
										 OUT event_id bigint, OUT expected bigint,
										 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT * FROM ledger.verify_running_balances()
	UNION ALL SELECT * FROM ledger.verify_balances()
	UNION ALL SELECT * FROM ledger.verify_breakpoints()
	UNION ALL SELECT * FROM ledger.verify_event_sums()
	UNION ALL SELECT * FROM ledger.verify_received_credits()
	UNION ALL SELECT * FROM ledger.verify_legs()
	UNION ALL SELECT * FROM ledger.verify_leg_owners()
	UNION ALL SELECT * FROM ledger.verify_hold_ends()
	UNION ALL SELECT * FROM ledger.verify_held()
	UNION ALL SELECT * FROM ledger.verify_currencies()
	UNION ALL SELECT * FROM ledger.verify_keys()
	UNION ALL SELECT * FROM ledger.verify_totals()
$$;

/*
 * What an operator should look at, beside the books: events pending longer
 * than pending_after, oldest first (at most max_rows), each with why it
 * waits; and the buckets whose accounts owe more than 90% of the supply
 * bound in a currency.
 */
CREATE FUNCTION ledger_health(pending_after interval DEFAULT '1 minute',
							  max_rows integer DEFAULT 100,
							  OUT problem text, OUT bucket integer,
							  OUT event_id bigint, OUT account_id bigint,
							  OUT since timestamptz, OUT detail text)
RETURNS SETOF record
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH workers AS (
		SELECT w.bucket AS worker, w.pid, w.paused FROM @extschema@.ledger_worker_stats() w
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

/*
 * Who may call what.  ledger_client: money between existing accounts, and
 * reads.  ledger_operator (a member of ledger_client): also accounts, money
 * across the edge, limits, the workers, the audit.  Nothing for PUBLIC.
 */
REVOKE ALL ON FUNCTION
	ledger_deposit(bigint, bigint, text, jsonb),
	ledger_withdraw(bigint, bigint, text, jsonb),
	ledger_open_account(bigint, boolean, text, regrole),
	ledger_verify(),
	ledger_node_totals(),
	ledger_supply_bound(),
	ledger_health(interval, integer)
FROM PUBLIC, ledger_client;
GRANT EXECUTE ON FUNCTION ledger_node_totals(), ledger_supply_bound() TO ledger_client;
GRANT EXECUTE ON FUNCTION
	ledger_open_account(bigint, boolean, text, regrole),
	ledger_deposit(bigint, bigint, text, jsonb),
	ledger_withdraw(bigint, bigint, text, jsonb),
	ledger_set_limits(bigint, bigint, bigint, bigint),
	ledger_pause(integer),
	ledger_resume(integer),
	ledger_stats_reset(),
	ledger_verify(),
	ledger_health(interval, integer)
TO ledger_operator;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
