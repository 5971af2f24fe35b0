/* ledger--1.8--1.9.sql */

\echo Use "ALTER EXTENSION ledger UPDATE TO '1.9'" to load this file. \quit

/*
 * 1.9 adds, in the same insert-only, batch-applied design: a hash chain over
 * each bucket's applied history (tamper evidence), linked transfers (all or
 * nothing across payers and buckets), closing and reopening accounts, and
 * importing a history with its original times.
 */

ALTER TABLE ledger.event_log
	ADD COLUMN occurred_at timestamptz,
	ADD COLUMN link_of bigint;
-- the transfers of a linked group, by the group (its first transfer's id)
CREATE INDEX event_log_link_of_idx ON ledger.event_log (link_of)
	WHERE link_of IS NOT NULL;

CREATE OR REPLACE FUNCTION ledger.kind_name(kind "char") RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS
$$
	SELECT CASE kind WHEN 'd' THEN 'deposit' WHEN 'w' THEN 'withdraw'
					 WHEN 't' THEN 'transfer' WHEN 's' THEN 'disburse'
					 WHEN 'h' THEN 'hold' WHEN 'p' THEN 'post'
					 WHEN 'v' THEN 'void' WHEN 'c' THEN 'credit'
					 WHEN 'l' THEN 'linked' WHEN 'x' THEN 'close'
					 WHEN 'o' THEN 'reopen' END
$$;

/* -------------------------------------------------------------------------
 * Tamper evidence
 *
 * Every batch that writes a leg or an outcome records a SHA-256 hash over
 * them and over the previous batch of its bucket (src/chain.c computes it as
 * the batch writes them, ledger.batch_hash() again for ledger_verify()):
 *
 *   hash = sha256(previous batch's hash || sha256(content))
 *   content = for each leg in id order: id, account_id, event_id, amount,
 *             balance_after, created_at (8 bytes each, big-endian; times in
 *             microseconds since 2000-01-01),
 *             then for each outcome in event_id order: event_id (8 bytes),
 *             status (1 byte), reason (UTF-8) and a zero byte,
 *             then bucket (4 bytes), batch id (8), applied (4), rejected (4)
 *             and decided_at (8).
 *
 * A batch's legs are those of its bucket's accounts whose ids lie in
 * [first_leg, last_leg]: a worker draws leg ids from its own range of the
 * sequence, in order.  Batches from before 1.9 have no hash: a bucket's
 * chain starts at its first batch with one.  Nor have the empty rows a
 * take-over of a restored ledger writes: the chain goes on past them.
 * ------------------------------------------------------------------------- */
ALTER TABLE ledger.batches
	ADD COLUMN first_leg bigint,
	ADD COLUMN last_leg bigint,
	ADD COLUMN hash bytea;

-- a time as the chain hashes it: microseconds since 2000-01-01, 8 bytes
CREATE FUNCTION ledger.chain_time(t timestamptz) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS
$$
	SELECT pg_catalog.int8send(((EXTRACT(epoch FROM t) - 946684800) * 1000000)::bigint)
$$;

-- the part of a batch's content that is the batch's own row
CREATE FUNCTION ledger.batch_trailer(b ledger.batches) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS
$$
	SELECT pg_catalog.int4send(b.bucket) || pg_catalog.int8send(b.id) ||
		   pg_catalog.int4send(b.applied) || pg_catalog.int4send(b.rejected) ||
		   ledger.chain_time(b.decided_at)
$$;

/*
 * Recompute the chain of every bucket from the rows, batch by batch, and
 * return the batches whose recorded hash is not the one their rows and the
 * previous batch's hash give, and the legs of a bucket written after its
 * chain began that no batch's range covers.  In one pass over the legs.
 */
CREATE FUNCTION ledger_verify_chain(OUT bucket integer, OUT batch_id bigint,
									OUT problem text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	prev bytea;
	last_bucket integer := -1;
	computed bytea;
BEGIN
	FOR r IN
		WITH chained AS (
			SELECT b.* FROM ledger.batches b
			 WHERE b.id >= (SELECT min(f.id) FROM ledger.batches f
							 WHERE f.bucket = b.bucket AND f.hash IS NOT NULL)
			   -- but the empty rows of a take-over (src/installed.c)
			   AND NOT (b.hash IS NULL AND b.first_leg IS NULL AND b.applied = 0
						AND b.rejected = 0
						AND NOT EXISTS (SELECT FROM ledger.outcomes o WHERE o.batch_id = b.id))
		), legs AS (
			SELECT c.bucket, c.id,
				   string_agg(int8send(t.id) || int8send(t.account_id) ||
							  int8send(t.event_id) || int8send(t.amount) ||
							  int8send(t.balance_after) || ledger.chain_time(t.created_at),
							  ''::bytea ORDER BY t.id) AS content
			  FROM ledger.transactions t
			  JOIN ledger.accounts a ON a.id = t.account_id
			  JOIN LATERAL (SELECT c.bucket, c.id, c.last_leg FROM chained c
							 WHERE c.bucket = a.bucket AND c.first_leg <= t.id
							 ORDER BY c.first_leg DESC LIMIT 1) c ON t.id <= c.last_leg
			 GROUP BY c.bucket, c.id
		), outs AS (
			SELECT o.batch_id,
				   string_agg(int8send(o.event_id) || convert_to(o.status::text, 'UTF8') ||
							  convert_to(COALESCE(o.reason, ''), 'UTF8') || '\x00'::bytea,
							  ''::bytea ORDER BY o.event_id) AS content
			  FROM ledger.outcomes o
			 WHERE o.batch_id IN (SELECT c.id FROM chained c)
			 GROUP BY o.batch_id
		)
		SELECT c.bucket, c.id, c.hash,
			   COALESCE(l.content, ''::bytea) || COALESCE(o.content, ''::bytea) ||
			   ledger.batch_trailer(c::ledger.batches) AS content
		  FROM chained c
		  LEFT JOIN legs l ON l.bucket = c.bucket AND l.id = c.id
		  LEFT JOIN outs o ON o.batch_id = c.id
		 ORDER BY c.bucket, c.id
	LOOP
		IF r.bucket <> last_bucket THEN
			prev := ''::bytea;
			last_bucket := r.bucket;
		END IF;
		computed := sha256(prev || sha256(r.content));
		IF r.hash IS NULL OR r.hash <> computed THEN
			bucket := r.bucket;
			batch_id := r.id;
			problem := CASE WHEN r.hash IS NULL THEN 'batch without a hash in the chain'
							ELSE 'hash does not match the batch''s rows' END;
			RETURN NEXT;
			-- the rest of the bucket's chain is judged by what it recorded
		END IF;
		prev := COALESCE(r.hash, computed);
	END LOOP;

	-- legs of a chained bucket, newer than its chain's start, in no batch
	RETURN QUERY
		SELECT a.bucket, NULL::bigint, 'leg ' || t.id || ' of account ' || t.account_id || ' is in no batch'
		  FROM ledger.transactions t
		  JOIN ledger.accounts a ON a.id = t.account_id
		  JOIN LATERAL (SELECT min(f.first_leg) AS first_leg FROM ledger.batches f
						 WHERE f.bucket = a.bucket AND f.hash IS NOT NULL) s ON t.id >= s.first_leg
		 WHERE NOT EXISTS (SELECT FROM ledger.batches c
							WHERE c.bucket = a.bucket AND c.hash IS NOT NULL
							  AND t.id BETWEEN c.first_leg AND c.last_leg);
END
$$;

/*
 * Each bucket's chain head: its newest batch with a hash.  Publish it (a
 * notary, a log elsewhere): a history rewritten since can no longer end in
 * it.
 */
CREATE FUNCTION ledger_chain_heads(OUT bucket integer, OUT batch_id bigint,
								   OUT decided_at timestamptz, OUT hash bytea)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT k.bucket, h.id, h.decided_at, h.hash
	  FROM generate_series(0, 63) k(bucket),
		   LATERAL (SELECT b.id, b.decided_at, b.hash FROM ledger.batches b
					 WHERE b.bucket = k.bucket AND b.hash IS NOT NULL
					 ORDER BY b.id DESC LIMIT 1) h
$$;

CREATE FUNCTION ledger.verify_chain(OUT problem text, OUT account_id bigint,
									OUT event_id bigint, OUT expected bigint,
									OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	-- event_id: the first batch of the bucket that does not match; expected: its bucket
	SELECT 'chain', NULL::bigint, min(c.batch_id), c.bucket::bigint, count(*)
	  FROM @extschema@.ledger_verify_chain() c
	 GROUP BY c.bucket
$$;

/* -------------------------------------------------------------------------
 * Closing accounts
 *
 * Closing and reopening are events of the account's bucket, decided in
 * order with its other events.  A close is refused while the balance is not
 * zero (balance_not_zero: pay the rest out first) or holds are open
 * (holds_open: post or void them first).  From the close on every debit,
 * credit and hold of the account is rejected with account_closed.  The
 * rows of ledger.closures are the account's states, newest in force.
 * ------------------------------------------------------------------------- */
CREATE TABLE ledger.closures (
	account_id		bigint NOT NULL,
	event_id		bigint NOT NULL,
	closed			boolean NOT NULL,
	balance			bigint NOT NULL,
	changed_at		timestamptz NOT NULL,
	PRIMARY KEY (account_id, event_id)
);
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.closures
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.closures
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
SELECT pg_catalog.pg_extension_config_dump('ledger.closures', '');

CREATE FUNCTION ledger_close_account(account_id bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_close_account'
LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION ledger_reopen_account(account_id bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_reopen_account'
LANGUAGE C VOLATILE STRICT;

-- whether an account is closed, since when, and its balance then
CREATE FUNCTION ledger_account_closure(account_id bigint,
									   OUT closed boolean, OUT changed_at timestamptz,
									   OUT balance_at_close bigint, OUT event_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
	SELECT c.closed, c.changed_at, CASE WHEN c.closed THEN c.balance END, c.event_id
	  FROM ledger.closures c
	 WHERE c.account_id = $1
	 ORDER BY c.event_id DESC LIMIT 1
$$;

/* -------------------------------------------------------------------------
 * Linked transfers
 *
 * ledger_transfer_linked() logs one event per transfer of the group, each
 * in its payer's bucket, link_of naming the group (its first transfer).  A
 * bucket decides its transfers in two steps, in its own batches: first it
 * checks the payer and sets the amount aside (a row here: its vote), then,
 * once every transfer of the group has voted, it pays it; if any was
 * rejected, it releases the amount and rejects it too.  No bucket waits on
 * another's locks; a transfer that has voted holds back nothing but its
 * amount.
 * ------------------------------------------------------------------------- */
CREATE TABLE ledger.linked_votes (
	event_id		bigint PRIMARY KEY,
	batch_id		bigint NOT NULL,
	voted_at		timestamptz NOT NULL
);
CREATE TRIGGER immutable BEFORE UPDATE OR DELETE ON ledger.linked_votes
	FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER immutable_truncate BEFORE TRUNCATE ON ledger.linked_votes
	FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
SELECT pg_catalog.pg_extension_config_dump('ledger.linked_votes', '');

CREATE FUNCTION ledger_transfer_linked(from_accounts bigint[], to_accounts bigint[],
									   amounts bigint[],
									   idempotency_key text DEFAULT NULL,
									   metadata jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'ledger_transfer_linked'
LANGUAGE C VOLATILE;

-- the amounts set aside by transfers that voted and are not decided yet
CREATE OR REPLACE FUNCTION ledger.verify_held(OUT problem text, OUT account_id bigint,
											  OUT event_id bigint, OUT expected bigint,
											  OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	WITH open AS (
		SELECT x.account_id, sum(x.amount::numeric) AS held
		  FROM (SELECT e.account_id, e.amount
				  FROM ledger.events e
				 WHERE e.kind = 'h' AND e.status = 'a'
				   AND NOT EXISTS (SELECT FROM ledger.hold_ends h WHERE h.hold_id = e.id)
				UNION ALL
				SELECT e.account_id, e.amount
				  FROM ledger.linked_votes v
				  JOIN ledger.event_log e ON e.id = v.event_id
				 WHERE NOT EXISTS (SELECT FROM ledger.outcomes o WHERE o.event_id = v.event_id)) x
		 GROUP BY x.account_id
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

-- a linked transfer's legs are a transfer's
CREATE OR REPLACE FUNCTION ledger.verify_legs(OUT problem text, OUT account_id bigint,
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
			  FROM ledger.events e WHERE e.status = 'a' AND e.kind IN ('d', 'w', 't', 's', 'p', 'l')
			UNION ALL
			SELECT e.id, e.to_account, e.amount
			  FROM ledger.events e WHERE e.status = 'a' AND e.kind IN ('t', 'p', 'l')
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

CREATE OR REPLACE FUNCTION ledger_event(event_id bigint,
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
		   CASE WHEN e.kind IN ('t', 'h', 'p', 'l') THEN ARRAY[e.to_account] ELSE e.to_accounts END,
		   CASE WHEN e.kind IN ('t', 'h', 'p', 'l') THEN ARRAY[x.amount] ELSE e.amounts END,
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

/* -------------------------------------------------------------------------
 * Importing a history
 * ------------------------------------------------------------------------- */
-- (ledger_import: see below)

/* -------------------------------------------------------------------------
 * The audit, with the chain
 * ------------------------------------------------------------------------- */
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
	UNION ALL SELECT * FROM ledger.verify_chain()
$$;

/* Who may call what */
REVOKE ALL ON FUNCTION ledger.chain_time(timestamptz), ledger.batch_trailer(ledger.batches),
	ledger.verify_chain(), ledger_verify_chain(), ledger_chain_heads(),
	ledger_close_account(bigint), ledger_reopen_account(bigint),
	ledger_account_closure(bigint),
	ledger_transfer_linked(bigint[], bigint[], bigint[], text, jsonb)
	FROM PUBLIC;
-- chain heads are for publishing: a monitoring role reads them too
GRANT EXECUTE ON FUNCTION ledger_transfer_linked(bigint[], bigint[], bigint[], text, jsonb),
	ledger_account_closure(bigint), ledger_chain_heads()
	TO ledger_client;
GRANT EXECUTE ON FUNCTION ledger_close_account(bigint), ledger_reopen_account(bigint),
	ledger_verify_chain()
	TO ledger_operator;
