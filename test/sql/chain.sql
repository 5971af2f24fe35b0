-- Tamper evidence: every batch that writes legs or outcomes records a
-- SHA-256 hash over them, its own figures and the previous batch of its
-- bucket.  ledger_verify_chain() (and ledger_verify(), as problem 'chain')
-- names the first batch that no longer matches its rows, whatever was done
-- to them by someone the immutability triggers do not stop; a chain head
-- published before stays the hash of its batch, and a rewrite re-hashed to
-- fool the audit can no longer end in it.  Batch ids depend on the
-- workers' timing: they are shown as booleans against the batch expected.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- wait, up to 30 s, until the workers of both buckets show they are paused
-- (so that no batch is under way); returns whether they do
CREATE FUNCTION wait_paused() RETURNS boolean LANGUAGE plpgsql AS
$$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN (SELECT bool_and(state = 'paused') FROM ledger_stats);
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN (SELECT bool_and(state = 'paused') FROM ledger_stats);
END
$$;
-- wait, up to 30 s, for a hold to reach a state; returns the state it has
CREATE FUNCTION wait_hold(id bigint, want text) RETURNS text LANGUAGE plpgsql AS
$$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN ledger_hold_status(id) = want;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN ledger_hold_status(id);
END
$$;
-- the batch whose leg range holds the leg of an account for an event
CREATE FUNCTION batch_of_leg(account bigint, event bigint) RETURNS bigint
LANGUAGE sql AS
$$
	SELECT b.id FROM ledger.transactions t
	  JOIN ledger.accounts a ON a.id = t.account_id
	  JOIN ledger.batches b ON b.bucket = a.bucket AND t.id BETWEEN b.first_leg AND b.last_leg
	 WHERE t.account_id = account AND t.event_id = event
$$;

/*
 * A batch's hash recomputed here from the rows, by the bytes the comment of
 * ledger--1.8--1.9.sql spells out (not with the extension's functions):
 * sha256(previous hash || sha256(legs || outcomes || trailer)).
 */
CREATE FUNCTION us2000(t timestamptz) RETURNS bytea LANGUAGE sql AS
$$ SELECT int8send(((extract(epoch FROM t) - 946684800) * 1000000)::bigint) $$;
CREATE FUNCTION spec_hash(b ledger.batches) RETURNS bytea LANGUAGE sql AS
$$
	SELECT sha256(
		COALESCE((SELECT p.hash FROM ledger.batches p
				   WHERE p.bucket = b.bucket AND p.id < b.id AND p.hash IS NOT NULL
				   ORDER BY p.id DESC LIMIT 1), ''::bytea) ||
		sha256(
			COALESCE((SELECT string_agg(int8send(t.id) || int8send(t.account_id) ||
										int8send(t.event_id) || int8send(t.amount) ||
										int8send(t.balance_after) || us2000(t.created_at),
										''::bytea ORDER BY t.id)
						FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
					   WHERE a.bucket = b.bucket AND t.id BETWEEN b.first_leg AND b.last_leg),
					 ''::bytea) ||
			COALESCE((SELECT string_agg(int8send(o.event_id) || convert_to(o.status::text, 'UTF8') ||
										convert_to(COALESCE(o.reason, ''), 'UTF8') || '\x00'::bytea,
										''::bytea ORDER BY o.event_id)
						FROM ledger.outcomes o WHERE o.batch_id = b.id),
					 ''::bytea) ||
			int4send(b.bucket) || int8send(b.id) || int4send(b.applied) ||
			int4send(b.rejected) || us2000(b.decided_at)))
$$;

-- 9801 and 9803 are in bucket 1, 9802 and 9804 in bucket 0
SELECT ledger_open_account(a) FROM generate_series(9801, 9804) a;

