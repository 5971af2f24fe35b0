/* ledger--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION ledger" to load this file. \quit

/*
 * Storage.  The tables live in schema "ledger", out of the callers' way; the
 * API functions live in the schema the extension is created in.  Only the
 * extension's own functions and workers write these tables: clients get
 * EXECUTE on the functions, nothing on the tables.
 *
 * Every table is insert-only except ledger.queue, which holds the events not
 * yet applied and is emptied as the workers apply them.
 */
CREATE SCHEMA ledger;
REVOKE ALL ON SCHEMA ledger FROM PUBLIC;

/*
 * Accounts.  The bucket is fixed when the account is opened, so an account's
 * events are always applied by one worker, whatever ledger.buckets becomes.
 * Ids <= 0 are reserved: account -1 - b is the external account of bucket b,
 * the other side of every deposit and withdrawal applied in that bucket.
 */
CREATE TABLE ledger.accounts (
	id				bigint PRIMARY KEY,
	allow_negative	boolean NOT NULL,
	bucket			integer NOT NULL,
	opened_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);

/*
 * Events waiting to be applied, with their whole payload.  Applying an event
 * moves it from here to ledger.events in the same transaction that posts its
 * legs.  A cross-bucket credit is queued here too, in the payee's bucket,
 * under the id of the event it completes (kind 'c').
 *
 * A bucket's worker applies its entries in seq order: an event's seq is its
 * id, a credit's is drawn when the credit is queued, both from
 * ledger.event_id_seq.
 *
 * kind: 'd' deposit, 'w' withdraw, 't' transfer, 's' disburse, 'c' credit.
 */
CREATE TABLE ledger.queue (
	bucket			integer NOT NULL,
	seq				bigint NOT NULL,
	id				bigint NOT NULL,
	kind			"char" NOT NULL,
	account_id		bigint NOT NULL,
	to_account		bigint,
	amount			bigint NOT NULL,
	to_accounts		bigint[],
	amounts			bigint[],
	enqueued_at		timestamptz NOT NULL,
	PRIMARY KEY (bucket, seq)
);
-- status look-ups find an event's queue entries by id alone
CREATE INDEX ON ledger.queue (id);

CREATE SEQUENCE ledger.event_id_seq;

/* Applied and rejected events (status 'a' or 'r'), written once. */
CREATE TABLE ledger.events (
	id				bigint PRIMARY KEY,
	kind			"char" NOT NULL,
	account_id		bigint NOT NULL,
	to_account		bigint,
	amount			bigint NOT NULL,
	to_accounts		bigint[],
	amounts			bigint[],
	status			"char" NOT NULL,
	reason			text,
	enqueued_at		timestamptz NOT NULL,
	applied_at		timestamptz NOT NULL
);

CREATE TABLE ledger.idempotency (
	key				text PRIMARY KEY,
	event_id		bigint NOT NULL
);

/*
 * The transaction history: one row per leg.  balance_after is the account's
 * running balance including this leg, so the newest leg of an account is its
 * balance: reading a balance costs one index probe however long the history.
 */
CREATE TABLE ledger.transactions (
	id				bigint NOT NULL,
	account_id		bigint NOT NULL,
	event_id		bigint NOT NULL,
	amount			bigint NOT NULL,
	balance_after	bigint NOT NULL,
	created_at		timestamptz NOT NULL,
	PRIMARY KEY (account_id, id)
);

-- leg ids are handed out by the workers; a cache keeps them off each
-- other's toes, and each account's legs still come from one worker in order
CREATE SEQUENCE ledger.transaction_id_seq CACHE 1000;

/*
 * Breakpoints: every ledger.breakpoint_interval legs of an account its worker
 * condenses them into one row, per the design: the balance before and after
 * the range, the difference, and the first and last leg ids covered.
 */
CREATE TABLE ledger.breakpoints (
	account_id			bigint NOT NULL,
	previous_balance	bigint NOT NULL,
	current_balance		bigint NOT NULL,
	amount_difference	bigint NOT NULL,
	first_txn_id		bigint NOT NULL,
	last_txn_id			bigint NOT NULL,
	created_at			timestamptz NOT NULL,
	PRIMARY KEY (account_id, last_txn_id)
);

