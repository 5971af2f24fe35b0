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

-- the batch whose range holds a leg: one probe a leg, one entry a batch
CREATE INDEX batches_first_leg_idx ON ledger.batches (bucket, first_leg)
	WHERE first_leg IS NOT NULL;

/*
 * The legs of the chained part of each bucket's history (from the first
 * leg of its first batch with a hash on), each with the batch whose range
 * holds it, or NULL when none does.
 */
CREATE FUNCTION ledger.chained_legs(OUT bucket integer, OUT batch_id bigint,
									OUT id bigint, OUT account_id bigint,
									OUT content bytea)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS
$$
	WITH starts AS (
		SELECT f.bucket, min(f.first_leg) AS first_leg
		  FROM ledger.batches f WHERE f.hash IS NOT NULL GROUP BY f.bucket
	)
	SELECT a.bucket, c.id, t.id, t.account_id,
		   int8send(t.id) || int8send(t.account_id) || int8send(t.event_id) ||
		   int8send(t.amount) || int8send(t.balance_after) || ledger.chain_time(t.created_at)
	  FROM ledger.transactions t
	  JOIN ledger.accounts a ON a.id = t.account_id
	  JOIN starts s ON s.bucket = a.bucket AND t.id >= s.first_leg
	  LEFT JOIN LATERAL (SELECT b.id, b.last_leg FROM ledger.batches b
						  WHERE b.bucket = a.bucket AND b.first_leg <= t.id
						  ORDER BY b.first_leg DESC LIMIT 1) c ON t.id <= c.last_leg
$$;

/*
 * Recompute the chain of every bucket from the rows, batch by batch, and
 * return the batches whose recorded hash is not the one their rows and the
 * previous batch's hash give, and the legs of a bucket written after its
 * chain began that no batch's range covers.
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
			SELECT l.batch_id, string_agg(l.content, ''::bytea ORDER BY l.id) AS content
			  FROM ledger.chained_legs() l
			 WHERE l.batch_id IS NOT NULL
			 GROUP BY l.batch_id
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
		  LEFT JOIN legs l ON l.batch_id = c.id
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

	RETURN QUERY
		SELECT l.bucket, NULL::bigint, 'leg ' || l.id || ' of account ' || l.account_id || ' is in no batch'
		  FROM ledger.chained_legs() l
		 WHERE l.batch_id IS NULL;
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
				 -- left for later, not decided since: the last vote of a
				 -- group is paid in the batch that casts it
				 WHERE EXISTS (SELECT FROM ledger.deferred d WHERE d.event_id = v.event_id)
				   AND NOT EXISTS (SELECT FROM ledger.outcomes o WHERE o.event_id = v.event_id)) x
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
 *
 * ledger_import() brings in the history of another system: deposits,
 * withdrawals and transfers, each with the time it happened.  It checks the
 * rows as a whole, then logs them as events in one statement, their ids
 * drawn in (occurred_at, row) order, each with its occurred_at.  The
 * workers apply them as any other event (double entry, no overdraft,
 * limits, currencies), but post their legs at occurred_at, so that
 * balances and history as of a time answer by the original times.
 *
 * An account's legs are in time order, which reads as of a time rely on:
 * no row may be older than the newest leg of an account it names, and no
 * event of such an account may be pending.  What changes between these
 * checks and the import's commit is the worker's to catch: it rejects an
 * imported event older than the newest leg of an account it posts to
 * (out_of_order).
 *
 * A transfer between buckets is logged with its credit, in the payee's
 * bucket, with the next id: the payee's worker reads the credit in the
 * history's order, and posts it once the payer's worker has applied the
 * transfer (or drops it if it was rejected), the payee's later events
 * waiting meanwhile (src/import.c).  So every account's legs, and each
 * debit's funds, follow the history's order across buckets too.  The ids
 * from first_event to last_event are the events' and those credits'.
 *
 * Two forms.  The one of arrays does the work, with the extension owner's
 * rights.  The one of a table runs with its caller's: it reads the table
 * as its caller, so that the caller's privileges on it, on its columns and
 * its row security decide what it may read, then passes the rows to the
 * first.
 * ------------------------------------------------------------------------- */
