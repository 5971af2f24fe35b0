-- Benchmark setup, run once per server by bench/run.sh (psql, as superuser).
-- Variables: naccounts (a multiple of 10 and of ledger.buckets).
--
-- Accounts 1..naccounts are opened with ledger_open_account() and funded
-- with deposits applied by the workers; account 1, the hot payer, gets far
-- more.  All of it stays well within the supply bound of a bucket
-- (ledger_supply_bound(), 1.4e14): 10^13 and 10^9 each.  Two more accounts serve the balance workload: naccounts + 1 (the
-- "deep" account, given many legs later) and naccounts + 2 (ten legs).
--
-- Schema bench holds the baselines: tables equivalent to the ledger's (same
-- columns and indexes, no triggers), and the conventional row-locking
-- ledger of the contrast workload.
\set ON_ERROR_STOP 1

CREATE EXTENSION ledger;

CREATE SCHEMA bench;
-- what enqueue writes at the least: a row of the log, with its indexes
CREATE TABLE bench.queue (LIKE ledger.event_log INCLUDING ALL);
CREATE SEQUENCE bench.queue_id_seq;
CREATE TABLE bench.legs (LIKE ledger.transactions INCLUDING ALL);
-- the apply workload's second yardstick: COPY into a table as big as the
-- ledger's history (bench/run.sh keeps it a copy of ledger.transactions)
CREATE TABLE bench.history (LIKE ledger.transactions INCLUDING ALL);
CREATE TABLE bench.accounts (
	id		bigint PRIMARY KEY,
	balance	bigint NOT NULL
);
INSERT INTO bench.accounts
	SELECT a, CASE WHEN a = 1 THEN 10000000000000 ELSE 1000000000 END
	  FROM generate_series(1, :naccounts) a;
VACUUM ANALYZE bench.accounts;

SELECT count(ledger_open_account(a)) AS opened
  FROM generate_series(1, :naccounts + 2) a \gset
SELECT count(ledger_deposit(a, CASE WHEN a = 1 THEN 10000000000000
									ELSE 1000000000 END)) AS funded
  FROM generate_series(1, :naccounts) a \gset
SELECT count(ledger_deposit(:naccounts + 2, 1)) AS shallow_legs
  FROM generate_series(1, 10) \gset

/*
 * Wait until the queue is empty and return when it was first seen so: the
 * end of a drain.  Given the last event ids of the buckets, wait for those
 * (a bucket applies its entries in order, and an event stays pending until
 * its credits to other buckets are applied), then look at the whole queue,
 * since applying may have queued credits; given none, look at the queue
 * first.  A procedure, so that each look is a short transaction of its own:
 * one long statement would hold back the xmin horizon for the whole drain,
 * keep the workers from pruning the queue entries they delete, and so slow
 * the very drain it times.
 */
CREATE PROCEDURE bench.wait_drained(lasts bigint[], INOUT drained_at timestamptz,
									timeout_ms integer DEFAULT 1800000)
LANGUAGE plpgsql AS $$
DECLARE
	deadline	timestamptz := clock_timestamp() + timeout_ms * interval '1 ms';
	last_id		bigint;
	pending		boolean;
BEGIN
	drained_at := NULL;
	LOOP
		IF lasts IS NULL THEN
			SELECT array_agg(m.id) INTO lasts
			  FROM (SELECT max(q.id) AS id FROM ledger.queue q GROUP BY q.bucket) m;
			IF lasts IS NULL THEN
				drained_at := coalesce(drained_at, clock_timestamp());
				RETURN;
			END IF;
			drained_at := NULL;
		END IF;
		pending := false;
		FOREACH last_id IN ARRAY lasts LOOP
			-- wakes when a batch commits; short, to hold no snapshot long
			IF ledger_wait(last_id, 5) = 'pending' THEN
				pending := true;
				EXIT;
			END IF;
		END LOOP;
		IF NOT pending THEN
			drained_at := coalesce(drained_at, clock_timestamp());
			lasts := NULL;
		END IF;
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'ledger.queue not drained after % ms', timeout_ms;
		END IF;
		COMMIT;
	END LOOP;
END
$$;

CALL bench.wait_drained(NULL, NULL) \gset
ANALYZE;