CREATE TEMP TABLE ev (label text PRIMARY KEY, id bigint NOT NULL);
-- two deposits of one amount to one account, each in a batch of its own
-- (the second is enqueued once the first is decided)
INSERT INTO ev VALUES ('d1', ledger_deposit(9801, 100));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'd1';
INSERT INTO ev VALUES ('d2', ledger_deposit(9801, 100));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'd2';
INSERT INTO ev VALUES ('d3', ledger_deposit(9802, 500));
-- transfers within bucket 1, across from 1 to 0, within 0, across from 0 to 1
INSERT INTO ev VALUES ('t1', ledger_transfer(9801, 9803, 30));
INSERT INTO ev VALUES ('t2', ledger_transfer(9801, 9802, 40));
INSERT INTO ev VALUES ('t3', ledger_transfer(9802, 9804, 50));
INSERT INTO ev VALUES ('t4', ledger_transfer(9802, 9801, 60));
-- a rejection: 9803 has 30
INSERT INTO ev VALUES ('r1', ledger_withdraw(9803, 1000));
-- a hold, posted in part
INSERT INTO ev VALUES ('h1', ledger_hold(9804, 9803, 20));
SELECT label, ledger_wait(id, 30000) FROM ev ORDER BY label;
INSERT INTO ev SELECT 'p1', ledger_post(id, 15) FROM ev WHERE label = 'h1';
-- and a hold that expires
INSERT INTO ev VALUES ('h2', ledger_hold(9804, 9802, 5, '100 milliseconds'));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('p1', 'h2') ORDER BY label;
SELECT wait_hold(id, 'expired') FROM ev WHERE label = 'h2';
SELECT e.label, x.status, x.reason FROM ev e, ledger_event(e.id) x ORDER BY e.label;
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9801, 9804) a;

-- the d's were decided in batches of their own
SELECT batch_of_leg(9801, d1.id) <> batch_of_leg(9801, d2.id) AS apart
  FROM ev d1, ev d2 WHERE d1.label = 'd1' AND d2.label = 'd2';
-- every leg of these accounts, and of their bucket's external account, lies
-- in the leg range of a batch of its bucket that has a hash
SELECT count(*) AS legs, count(b.id) AS in_a_hashed_batch
  FROM ledger.transactions t
  JOIN ledger.accounts a ON a.id = t.account_id
  LEFT JOIN ledger.batches b ON b.bucket = a.bucket AND b.hash IS NOT NULL
                            AND t.id BETWEEN b.first_leg AND b.last_leg
 WHERE t.event_id IN (SELECT id FROM ev);
-- the rejection is in the outcomes of a batch with a hash
SELECT o.status, o.reason, b.hash IS NOT NULL AS hashed
  FROM ev e JOIN ledger.outcomes o ON o.event_id = e.id
  JOIN ledger.batches b ON b.id = o.batch_id
 WHERE e.label = 'r1';

-- a healthy ledger: nothing found, and every hash is the one the spec gives
SELECT * FROM ledger_verify();
SELECT * FROM ledger_verify_chain();
SELECT count(*) > 0 AS some, bool_and(b.hash = spec_hash(b)) AS as_specified
  FROM ledger.batches b WHERE b.hash IS NOT NULL;
-- a head per bucket, a SHA-256 hash, the newest batch with one
SELECT h.bucket, length(h.hash) AS hash_bytes,
       h.batch_id = (SELECT max(b.id) FROM ledger.batches b
                      WHERE b.bucket = h.bucket AND b.hash IS NOT NULL) AS newest,
       h.decided_at = (SELECT b.decided_at FROM ledger.batches b
                        WHERE b.bucket = h.bucket AND b.id = h.batch_id) AS its_time
  FROM ledger_chain_heads() h ORDER BY h.bucket;

-- publish the heads, move more money in both buckets: the published batches
-- keep their hashes, and the heads move on past them
CREATE TEMP TABLE published AS SELECT * FROM ledger_chain_heads();
INSERT INTO ev VALUES ('t5', ledger_transfer(9801, 9802, 7));
INSERT INTO ev VALUES ('t6', ledger_transfer(9802, 9804, 8));
INSERT INTO ev VALUES ('t7', ledger_transfer(9804, 9801, 9));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('t5', 't6', 't7') ORDER BY label;
SELECT p.bucket, b.hash = p.hash AS same_hash, h.batch_id > p.batch_id AS moved_on
  FROM published p
  JOIN ledger.batches b ON b.bucket = p.bucket AND b.id = p.batch_id
  JOIN ledger_chain_heads() h ON h.bucket = p.bucket
 ORDER BY p.bucket;
SELECT * FROM ledger_verify_chain();

-- the ids of this file's events, and of the batches that hold them
SELECT id AS d1 FROM ev WHERE label = 'd1' \gset
SELECT id AS d2 FROM ev WHERE label = 'd2' \gset
SELECT id AS t1 FROM ev WHERE label = 't1' \gset
SELECT id AS t2 FROM ev WHERE label = 't2' \gset
SELECT id AS t3 FROM ev WHERE label = 't3' \gset
SELECT id AS r1 FROM ev WHERE label = 'r1' \gset
SELECT batch_of_leg(9801, :d1) AS d1_batch, batch_of_leg(9801, :d2) AS d2_batch,
       batch_of_leg(9803, :t1) AS t1_batch, batch_of_leg(9802, :t2) AS t2_credit_batch,
       batch_of_leg(9802, :t3) AS t3_batch,
       (SELECT batch_id FROM ledger.outcomes WHERE event_id = :r1) AS r1_batch \gset