/*
 * The entries pending, as in 1.6, but for the credits an import logged
 * with transfers not applied yet: no money is in flight for them (their
 * transfers, pending, are listed), and the audit, which counts credits
 * queued as money in flight, must not count them before the debit.
 */
CREATE OR REPLACE FUNCTION ledger.pending_entries(OUT bucket integer, OUT seq bigint, OUT id bigint,
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
	 WHERE e.credit_of IS NULL OR e.occurred_at IS NULL
		OR (SELECT ledger.row_state(t) FROM ledger.event_log t WHERE t.id = e.credit_of) = 'a'
$$;

CREATE FUNCTION ledger_import(kinds text[], from_accounts bigint[], to_accounts bigint[],
							  amounts bigint[], occurred_at timestamptz[],
							  metadata jsonb[] DEFAULT NULL,
							  OUT events bigint, OUT first_event bigint,
							  OUT last_event bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- a history's rows are sorted twice: in memory, rather than on disk
SET work_mem = '256MB'
AS $$
DECLARE
	-- the arguments whose names are also columns' of the log
	times		timestamptz[] := occurred_at;
	meta		jsonb[] := metadata;
	n			integer;
	-- the role the session acts as: SET ROLE's, or the session's
	acting		oid := COALESCE(
					(SELECT r.oid FROM pg_catalog.pg_roles r
					  WHERE r.rolname = pg_catalog.current_setting('role')),
					(SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = session_user));
	bad			record;
	account		bigint;
	code		text;
	msg			text;
	detail		text;
	hint		text;
	ids			bigint[];
	buckets		integer[];
BEGIN
	IF kinds IS NULL OR from_accounts IS NULL OR to_accounts IS NULL OR amounts IS NULL
	   OR times IS NULL THEN
		RAISE EXCEPTION 'the arrays of an import may not be NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Only metadata may be NULL; the elements of the others may be, where a row needs none.';
	END IF;
	IF GREATEST(array_ndims(kinds), array_ndims(from_accounts), array_ndims(to_accounts),
				array_ndims(amounts), array_ndims(times), array_ndims(meta)) > 1 THEN
		RAISE EXCEPTION 'the arrays of an import must be one-dimensional'
			USING ERRCODE = 'array_subscript_error';
	END IF;
	n := cardinality(kinds);
	IF cardinality(from_accounts) <> n OR cardinality(to_accounts) <> n
	   OR cardinality(amounts) <> n OR cardinality(times) <> n
	   OR cardinality(meta) <> n THEN
		RAISE EXCEPTION 'the arrays of an import must have one element per row'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('kinds has %s, from_accounts %s, to_accounts %s, amounts %s, occurred_at %s%s.',
								  n, cardinality(from_accounts), cardinality(to_accounts),
								  cardinality(amounts), cardinality(times),
								  CASE WHEN meta IS NOT NULL
									   THEN format(', metadata %s', cardinality(meta)) ELSE '' END);
	END IF;
	events := 0;
	IF n = 0 THEN
		RETURN;
	END IF;

	-- a dump restored from another cluster is the workers' to take over first
	IF (SELECT i.system_id <> ledger.system_identifier()
			   OR EXISTS (SELECT FROM generate_series(0, 63) k(bucket),
								 LATERAL (SELECT b.id, b.cur_xmax FROM ledger.batches b
										   WHERE b.bucket = k.bucket
										   ORDER BY b.id DESC LIMIT 1) l
						   WHERE l.id > i.base_batch
							 AND l.cur_xmax > pg_snapshot_xmax(pg_current_snapshot()))
		  FROM ledger.installation i
		 ORDER BY i.base_batch DESC, i.base_id DESC, i.since DESC,
				  i.system_id = ledger.system_identifier()
		 LIMIT 1) THEN
		RAISE EXCEPTION 'the ledger was restored from another cluster, and its workers have not taken it over yet'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Retry in a moment; the workers do it as they start.';
	END IF;

	/*
	 * The checks, in one pass: the first row with a problem (the first of
	 * its problems), and how many rows have that problem.  A problem with
	 * one of the row's accounts says which (":from", ":to").
	 */
	WITH u AS (
		SELECT u.n, u.kind, u.from_account, u.to_account, u.amount, u.occurred_at, u.metadata
		  FROM unnest(kinds, from_accounts, to_accounts, amounts, times, meta)
			   WITH ORDINALITY AS u(kind, from_account, to_account, amount, occurred_at,
									metadata, n)
	), pending AS (
		SELECT q.account_id, q.to_account, q.to_accounts FROM ledger.pending_entries() q
	), named AS (
		SELECT x.id
		  FROM u, LATERAL (VALUES (u.from_account), (u.to_account)) x(id)
		 WHERE x.id > 0
		 GROUP BY x.id
	), acct AS (
		SELECT nm.id, a.id IS NOT NULL AS known, a.currency, a.owner,
			   (SELECT t.created_at FROM ledger.transactions t
				 WHERE t.account_id = nm.id ORDER BY t.id DESC LIMIT 1) AS newest,
			   COALESCE((SELECT c.closed FROM ledger.closures c
						  WHERE c.account_id = nm.id ORDER BY c.event_id DESC LIMIT 1),
						false) AS closed,
			   nm.id IN (SELECT p.account_id FROM pending p
						 UNION ALL SELECT p.to_account FROM pending p
						 UNION ALL SELECT unnest(p.to_accounts) FROM pending p) AS pending
		  FROM named nm
		  LEFT JOIN ledger.accounts a ON a.id = nm.id
	), checked AS (
		SELECT u.*, CASE
			WHEN u.kind IS NULL THEN 'null kind'
			WHEN u.kind NOT IN ('deposit', 'withdraw', 'transfer') THEN 'kind'
			WHEN u.amount IS NULL THEN 'null amount'
			WHEN u.occurred_at IS NULL THEN 'null occurred_at'
			WHEN u.kind <> 'deposit' AND u.from_account IS NULL THEN 'null from_account'
			WHEN u.kind <> 'withdraw' AND u.to_account IS NULL THEN 'null to_account'
			WHEN u.kind = 'deposit' AND u.from_account IS NOT NULL THEN 'deposit from'
			WHEN u.kind = 'withdraw' AND u.to_account IS NOT NULL THEN 'withdraw to'
			WHEN u.amount <= 0 THEN 'amount'
			WHEN u.from_account <= 0 THEN 'account id:from'
			WHEN u.to_account <= 0 THEN 'account id:to'
			WHEN u.from_account = u.to_account THEN 'self'
			WHEN NOT isfinite(u.occurred_at) THEN 'infinite'
			WHEN u.occurred_at > statement_timestamp() THEN 'future'
			WHEN jsonb_typeof(u.metadata) <> 'object' THEN 'metadata'
			WHEN pg_column_size(u.metadata) > 65536 THEN 'metadata size'
			WHEN NOT f.known THEN 'unknown:from'
			WHEN NOT t.known THEN 'unknown:to'
			WHEN f.currency <> t.currency THEN 'currency'
			WHEN f.closed THEN 'closed:from'
			WHEN t.closed THEN 'closed:to'
			WHEN f.owner IS NOT NULL AND NOT pg_has_role(acting, f.owner, 'USAGE') THEN 'owner:from'
			WHEN u.occurred_at < f.newest THEN 'older:from'
			WHEN u.occurred_at < t.newest THEN 'older:to'
			WHEN f.pending THEN 'pending:from'
			WHEN t.pending THEN 'pending:to'
		END AS problem
		  FROM u
		  LEFT JOIN acct f ON f.id = u.from_account
		  LEFT JOIN acct t ON t.id = u.to_account
	)
	SELECT c.n, c.kind, c.from_account, c.to_account, c.amount, c.occurred_at,
		   split_part(c.problem, ':', 1) AS problem, split_part(c.problem, ':', 2) AS side,
		   count(*) OVER (PARTITION BY split_part(c.problem, ':', 1)) AS rows
	  INTO bad
	  FROM checked c
	 WHERE c.problem IS NOT NULL
	 ORDER BY c.n
	 LIMIT 1;

	IF FOUND THEN
		account := CASE bad.side WHEN 'from' THEN bad.from_account
								 WHEN 'to' THEN bad.to_account END;
		code := 'invalid_parameter_value';
		CASE bad.problem
			WHEN 'null kind', 'null amount', 'null occurred_at' THEN
				code := 'null_value_not_allowed';
				msg := format('%s may not be NULL', substr(bad.problem, 6));
			WHEN 'kind' THEN
				msg := format('unknown kind %L', bad.kind);
				hint := 'A row is a deposit (money in, to to_account), a withdraw (money out, from from_account) or a transfer (from from_account to to_account).';
			WHEN 'null from_account', 'null to_account' THEN
				code := 'null_value_not_allowed';
				msg := format('a %s needs a %s', bad.kind, substr(bad.problem, 6));
				hint := 'A deposit names to_account, a withdraw from_account, a transfer both.';
			WHEN 'deposit from' THEN
				msg := 'a deposit has no from_account';
				hint := 'A deposit''s money comes from outside the ledger: name the account it credits in to_account, and leave from_account NULL.';
			WHEN 'withdraw to' THEN
				msg := 'a withdraw has no to_account';
				hint := 'A withdrawal''s money leaves the ledger: name the account it debits in from_account, and leave to_account NULL.';
			WHEN 'amount' THEN
				msg := 'amount must be positive';
			WHEN 'account id' THEN
				msg := 'account ids must be positive';
				hint := 'The external accounts (negative ids) take the other leg of deposits and withdrawals by themselves.';
			WHEN 'self' THEN
				msg := format('account %s cannot pay itself', bad.from_account);
			WHEN 'infinite' THEN
				msg := 'occurred_at must be a finite time';
			WHEN 'future' THEN
				msg := 'occurred_at is in the future';
				hint := format('An import brings what has happened, up to when it starts (%s).',
							   statement_timestamp());
			WHEN 'metadata' THEN
				msg := 'metadata must be a JSON object';
			WHEN 'metadata size' THEN
				code := 'program_limit_exceeded';
				msg := 'metadata is too large';
				hint := 'An event''s metadata may take at most 65536 bytes.';
			WHEN 'unknown' THEN
				IF EXISTS (SELECT FROM ledger.directory d
							WHERE d.account_id = account AND d.node_id <> ledger.node_id()) THEN
					msg := format('account %s is an account of another node', account);
					hint := 'An import moves money between the accounts of one node: import each node''s part of the history on that node.';
				ELSE
					code := 'foreign_key_violation';
					msg := format('account %s does not exist', account);
					hint := 'Open it first with ledger_open_account().';
				END IF;
			WHEN 'currency' THEN
				msg := format('accounts %s and %s hold different currencies',
							  bad.from_account, bad.to_account);
				hint := 'Money moves only between accounts of one currency.';
			WHEN 'closed' THEN
				code := 'object_not_in_prerequisite_state';
				msg := format('account %s is closed', account);
				hint := 'Reopen it with ledger_reopen_account() first.';
			WHEN 'owner' THEN
				code := 'insufficient_privilege';
				msg := format('permission denied to debit account %s', account);
				detail := COALESCE((SELECT format('The account belongs to role "%s"; only its members may move money out of it.',
												  r.rolname)
									  FROM ledger.accounts a JOIN pg_roles r ON r.oid = a.owner
									 WHERE a.id = account),
								   'The account belonged to a role that was dropped; only superusers may move money out of it.');
			WHEN 'older' THEN
				msg := format('occurred_at is older than the newest leg of account %s, posted at %s',
							  account, (SELECT t.created_at FROM ledger.transactions t
										 WHERE t.account_id = account
										 ORDER BY t.id DESC LIMIT 1));
				hint := 'An account''s legs are in time order: import its history before anything else happens to it, or only what happened after its newest leg.';
			WHEN 'pending' THEN
				code := 'object_not_in_prerequisite_state';
				msg := format('account %s has events pending', account);
				hint := 'An import''s legs come after the legs already posted: wait until its events are decided (ledger_wait(), ledger_stats.pending), then import.';
		END CASE;
		detail := concat_ws(' ', detail,
			format('%s: kind %s, from_account %s, to_account %s, amount %s, occurred_at %s.',
				   CASE WHEN bad.rows > 1
						THEN format('%s rows have this problem; the first is row %s', bad.rows, bad.n)
						ELSE format('Row %s', bad.n) END,
				   COALESCE(quote_literal(bad.kind), 'NULL'),
				   COALESCE(bad.from_account::text, 'NULL'),
				   COALESCE(bad.to_account::text, 'NULL'),
				   COALESCE(bad.amount::text, 'NULL'),
				   COALESCE(bad.occurred_at::text, 'NULL')));
		IF hint IS NULL THEN
			RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = code, DETAIL = detail;
		END IF;
		RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = code, DETAIL = detail, HINT = hint;
	END IF;

	-- the ids, in order: the rows get them in (occurred_at, row) order, a
	-- transfer between buckets two, the second for its credit
	SELECT array_agg(s.id ORDER BY s.id) INTO ids
	  FROM (SELECT nextval('ledger.event_id_seq') AS id
			  FROM generate_series(1, n + (SELECT count(*)
											 FROM unnest(kinds, from_accounts, to_accounts)
												  AS u(kind, from_account, to_account)
											 JOIN ledger.accounts a ON a.id = u.from_account
											 JOIN ledger.accounts p ON p.id = u.to_account
											WHERE u.kind = 'transfer' AND a.bucket <> p.bucket)::integer)) s;

	WITH u AS (
		SELECT u.kind, u.amount, u.occurred_at, u.metadata,
			   CASE u.kind WHEN 'deposit' THEN u.to_account ELSE u.from_account END AS account_id,
			   CASE u.kind WHEN 'transfer' THEN u.to_account END AS payee,
			   row_number() OVER (ORDER BY u.occurred_at, u.n)::integer AS rank
		  FROM unnest(kinds, from_accounts, to_accounts, amounts, times, meta)
			   WITH ORDINALITY AS u(kind, from_account, to_account, amount, occurred_at,
									metadata, n)
	), b AS (
		SELECT u.*, a.bucket, p.bucket AS payee_bucket,
			   COALESCE(p.bucket <> a.bucket, false) AS between_buckets
		  FROM u
		  JOIN ledger.accounts a ON a.id = u.account_id
		  LEFT JOIN ledger.accounts p ON p.id = u.payee
	), r AS (
		-- the row's id: its rank, after the credits of the rows before it
		SELECT b.*,
			   b.rank + COALESCE(sum(b.between_buckets::integer)
									OVER (ORDER BY b.rank ROWS BETWEEN UNBOUNDED PRECEDING
																  AND 1 PRECEDING), 0)::integer AS slot
		  FROM b
	), logged AS (
		INSERT INTO ledger.event_log (bucket, id, kind, account_id, to_account, amount,
									  to_accounts, amounts, enqueued_at, metadata, txid,
									  credit_of, occurred_at)
		SELECT r.bucket, ids[r.slot],
			   CASE r.kind WHEN 'deposit' THEN 'd' WHEN 'withdraw' THEN 'w' ELSE 't' END::"char",
			   r.account_id, r.payee, r.amount, NULL, NULL, statement_timestamp(), r.metadata,
			   pg_current_xact_id(), NULL, r.occurred_at
		  FROM r
		UNION ALL
		SELECT r.payee_bucket, ids[r.slot + 1], 'c', r.account_id, NULL, r.amount,
			   ARRAY[r.payee], ARRAY[r.amount], statement_timestamp(), NULL,
			   pg_current_xact_id(), ids[r.slot], r.occurred_at
		  FROM r WHERE r.between_buckets
		RETURNING bucket, id, credit_of
	)
	SELECT count(*) FILTER (WHERE l.credit_of IS NULL), min(l.id),
		   max(l.id) FILTER (WHERE l.credit_of IS NULL), array_agg(DISTINCT l.bucket)
	  INTO events, first_event, last_event, buckets
	  FROM logged l;

	-- the workers see the events at the commit
	PERFORM @extschema@.ledger_wake_buckets(buckets);
END
$$;

/*
 * ledger_import(source): the rows of a table (or view), columns kind,
 * from_account, to_account, amount, occurred_at and, if it has one,
 * metadata; other columns are left alone.  Rows are numbered in the
 * table's physical order: for a table filled by COPY, the order of the
 * file.  Rows of one time are logged in that order.
 */
CREATE FUNCTION ledger_import(source regclass, OUT events bigint, OUT first_event bigint,
							  OUT last_event bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
-- the rows are aggregated in the order of a sorted subquery
SET max_parallel_workers_per_gather = 0
AS $$
DECLARE
	kind		"char";
	missing		text;
	k			text[];
	f			bigint[];
	t			bigint[];
	a			bigint[];
	o			timestamptz[];
	m			jsonb[];
BEGIN
	IF source IS NULL THEN
		RAISE EXCEPTION 'source may not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = source;
	IF kind IS NULL OR kind NOT IN ('r', 'p', 'm', 'v', 'f') THEN
		RAISE EXCEPTION '% is not a table or view', source
			USING ERRCODE = 'wrong_object_type';
	END IF;
	SELECT string_agg(w.col, ', ' ORDER BY w.i) INTO missing
	  FROM unnest(ARRAY['kind', 'from_account', 'to_account', 'amount', 'occurred_at'])
		   WITH ORDINALITY AS w(col, i)
	 WHERE NOT EXISTS (SELECT FROM pg_attribute c
						WHERE c.attrelid = source AND c.attname = w.col
						  AND c.attnum > 0 AND NOT c.attisdropped);
	IF missing IS NOT NULL THEN
		RAISE EXCEPTION USING
			MESSAGE = format('%s has no column%s %s', source,
							 CASE WHEN missing LIKE '%,%' THEN 's' ELSE '' END, missing),
			ERRCODE = 'undefined_column',
				  HINT = 'An import reads the columns kind (deposit, withdraw or transfer), from_account, to_account, amount, occurred_at, and metadata if there is one.';
	END IF;

	-- as the caller: its privileges on the table decide what it may read
	EXECUTE format(
		'SELECT array_agg(s.kind), array_agg(s.from_account), array_agg(s.to_account),'
		'       array_agg(s.amount), array_agg(s.occurred_at), array_agg(s.metadata)'
		'  FROM (SELECT s.kind::text AS kind, s.from_account::bigint AS from_account,'
		'               s.to_account::bigint AS to_account, s.amount::bigint AS amount,'
		'               s.occurred_at::timestamptz AS occurred_at, %s AS metadata'
		'          FROM %s s %s) s',
		CASE WHEN EXISTS (SELECT FROM pg_attribute c
						   WHERE c.attrelid = source AND c.attname = 'metadata'
							 AND c.attnum > 0 AND NOT c.attisdropped)
			 THEN 's.metadata::jsonb' ELSE 'NULL::jsonb' END,
		source,
		CASE kind WHEN 'p' THEN 'ORDER BY s.tableoid, s.ctid'
				  WHEN 'v' THEN '' WHEN 'f' THEN '' ELSE 'ORDER BY s.ctid' END)
	  INTO k, f, t, a, o, m;
	IF k IS NULL THEN
		events := 0;
		RETURN;
	END IF;
	SELECT i.events, i.first_event, i.last_event INTO events, first_event, last_event
	  FROM @extschema@.ledger_import(k, f, t, a, o, m) i;
END
$$;

REVOKE ALL ON FUNCTION
	ledger_import(text[], bigint[], bigint[], bigint[], timestamptz[], jsonb[]),
	ledger_import(regclass)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	ledger_import(text[], bigint[], bigint[], bigint[], timestamptz[], jsonb[]),
	ledger_import(regclass)
	TO ledger_operator;

/* -------------------------------------------------------------------------
 * The audit, with the chain
 * ------------------------------------------------------------------------- */
-- the settings of 1.6 (ledger--1.5--1.6.sql: hash joins, no jit), which a
-- CREATE OR REPLACE would drop: after a crash, without them, the audit of a
-- small ledger takes minutes
CREATE OR REPLACE FUNCTION ledger_verify(OUT problem text, OUT account_id bigint,
										 OUT event_id bigint, OUT expected bigint,
										 OUT found bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_nestloop = off SET jit = off
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
	ledger.chained_legs(),
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