SELECT pg_catalog.pg_extension_config_dump('ledger.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.queue', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.events', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.idempotency', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.transactions', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.breakpoints', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.transaction_id_seq', '');

/* The history is immutable. */
CREATE FUNCTION ledger.refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
	RAISE EXCEPTION 'ledger history is immutable'
		USING ERRCODE = 'insufficient_privilege',
			  DETAIL = pg_catalog.format('%s on %s.%s is not allowed.',
										 TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME),
			  HINT = 'Move money with a new event instead.';
END
$$;

CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.transactions
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.transactions
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.events
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.events
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.breakpoints
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.breakpoints
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

/*
 * The API.  Enqueueing is in C; reads are SQL.  All of them run with the
 * extension owner's rights and a pinned search_path, so that a role granted
 * only EXECUTE (ledger_client) can use the ledger without seeing its tables.
 */
CREATE FUNCTION ledger_open_account(account_id bigint,
									allow_negative boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_open_account'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_deposit(account_id bigint, amount bigint,
							   idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_deposit'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_withdraw(account_id bigint, amount bigint,
								idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_withdraw'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_transfer(from_account bigint, to_account bigint,
								amount bigint,
								idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_transfer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_disburse(from_account bigint, to_accounts bigint[],
								amounts bigint[],
								idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_disburse'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_transfer_many(from_accounts bigint[],
									 to_accounts bigint[], amounts bigint[],
									 idempotency_keys text[] DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'ledger_transfer_many'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*
 * An event is pending while any queue entry carries its id: its own before
 * its payer's bucket applies it, then the credits it sent to other buckets.
 */
CREATE FUNCTION ledger_event_status(event_id bigint)
RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN EXISTS (SELECT 1 FROM ledger.queue q WHERE q.id = $1) THEN 'pending'
		ELSE (SELECT CASE e.status WHEN 'a' THEN 'applied' ELSE 'rejected' END
			  FROM ledger.events e WHERE e.id = $1)
	END
$$;

CREATE FUNCTION ledger_wait(event_id bigint, timeout_ms integer DEFAULT 10000)
RETURNS text
AS 'MODULE_PATHNAME', 'ledger_wait'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_event(event_id bigint,
							 OUT kind text, OUT account_id bigint,
							 OUT to_accounts bigint[], OUT amounts bigint[],
							 OUT amount bigint, OUT status text,
							 OUT reason text, OUT enqueued_at timestamptz,
							 OUT applied_at timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH ev AS (
		SELECT e.kind, e.account_id, e.to_account, e.to_accounts, e.amounts,
			   e.amount, e.status, e.reason, e.enqueued_at, e.applied_at
		  FROM ledger.events e WHERE e.id = $1
		UNION ALL
		SELECT q.kind, q.account_id, q.to_account, q.to_accounts, q.amounts,
			   q.amount, 'p', NULL, q.enqueued_at, NULL
		  FROM ledger.queue q WHERE q.id = $1 AND q.kind <> 'c'
	), st AS (
		SELECT @extschema@.ledger_event_status($1) AS status
	)
	SELECT CASE ev.kind WHEN 'd' THEN 'deposit' WHEN 'w' THEN 'withdraw'
						WHEN 't' THEN 'transfer' ELSE 'disburse' END,
		   ev.account_id,
		   CASE WHEN ev.kind = 't' THEN ARRAY[ev.to_account] ELSE ev.to_accounts END,
		   CASE WHEN ev.kind = 't' THEN ARRAY[ev.amount] ELSE ev.amounts END,
		   ev.amount, st.status, ev.reason, ev.enqueued_at,
		   CASE WHEN st.status = 'pending' THEN NULL ELSE ev.applied_at END
	  FROM ev, st
$$;

CREATE FUNCTION ledger_balance(account_id bigint)
RETURNS bigint
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT COALESCE((SELECT t.balance_after FROM ledger.transactions t
					  WHERE t.account_id = a.id ORDER BY t.id DESC LIMIT 1), 0)
	  FROM ledger.accounts a WHERE a.id = $1
$$;

CREATE FUNCTION ledger_history(account_id bigint, max_rows integer DEFAULT 100,
							   OUT transaction_id bigint, OUT event_id bigint,
							   OUT amount bigint, OUT balance_after bigint,
							   OUT created_at timestamptz)
RETURNS SETOF record
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF max_rows < 0 THEN
		RAISE EXCEPTION 'max_rows must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		SELECT t.id, t.event_id, t.amount, t.balance_after, t.created_at
		  FROM ledger.transactions t
		 WHERE t.account_id = ledger_history.account_id
		 ORDER BY t.id DESC
		 LIMIT max_rows;
END
$$;

/*
 * The audit.  Everything is recomputed from the legs themselves; a healthy
 * ledger returns no rows.  Credits still in flight between buckets count as
 * the missing half of their events.
 */
CREATE FUNCTION ledger_verify(OUT problem text, OUT account_id bigint,
							  OUT event_id bigint, OUT expected bigint,
							  OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	WITH legs AS (
		SELECT t.account_id, t.id, t.event_id, t.amount, t.balance_after,
			   sum(t.amount::numeric) OVER (PARTITION BY t.account_id ORDER BY t.id) AS running
		  FROM ledger.transactions t
	), in_flight AS (
		SELECT q.id AS event_id, sum(q.amount::numeric) AS amount
		  FROM ledger.queue q WHERE q.kind = 'c' GROUP BY q.id
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
	-- every applied event's legs, with its credits in flight, sum to zero
	SELECT 'event_sum', NULL, e.id, 0, (COALESCE(s.total, 0) + COALESCE(f.amount, 0))::bigint
	  FROM ledger.events e
	  LEFT JOIN (SELECT l.event_id, sum(l.amount::numeric) AS total
				   FROM ledger.transactions l GROUP BY l.event_id) s ON s.event_id = e.id
	  LEFT JOIN in_flight f ON f.event_id = e.id
	 WHERE e.status = 'a' AND COALESCE(s.total, 0) + COALESCE(f.amount, 0) <> 0
	UNION ALL
	-- the legs of each event, posted or in flight, are exactly the ones it
	-- names (the external accounts' legs are checked by event_sum)
	SELECT 'leg_mismatch', COALESCE(x.account_id, y.account_id),
		   COALESCE(x.event_id, y.event_id), x.amount, y.amount
	  FROM (SELECT e.id AS event_id, e.account_id,
				   CASE e.kind WHEN 'd' THEN e.amount ELSE -e.amount END AS amount
			  FROM ledger.events e WHERE e.status = 'a'
			UNION ALL
			SELECT e.id, e.to_account, e.amount
			  FROM ledger.events e WHERE e.status = 'a' AND e.kind = 't'
			UNION ALL
			SELECT e.id, p.account_id, p.amount
			  FROM ledger.events e, unnest(e.to_accounts, e.amounts) AS p(account_id, amount)
			 WHERE e.status = 'a' AND e.kind = 's') x
	  FULL JOIN
		   (SELECT l.event_id, l.account_id, l.amount
			  FROM ledger.transactions l WHERE l.account_id > 0
			UNION ALL
			SELECT q.id, p.account_id, p.amount
			  FROM ledger.queue q, unnest(q.to_accounts, q.amounts) AS p(account_id, amount)
			 WHERE q.kind = 'c') y
		ON y.event_id = x.event_id AND y.account_id = x.account_id AND y.amount = x.amount
	 WHERE x.event_id IS NULL OR y.event_id IS NULL
	UNION ALL
	-- a rejected event posts nothing
	SELECT 'rejected_with_legs', NULL, e.id, 0, count(*)
	  FROM ledger.events e JOIN ledger.transactions l ON l.event_id = e.id
	 WHERE e.status = 'r'
	 GROUP BY e.id
	UNION ALL
	-- every leg belongs to an applied event
	SELECT 'orphan_leg', l.account_id, l.event_id, NULL, l.amount
	  FROM ledger.transactions l
	 WHERE NOT EXISTS (SELECT 1 FROM ledger.events e WHERE e.id = l.event_id)
	UNION ALL
	-- all balances and credits in flight sum to zero
	SELECT 'total', NULL, NULL, 0, z.total::bigint
	  FROM (SELECT (SELECT COALESCE(sum(t.amount::numeric), 0) FROM ledger.transactions t)
				   + (SELECT COALESCE(sum(f.amount), 0) FROM in_flight f) AS total) z
	 WHERE z.total <> 0
$$;

/* The workers serve one database: say so when this is another. */
DO $$
BEGIN
	IF pg_catalog.current_setting('ledger.database', true) IS DISTINCT FROM pg_catalog.current_database() THEN
		RAISE WARNING 'the ledger workers do not serve database "%"', pg_catalog.current_database()
			USING DETAIL = pg_catalog.format('ledger.database is %s; events queued here stay pending.',
											 COALESCE(pg_catalog.quote_literal(pg_catalog.current_setting('ledger.database', true)), 'not set')),
				  HINT = 'Set ledger.database to this database and restart the server, with ledger in shared_preload_libraries.';
	END IF;
END
$$;

/* Who may use it: members of ledger_client, and the extension's owner. */
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'ledger_client') THEN
		CREATE ROLE ledger_client NOLOGIN;
	END IF;
END
$$;

REVOKE ALL ON FUNCTION
	ledger_open_account(bigint, boolean),
	ledger_deposit(bigint, bigint, text),
	ledger_withdraw(bigint, bigint, text),
	ledger_transfer(bigint, bigint, bigint, text),
	ledger_disburse(bigint, bigint[], bigint[], text),
	ledger_transfer_many(bigint[], bigint[], bigint[], text[]),
	ledger_event_status(bigint),
	ledger_wait(bigint, integer),
	ledger_event(bigint),
	ledger_balance(bigint),
	ledger_history(bigint, integer),
	ledger_verify()
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
	ledger_open_account(bigint, boolean),
	ledger_deposit(bigint, bigint, text),
	ledger_withdraw(bigint, bigint, text),
	ledger_transfer(bigint, bigint, bigint, text),
	ledger_disburse(bigint, bigint[], bigint[], text),
	ledger_transfer_many(bigint[], bigint[], bigint[], text[]),
	ledger_event_status(bigint),
	ledger_wait(bigint, integer),
	ledger_event(bigint),
	ledger_balance(bigint),
	ledger_history(bigint, integer),
	ledger_verify()
TO ledger_client;