-- No batch may be under way while the rows are changed: pause both buckets.
SELECT ledger_pause(0), ledger_pause(1);
SELECT wait_paused();

-- (a) a leg's amount changed (the credit of t2 in bucket 0, from another
-- bucket): the batch that holds it is named, and only it
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.transactions SET amount = 41 WHERE account_id = 9802 AND event_id = :t2;
SELECT bucket, batch_id = :t2_credit_batch AS its_batch, problem FROM ledger_verify_chain();
SELECT problem, event_id = :t2_credit_batch AS first_bad, expected AS bucket, found
  FROM ledger_verify() WHERE problem = 'chain';
-- put back as it was: the chain matches again
UPDATE ledger.transactions SET amount = 40 WHERE account_id = 9802 AND event_id = :t2;
SELECT * FROM ledger_verify_chain();
SELECT * FROM ledger_verify();
-- a running balance changed instead
UPDATE ledger.transactions SET balance_after = balance_after + 1
 WHERE account_id = 9803 AND event_id = :t1;
SELECT bucket, batch_id = :t1_batch AS its_batch, problem FROM ledger_verify_chain();
ROLLBACK;

-- (b) a leg deleted (the credit of t1, within bucket 1)
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM ledger.transactions WHERE account_id = 9803 AND event_id = :t1;
SELECT bucket, batch_id = :t1_batch AS its_batch, problem FROM ledger_verify_chain();
SELECT problem, event_id = :t1_batch AS first_bad, expected AS bucket, found
  FROM ledger_verify() WHERE problem = 'chain';
ROLLBACK;
-- a whole batch row deleted: its legs are in no batch, and the next batch
-- of its bucket no longer follows from the one before
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT min(id) AS after_t1_batch FROM ledger.batches
 WHERE bucket = 1 AND id > :t1_batch AND hash IS NOT NULL \gset
SELECT count(*) AS legs_of_the_batch FROM ledger.transactions t
  JOIN ledger.accounts a ON a.id = t.account_id AND a.bucket = 1
  JOIN ledger.batches b ON b.bucket = 1 AND b.id = :t1_batch
                       AND t.id BETWEEN b.first_leg AND b.last_leg \gset
DELETE FROM ledger.batches WHERE bucket = 1 AND id = :t1_batch;
SELECT c.bucket, c.next_batch, c.leg_in_no_batch,
       count(*) = CASE WHEN c.leg_in_no_batch THEN :legs_of_the_batch ELSE 1 END AS all_of_them
  FROM (SELECT bucket, batch_id = :after_t1_batch AS next_batch,
               problem LIKE 'leg % is in no batch' AS leg_in_no_batch
          FROM ledger_verify_chain()) c
 GROUP BY 1, 2, 3 ORDER BY 2;
ROLLBACK;

-- (c) reorderings.  The two legs of t3 (one batch of bucket 0) swap ids:
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.transactions t SET id = s.other
  FROM (SELECT x.account_id, x.id,
               (SELECT y.id FROM ledger.transactions y
                 WHERE y.event_id = :t3 AND y.account_id <> x.account_id) AS other
          FROM ledger.transactions x WHERE x.event_id = :t3) s
 WHERE t.account_id = s.account_id AND t.id = s.id;
SELECT count(*) AS legs_of_t3 FROM ledger.transactions WHERE event_id = :t3;
SELECT bucket, batch_id = :t3_batch AS its_batch, problem FROM ledger_verify_chain();
ROLLBACK;
-- d1 and d2 (the same amount to the same account, in two batches) swap
-- their legs: every other check of the audit still agrees, the chain does
-- not, in both batches
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.transactions SET event_id = CASE event_id WHEN :d1 THEN :d2 ELSE :d1 END
 WHERE event_id IN (:d1, :d2);
SELECT bucket, batch_id = :d1_batch AS d1_batch, batch_id = :d2_batch AS d2_batch, problem
  FROM ledger_verify_chain() ORDER BY batch_id;
SELECT problem, event_id = least(:d1_batch, :d2_batch) AS first_bad, expected AS bucket, found
  FROM ledger_verify();
ROLLBACK;
-- two batches of bucket 1 swap their times
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.batches b SET decided_at = s.other
  FROM (SELECT x.id, (SELECT y.decided_at FROM ledger.batches y
                       WHERE y.bucket = 1 AND y.id IN (:d1_batch, :d2_batch) AND y.id <> x.id) AS other
          FROM ledger.batches x WHERE x.bucket = 1 AND x.id IN (:d1_batch, :d2_batch)) s
 WHERE b.bucket = 1 AND b.id = s.id;
