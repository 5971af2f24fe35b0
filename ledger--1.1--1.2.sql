/*
 * ledger--1.1--1.2.sql: holds (two-phase transfers), account limits and a
 * spam guard, currencies, balances and history as of a time, and metadata.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.2'" to load this file. \quit

/*
 * Currencies.  Each gets a number when its first account is opened.  In a
 * ledger updated from 1.1 number 0 is the currency of every account opened
 * before, named after ledger.default_currency at the update ('XXX', "no
 * currency", if it was not set).  The external account of bucket b for the
 * currency numbered n is account -1 - b - 64 * n, so the external accounts
 * that existed before 1.2 keep their ids.
 */
CREATE TABLE ledger.currencies (
	no				integer PRIMARY KEY CHECK (no >= 0),
	code			text NOT NULL UNIQUE
);
-- only a ledger with accounts has a currency 0 yet: in a new one (or one
-- being restored, whose ledger.currencies comes from the dump) the first
-- account's currency is numbered 0
INSERT INTO ledger.currencies
	SELECT 0, COALESCE(NULLIF(pg_catalog.current_setting('ledger.default_currency', true), ''),
					   'XXX')
	 WHERE EXISTS (SELECT FROM ledger.accounts);
ALTER TABLE ledger.accounts
	ADD COLUMN currency integer NOT NULL DEFAULT 0 REFERENCES ledger.currencies (no);
ALTER TABLE ledger.accounts ALTER COLUMN currency DROP DEFAULT;

/*
 * New columns of the queue and of the events it becomes: the hold a post
 * or void ends, when a hold expires, and the caller's metadata.  Empty for
 * the events that do not use them.
 *
 * kind, besides 1.0's: 'h' hold, 'p' post (of a hold), 'v' void (of a hold).
 * A post's amount is 0 in the queue when it posts the whole hold; in
 * ledger.events it is the amount posted.
 */
ALTER TABLE ledger.queue ADD COLUMN hold_id bigint,
	ADD COLUMN expires_at timestamptz, ADD COLUMN metadata jsonb;
ALTER TABLE ledger.events ADD COLUMN hold_id bigint,
	ADD COLUMN expires_at timestamptz, ADD COLUMN metadata jsonb;

-- the spam guard counts a payer's pending events
CREATE INDEX queue_account_id_idx ON ledger.queue (account_id);

-- an account's holds, and events by their metadata; the partial indexes
-- cost nothing to events without holds or metadata
CREATE INDEX events_holds_idx ON ledger.events (account_id, id) WHERE kind = 'h';
CREATE INDEX events_metadata_idx ON ledger.events USING gin (metadata jsonb_path_ops)
	WHERE metadata IS NOT NULL;
CREATE INDEX queue_metadata_idx ON ledger.queue USING gin (metadata jsonb_path_ops)
	WHERE metadata IS NOT NULL;

/*
 * How each applied hold ended: posted ('p', with the amount posted and the
 * post's event), voided ('v') or expired ('x', by its worker).  A hold is
 * open while it has no row here; the primary key lets it end once.
 */
CREATE TABLE ledger.hold_ends (
	hold_id			bigint PRIMARY KEY,
	account_id		bigint NOT NULL,
	status			"char" NOT NULL,
	event_id		bigint,
	amount			bigint NOT NULL,
	ended_at		timestamptz NOT NULL
);

/*
 * Account limits, insert-only: an account's newest row is in force.  NULL
 * means no limit of that kind.
 */
CREATE TABLE ledger.limits (
	account_id			bigint NOT NULL,
	id					bigint GENERATED ALWAYS AS IDENTITY,
	overdraft_limit		bigint,
	max_amount			bigint,
	daily_debit_limit	bigint,
	set_at				timestamptz NOT NULL,
	PRIMARY KEY (account_id, id)
);

-- balances as of a time find the breakpoints around it
CREATE INDEX breakpoints_created_at_idx ON ledger.breakpoints (account_id, created_at);

SELECT pg_catalog.pg_extension_config_dump('ledger.currencies', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.hold_ends', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.limits', '');
SELECT pg_catalog.pg_extension_config_dump('ledger.limits_id_seq', '');

CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.hold_ends
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.hold_ends
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.limits
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.limits
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

/*
 * The enqueue functions gain a currency (accounts) or metadata (events)
 * argument: the old signatures go, so that calls naming fewer arguments
 * still resolve to exactly one function.
 */
DROP FUNCTION ledger_open_account(bigint, boolean);
DROP FUNCTION ledger_deposit(bigint, bigint, text);
DROP FUNCTION ledger_withdraw(bigint, bigint, text);
DROP FUNCTION ledger_transfer(bigint, bigint, bigint, text);
DROP FUNCTION ledger_disburse(bigint, bigint[], bigint[], text);
DROP FUNCTION ledger_transfer_many(bigint[], bigint[], bigint[], text[]);
DROP FUNCTION ledger_event(bigint);

CREATE FUNCTION ledger_open_account(account_id bigint,
									allow_negative boolean DEFAULT false,
									currency text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_open_account'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_deposit(account_id bigint, amount bigint,
							   idempotency_key text DEFAULT NULL,
							   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_deposit'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_withdraw(account_id bigint, amount bigint,
								idempotency_key text DEFAULT NULL,
								metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_withdraw'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_transfer(from_account bigint, to_account bigint,
								amount bigint,
								idempotency_key text DEFAULT NULL,
								metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_transfer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_disburse(from_account bigint, to_accounts bigint[],
								amounts bigint[],
								idempotency_key text DEFAULT NULL,
								metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_disburse'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_transfer_many(from_accounts bigint[],
									 to_accounts bigint[], amounts bigint[],
									 idempotency_keys text[] DEFAULT NULL,
									 metadata jsonb[] DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'ledger_transfer_many'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_hold(from_account bigint, to_account bigint,
							amount bigint, timeout interval DEFAULT NULL,
							idempotency_key text DEFAULT NULL,
							metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_hold'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_post(hold_id bigint, amount bigint DEFAULT NULL,
							idempotency_key text DEFAULT NULL,
							metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_post'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_void(hold_id bigint, idempotency_key text DEFAULT NULL,
							metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_void'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION ledger_set_limits(account_id bigint,
								  overdraft_limit bigint DEFAULT NULL,
								  max_amount bigint DEFAULT NULL,
								  daily_debit_limit bigint DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'ledger_set_limits'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/*
 * The state of a hold: 'pending' (not applied yet), 'rejected', 'open',
 * 'posted', 'voided' or 'expired'; NULL for an id that is not a hold.
 */
CREATE FUNCTION ledger_hold_status(hold_id bigint)
RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN EXISTS (SELECT 1 FROM ledger.queue q WHERE q.id = $1 AND q.kind = 'h')
			THEN 'pending'
		ELSE (SELECT CASE WHEN e.status = 'r' THEN 'rejected'
						  WHEN h.status = 'p' THEN 'posted'
						  WHEN h.status = 'v' THEN 'voided'
						  WHEN h.status = 'x' THEN 'expired'
						  ELSE 'open' END
				FROM ledger.events e
				LEFT JOIN ledger.hold_ends h ON h.hold_id = e.id
			   WHERE e.id = $1 AND e.kind = 'h')
	END
$$;

/*
 * Balance minus the account's open holds.  Reads the account's holds, open
 * or ended; a hold ends one way or another, by its timeout at the latest.
 */
CREATE FUNCTION ledger_available(account_id bigint)
RETURNS bigint
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT @extschema@.ledger_balance($1)
		   - COALESCE((SELECT sum(e.amount) FROM ledger.events e
					   WHERE e.account_id = $1 AND e.kind = 'h' AND e.status = 'a'
						 AND NOT EXISTS (SELECT 1 FROM ledger.hold_ends h
										  WHERE h.hold_id = e.id)), 0)::bigint
$$;

/*
 * The balance as of a time: the newest leg posted at or before it.  The
 * breakpoints on either side of that time bound the legs read to those of
 * one breakpoint interval, however long the history.
 */
CREATE FUNCTION ledger_balance(account_id bigint, as_of timestamptz)
RETURNS bigint
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT COALESCE(
		(SELECT t.balance_after FROM ledger.transactions t
		  WHERE t.account_id = a.id
			AND t.id > COALESCE(lo.last_txn_id, 0)
			AND t.id <= COALESCE(hi.last_txn_id, 9223372036854775807)
			AND t.created_at <= $2
		  ORDER BY t.id DESC LIMIT 1),
		lo.current_balance, 0)
	  FROM ledger.accounts a
	  LEFT JOIN LATERAL
		   (SELECT b.last_txn_id, b.current_balance FROM ledger.breakpoints b
			 WHERE b.account_id = a.id AND b.created_at <= $2
			 ORDER BY b.created_at DESC, b.last_txn_id DESC LIMIT 1) lo ON true
	  LEFT JOIN LATERAL
		   (SELECT b.last_txn_id FROM ledger.breakpoints b
			 WHERE b.account_id = a.id AND b.created_at > $2
			 ORDER BY b.created_at, b.last_txn_id LIMIT 1) hi ON true
	 WHERE a.id = $1
$$;

/*
 * The legs posted in [since, until), oldest first.  Bounded like the
 * balance as of a time: the legs read are those asked for, and at most a
 * breakpoint interval on either side.
 */
CREATE FUNCTION ledger_history(account_id bigint, since timestamptz,
							   until timestamptz,
							   OUT transaction_id bigint, OUT event_id bigint,
							   OUT amount bigint, OUT balance_after bigint,
							   OUT created_at timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT t.id, t.event_id, t.amount, t.balance_after, t.created_at
	  FROM ledger.transactions t
	  LEFT JOIN LATERAL
		   (SELECT b.last_txn_id FROM ledger.breakpoints b
			 WHERE b.account_id = $1 AND b.created_at < $2
			 ORDER BY b.created_at DESC, b.last_txn_id DESC LIMIT 1) lo ON true
	  LEFT JOIN LATERAL
		   (SELECT b.last_txn_id FROM ledger.breakpoints b
			 WHERE b.account_id = $1 AND b.created_at >= $3
			 ORDER BY b.created_at, b.last_txn_id LIMIT 1) hi ON true
	 WHERE t.account_id = $1
	   AND t.id > COALESCE(lo.last_txn_id, 0)
	   AND t.id <= COALESCE(hi.last_txn_id, 9223372036854775807)
	   AND t.created_at >= $2 AND t.created_at < $3
	 ORDER BY t.id
$$;

/* The name of an event kind, as ledger_event() and ledger_find_events() show it. */
CREATE FUNCTION ledger.kind_name(kind "char") RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS
$$
	SELECT CASE kind WHEN 'd' THEN 'deposit' WHEN 'w' THEN 'withdraw'
					 WHEN 't' THEN 'transfer' WHEN 's' THEN 'disburse'
					 WHEN 'h' THEN 'hold' WHEN 'p' THEN 'post'
					 ELSE 'void' END
$$;

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
	WITH ev AS (
		SELECT e.kind, e.account_id, e.to_account, e.to_accounts, e.amounts,
			   e.amount, e.status, e.reason, e.enqueued_at, e.applied_at,
			   e.hold_id, e.expires_at, e.metadata
		  FROM ledger.events e WHERE e.id = $1
		UNION ALL
		SELECT q.kind, q.account_id, q.to_account, q.to_accounts, q.amounts,
			   q.amount, 'p', NULL, q.enqueued_at, NULL,
			   q.hold_id, q.expires_at, q.metadata
		  FROM ledger.queue q WHERE q.id = $1 AND q.kind <> 'c'
	), st AS (
		SELECT @extschema@.ledger_event_status($1) AS status
	)
	SELECT ledger.kind_name(ev.kind),
		   ev.account_id,
		   CASE WHEN ev.kind IN ('t', 'h', 'p') THEN ARRAY[ev.to_account] ELSE ev.to_accounts END,
		   CASE WHEN ev.kind IN ('t', 'h', 'p') THEN ARRAY[ev.amount] ELSE ev.amounts END,
		   ev.amount, st.status, ev.reason, ev.enqueued_at,
		   CASE WHEN st.status = 'pending' THEN NULL ELSE ev.applied_at END,
		   ev.hold_id, ev.expires_at, ev.metadata
	  FROM ev, st
$$;

/*
 * Events, applied or pending, whose metadata contains the object given;
 * newest first.
 */
CREATE FUNCTION ledger_find_events(metadata jsonb, max_rows integer DEFAULT 100,
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
		SELECT f.id,
			   ledger.kind_name(f.kind),
			   f.account_id, f.amount, f.status, f.metadata
		  FROM (SELECT e.id, e.kind, e.account_id, e.amount,
					   CASE e.status WHEN 'a' THEN 'applied' ELSE 'rejected' END AS status,
					   e.metadata
				  FROM ledger.events e
				 WHERE e.metadata IS NOT NULL AND e.metadata @> ledger_find_events.metadata
				UNION ALL
				SELECT q.id, q.kind, q.account_id, q.amount, 'pending', q.metadata
				  FROM ledger.queue q
				 WHERE q.metadata IS NOT NULL AND q.metadata @> ledger_find_events.metadata
				   AND q.kind <> 'c') f
		 ORDER BY f.id DESC
		 LIMIT max_rows;
END
$$;

/*
 * The audit, extended: post events have legs like transfers, holds and
 * voids have none, holds end once and post no more than they held, and the
 * zero sum holds in each currency.
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
	-- names (the external accounts' legs are checked by event_sum); holds
	-- and voids move no money
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
	-- in each currency, all balances and credits in flight sum to zero
	SELECT 'total', NULL, NULL, 0, z.total::bigint
	  FROM (SELECT c.no, sum(s.amount) AS total
			  FROM ledger.currencies c
			  JOIN (SELECT a.currency, t.amount::numeric AS amount
					  FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
					UNION ALL
					SELECT a.currency, q.amount::numeric
					  FROM ledger.queue q JOIN ledger.accounts a ON a.id = q.account_id
					 WHERE q.kind = 'c') s ON s.currency = c.no
			 GROUP BY c.no) z
	 WHERE z.total <> 0
$$;

REVOKE ALL ON FUNCTION
	ledger_open_account(bigint, boolean, text),
	ledger_deposit(bigint, bigint, text, jsonb),
	ledger_withdraw(bigint, bigint, text, jsonb),
	ledger_transfer(bigint, bigint, bigint, text, jsonb),
	ledger_disburse(bigint, bigint[], bigint[], text, jsonb),
	ledger_transfer_many(bigint[], bigint[], bigint[], text[], jsonb[]),
	ledger_hold(bigint, bigint, bigint, interval, text, jsonb),
	ledger_post(bigint, bigint, text, jsonb),
	ledger_void(bigint, text, jsonb),
	ledger_set_limits(bigint, bigint, bigint, bigint),
	ledger_hold_status(bigint),
	ledger_available(bigint),
	ledger_balance(bigint, timestamptz),
	ledger_history(bigint, timestamptz, timestamptz),
	ledger_event(bigint),
	ledger_find_events(jsonb, integer)
FROM PUBLIC;

-- limits are the operator's: clients may not lift their own
GRANT EXECUTE ON FUNCTION
	ledger_open_account(bigint, boolean, text),
	ledger_deposit(bigint, bigint, text, jsonb),
	ledger_withdraw(bigint, bigint, text, jsonb),
	ledger_transfer(bigint, bigint, bigint, text, jsonb),
	ledger_disburse(bigint, bigint[], bigint[], text, jsonb),
	ledger_transfer_many(bigint[], bigint[], bigint[], text[], jsonb[]),
	ledger_hold(bigint, bigint, bigint, interval, text, jsonb),
	ledger_post(bigint, bigint, text, jsonb),
	ledger_void(bigint, text, jsonb),
	ledger_hold_status(bigint),
	ledger_available(bigint),
	ledger_balance(bigint, timestamptz),
	ledger_history(bigint, timestamptz, timestamptz),
	ledger_event(bigint),
	ledger_find_events(jsonb, integer)
TO ledger_client;
