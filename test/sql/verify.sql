-- ledger_verify() finds tampering.  As a superuser, inside a transaction that
-- is rolled back, the history's immutability triggers are bypassed
-- (session_replication_role = replica, or ALTER TABLE ... DISABLE TRIGGER)
-- and the history corrupted one way at a time; the audit names each problem.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- 5001 and 5002 in bucket 1, 5003 in bucket 0
SELECT ledger_open_account(5001), ledger_open_account(5002),
       ledger_open_account(5003);

CREATE TEMP TABLE ev (label text PRIMARY KEY, id bigint NOT NULL);
-- six deposits give 5001 six legs and a breakpoint over the first five
INSERT INTO ev SELECT 'd' || n, ledger_deposit(5001, 100) FROM generate_series(1, 6) n;
SELECT count(*) FILTER (WHERE s = 'applied') AS applied
  FROM (SELECT ledger_wait(id, 30000) AS s FROM ev) w;
INSERT INTO ev VALUES ('t1', ledger_transfer(5001, 5003, 50));
INSERT INTO ev VALUES ('r1', ledger_withdraw(5002, 1000));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('t1', 'r1') ORDER BY label;
SELECT ledger_balance(5001), ledger_balance(5002), ledger_balance(5003);
SELECT count(*) AS breakpoints_of_5001 FROM ledger.breakpoints WHERE account_id = 5001;

-- the audit, with this file's event ids shown as labels (a broken chain
-- names a batch, whose id depends on the workers' timing, or a leg in none)
CREATE TEMP VIEW audit AS
SELECT v.problem, v.account_id,
       CASE WHEN v.problem = 'chain' THEN CASE WHEN v.event_id IS NULL THEN 'a leg' ELSE 'a batch' END
            ELSE coalesce(e.label, v.event_id::text) END AS event,
       v.expected, v.found
  FROM ledger_verify() v LEFT JOIN ev e ON e.id = v.event_id
 ORDER BY 1, 2, 3, 4, 5;

SELECT * FROM audit;

SELECT id AS d2 FROM ev WHERE label = 'd2' \gset
SELECT id AS d1 FROM ev WHERE label = 'd1' \gset
SELECT id AS t1 FROM ev WHERE label = 't1' \gset
SELECT id AS r1 FROM ev WHERE label = 'r1' \gset

BEGIN;
SET LOCAL session_replication_role = replica;

-- a leg's amount: every later running balance, the account's balance, the
-- breakpoint over it, its event's sum and the grand total disagree
SAVEPOINT tamper;
UPDATE ledger.transactions SET amount = 101 WHERE account_id = 5001 AND event_id = :d2;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- the newest leg's running balance, which ledger_balance() reads
UPDATE ledger.transactions SET balance_after = 999 WHERE account_id = 5001 AND event_id = :t1;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- a leg removed: its event no longer sums to zero, nor does the ledger
DELETE FROM ledger.transactions WHERE account_id = 5003 AND event_id = :t1;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- a rejected event recorded as applied, though it posted nothing (its
-- batch applied all it read but what ledger.outcomes names)
DELETE FROM ledger.outcomes WHERE event_id = :r1;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- a transfer's credit leg moved to an account the transfer does not name
-- (5002 has no legs of its own, so the running balances still agree)
UPDATE ledger.transactions SET account_id = 5002 WHERE account_id = 5003 AND event_id = :t1;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- an orphan leg, of no event, consistent with its account's running balance
INSERT INTO ledger.transactions (id, account_id, event_id, amount, balance_after, created_at)
SELECT max(id) + 1000000, 5001, 999999999, 5, 555, now() FROM ledger.transactions;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- a leg posted for a rejected event
INSERT INTO ledger.transactions (id, account_id, event_id, amount, balance_after, created_at)
SELECT max(id) + 1000000, 5002, :r1, 0, 0, now() FROM ledger.transactions;
SELECT * FROM audit;
ROLLBACK TO tamper;

-- an applied event recorded as rejected
INSERT INTO ledger.outcomes VALUES (:d1, 'r', 'insufficient_funds', 0, now());
SELECT * FROM audit;
ROLLBACK TO tamper;

-- not a problem: a credit still in flight between buckets (its payee's leg
-- not posted yet, its credit logged for the payee's bucket by a batch not
-- yet visible to that bucket's worker) is the missing half of its event
-- (the row is built from a JSON object, so as not to depend on every
-- column of the log)
DELETE FROM ledger.transactions WHERE account_id = 5003 AND event_id = :t1;
INSERT INTO ledger.event_log
SELECT * FROM jsonb_populate_record(NULL::ledger.event_log, jsonb_build_object(
	'id', nextval('ledger.event_id_seq'), 'kind', 'c', 'account_id', 5001,
	'amount', 50, 'to_accounts', '{5003}'::bigint[], 'amounts', '{50}'::bigint[],
	'enqueued_at', now(), 'bucket', 0, 'txid', pg_current_xact_id(),
	'credit_of', :t1));
SELECT * FROM audit;
ROLLBACK TO tamper;
ROLLBACK;

-- breakpoints, with the immutability trigger disabled instead
BEGIN;
ALTER TABLE ledger.breakpoints DISABLE TRIGGER immutable;
SAVEPOINT tamper;
UPDATE ledger.breakpoints SET current_balance = 499, amount_difference = 499 WHERE account_id = 5001;
SELECT * FROM audit;
ROLLBACK TO tamper;
-- (for these two, which figures the audit shows is its own business)
UPDATE ledger.breakpoints SET previous_balance = 1, amount_difference = 499 WHERE account_id = 5001;
SELECT problem, account_id, event FROM audit;
ROLLBACK TO tamper;
UPDATE ledger.breakpoints SET amount_difference = 0 WHERE account_id = 5001;
SELECT problem, account_id, event FROM audit;
ROLLBACK;

-- all of it rolled back: the triggers are back and the ledger is clean
SELECT tgrelid::regclass AS "table", tgname, tgenabled
  FROM pg_trigger
 WHERE tgrelid IN ('ledger.transactions'::regclass, 'ledger.event_log'::regclass,
                   'ledger.breakpoints'::regclass)
 ORDER BY tgrelid::regclass::text, tgname;
SELECT ledger_balance(5001), ledger_balance(5002), ledger_balance(5003);
SELECT * FROM audit;