SELECT bucket, batch_id = :d1_batch AS d1_batch, batch_id = :d2_batch AS d2_batch, problem
  FROM ledger_verify_chain() ORDER BY batch_id;
ROLLBACK;

-- (d) a rejection's reason changed: only the chain notices
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.outcomes SET reason = 'overdraft_limit' WHERE event_id = :r1;
SELECT bucket, batch_id = :r1_batch AS its_batch, problem FROM ledger_verify_chain();
SELECT problem, event_id = :r1_batch AS first_bad, expected AS bucket, found
  FROM ledger_verify();
ROLLBACK;
-- nor may the rejection be dropped from the outcomes
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM ledger.outcomes WHERE event_id = :r1;
SELECT bucket, batch_id = :r1_batch AS its_batch, problem FROM ledger_verify_chain();
ROLLBACK;

-- (e) a batch's hash removed: that batch is named, the next ones are judged
-- by the hashes they recorded
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.batches SET hash = NULL WHERE bucket = 1 AND id = :t1_batch;
SELECT bucket, batch_id = :t1_batch AS its_batch, problem FROM ledger_verify_chain();
SELECT problem, event_id = :t1_batch AS first_bad, expected AS bucket, found
  FROM ledger_verify() WHERE problem = 'chain';
ROLLBACK;
-- the hash of a batch's figures changed (one more applied) names it too
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.batches SET applied = applied + 1 WHERE bucket = 0 AND id = :t3_batch;
SELECT bucket, batch_id = :t3_batch AS its_batch, problem FROM ledger_verify_chain();
ROLLBACK;

-- (f) a leg added past every batch's range: a leg in no batch
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO ledger.transactions (id, account_id, event_id, amount, balance_after, created_at)
SELECT max(id) + 1000000, 9801, :d1, 0, ledger_balance(9801), now() FROM ledger.transactions;
SELECT bucket, batch_id, problem LIKE 'leg % of account 9801 is in no batch' AS leg_in_no_batch
  FROM ledger_verify_chain();
SELECT problem, event_id, expected AS bucket, found FROM ledger_verify() WHERE problem = 'chain';
ROLLBACK;

-- (g) a rewrite re-hashed: the reason of r1 changed and every hash of bucket
-- 1 from its batch on recomputed.  The audit is fooled; the head published
-- before is not the hash of its batch any more.
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE ledger.outcomes SET reason = 'overdraft_limit' WHERE event_id = :r1;
DO $$
DECLARE
	b ledger.batches;
BEGIN
	FOR b IN SELECT * FROM ledger.batches x
			  WHERE x.bucket = 1 AND x.hash IS NOT NULL
				AND x.id >= (SELECT o.batch_id FROM ledger.outcomes o
							  JOIN ev e ON e.id = o.event_id WHERE e.label = 'r1')
			  ORDER BY x.id
	LOOP
		UPDATE ledger.batches x SET hash = spec_hash(b) WHERE x.bucket = 1 AND x.id = b.id;
	END LOOP;
END
$$;
SELECT * FROM ledger_verify();
SELECT p.bucket, b.hash = p.hash AS same_as_published
  FROM published p JOIN ledger.batches b ON b.bucket = p.bucket AND b.id = p.batch_id
 ORDER BY p.bucket;
ROLLBACK;

SELECT ledger_resume(0), ledger_resume(1);

-- all of it rolled back: the chain is whole, and goes on from where it was
SELECT * FROM ledger_verify();
SELECT p.bucket, b.hash = p.hash AS same_as_published
  FROM published p JOIN ledger.batches b ON b.bucket = p.bucket AND b.id = p.batch_id
 ORDER BY p.bucket;
INSERT INTO ev VALUES ('t8', ledger_transfer(9801, 9804, 1));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 't8';
SELECT * FROM ledger_verify_chain();

-- clients may read the heads, not verify the chain
CREATE ROLE regress_chain_client IN ROLE ledger_client;
SET ROLE regress_chain_client;
SELECT count(*) AS heads FROM ledger_chain_heads();
\set VERBOSITY sqlstate
SELECT * FROM ledger_verify_chain();
\set VERBOSITY default
RESET ROLE;
DROP ROLE regress_chain_client;

DROP FUNCTION wait_paused(), wait_hold(bigint, text), batch_of_leg(bigint, bigint),
	spec_hash(ledger.batches), us2000(timestamptz);
