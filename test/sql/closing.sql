-- Closing and reopening accounts: events of the account's bucket, decided
-- in order with its others.  A close is refused while holds of the account
-- are open (holds_open) or its balance is not zero (balance_not_zero); from
-- an applied close on, every debit, credit and hold of the account is
-- rejected with account_closed, whichever bucket pays; a reopen undoes it.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- wait, up to 30 s, for an account's balance to reach a value; returns it
CREATE FUNCTION wait_balance(account bigint, want bigint) RETURNS bigint LANGUAGE plpgsql AS
$$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN ledger_balance(account) = want;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN ledger_balance(account);
END
$$;
-- attempt(sql): run one query returning one text value; its SQLSTATE and
-- message if it fails, "ok" and its value if not
CREATE FUNCTION attempt(sql text, OUT state text, OUT result text)
LANGUAGE plpgsql AS
$$
BEGIN
	EXECUTE sql INTO result;
	state := 'ok';
EXCEPTION WHEN OTHERS THEN
	state := SQLSTATE;
	result := SQLERRM;
END
$$;
CREATE TEMP TABLE ev (label text PRIMARY KEY, id bigint NOT NULL);
-- each event of the file, with its kind, status and reason
CREATE TEMP VIEW outcome AS
SELECT e.label, x.kind, x.account_id, x.to_accounts, x.status, x.reason
  FROM ev e, ledger_event(e.id) x;

-- 9851, 9853, 9855 and 9857 are in bucket 1; 9852 and 9854 in bucket 0
SELECT ledger_open_account(a) FROM generate_series(9851, 9857) a;
INSERT INTO ev VALUES ('fund 9851', ledger_deposit(9851, 100)),
                      ('fund 9852', ledger_deposit(9852, 1000)),
                      ('fund 9853', ledger_deposit(9853, 50));
SELECT label, ledger_wait(id, 30000) FROM ev ORDER BY label;

-- 1. Refusals.  Money left in it: balance_not_zero.
INSERT INTO ev VALUES ('close 9851 with 100', ledger_close_account(9851));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'close 9851 with 100';
SELECT * FROM outcome WHERE label = 'close 9851 with 100';
SELECT count(*) AS closures FROM ledger_account_closure(9851);
-- a hold of the account open: holds_open (before the balance is looked at)
INSERT INTO ev VALUES ('hold 9853', ledger_hold(9853, 9852, 50));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'hold 9853';
INSERT INTO ev VALUES ('close 9853 holding', ledger_close_account(9853));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'close 9853 holding';
SELECT * FROM outcome WHERE label = 'close 9853 holding';
INSERT INTO ev SELECT 'void 9853', ledger_void(id) FROM ev WHERE label = 'hold 9853';
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'void 9853';
SELECT ledger_balance(9853), ledger_available(9853);

-- 2. A close of an account paid out: applied.  A hold to it placed before
-- (9852 pays it from bucket 0) does not stand in the way, a hold of it would.
INSERT INTO ev VALUES ('hold to 9851', ledger_hold(9852, 9851, 10));
INSERT INTO ev VALUES ('withdraw 9851', ledger_withdraw(9851, 100));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('hold to 9851', 'withdraw 9851')
 ORDER BY label;
INSERT INTO ev VALUES ('close 9851', ledger_close_account(9851));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'close 9851';
SELECT * FROM outcome WHERE label = 'close 9851';
SELECT c.closed, c.changed_at = x.applied_at AS changed_when_applied, c.balance_at_close,
       c.event_id = e.id AS by_the_close
  FROM ev e, ledger_event(e.id) x, ledger_account_closure(9851) c
 WHERE e.label = 'close 9851';
SELECT ledger_balance(9851), ledger_available(9851);

-- 3. Everything that would move money in or out of it is rejected:
-- debits (9851 is given nothing, so account_closed comes before the
-- money), credits from its own bucket and from the other, a disbursement
-- naming it among others (all or nothing), a deposit, a withdrawal, a hold
-- from it and one to it, and the post of the hold to it placed before the
-- close (which stays open, to be voided)
INSERT INTO ev VALUES
	('transfer from 9851', ledger_transfer(9851, 9853, 1)),
	('transfer to 9851, same bucket', ledger_transfer(9853, 9851, 1)),
	('transfer to 9851, other bucket', ledger_transfer(9852, 9851, 1)),
	('disburse to 9854, 9851', ledger_disburse(9852, '{9854,9851}', '{1,1}')),
	('deposit to 9851', ledger_deposit(9851, 1)),
	('withdraw from 9851', ledger_withdraw(9851, 1)),
	('hold from 9851', ledger_hold(9851, 9853, 1)),
	('hold to 9851, same bucket', ledger_hold(9853, 9851, 1)),
	('hold to 9851, other bucket', ledger_hold(9852, 9851, 1));
INSERT INTO ev SELECT 'post to 9851', ledger_post(id) FROM ev WHERE label = 'hold to 9851';
SELECT count(*) FILTER (WHERE ledger_wait(id, 30000) <> 'pending') AS decided FROM ev;
SELECT label, kind, status, reason FROM outcome
 WHERE label IN ('transfer from 9851', 'transfer to 9851, same bucket',
                 'transfer to 9851, other bucket', 'disburse to 9854, 9851',
                 'deposit to 9851', 'withdraw from 9851', 'hold from 9851',
                 'hold to 9851, same bucket', 'hold to 9851, other bucket', 'post to 9851')
 ORDER BY label;
-- none of it posted a leg
SELECT count(*) AS legs FROM ledger.transactions t JOIN ev e ON e.id = t.event_id
 WHERE e.label IN ('transfer from 9851', 'transfer to 9851, same bucket',
                   'transfer to 9851, other bucket', 'disburse to 9854, 9851',
                   'deposit to 9851', 'withdraw from 9851', 'post to 9851');
SELECT e.label, ledger_hold_status(e.id) FROM ev e WHERE e.label = 'hold to 9851';
INSERT INTO ev SELECT 'void to 9851', ledger_void(id) FROM ev WHERE label = 'hold to 9851';
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'void to 9851';
SELECT e.label, ledger_hold_status(e.id) FROM ev e WHERE e.label = 'hold to 9851';
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9851, 9854) a;

-- 4. Closing it again: account_closed.  Reopening: applied, and money moves
-- again.  Reopening an open account: account_open.
INSERT INTO ev VALUES ('close 9851 again', ledger_close_account(9851));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'close 9851 again';
INSERT INTO ev VALUES ('reopen 9851', ledger_reopen_account(9851));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'reopen 9851';
INSERT INTO ev VALUES ('reopen 9851 again', ledger_reopen_account(9851));
INSERT INTO ev VALUES ('reopen 9852', ledger_reopen_account(9852));
INSERT INTO ev VALUES ('transfer to 9851, reopened', ledger_transfer(9852, 9851, 7));
SELECT label, ledger_wait(id, 30000) FROM ev
 WHERE label IN ('reopen 9851 again', 'reopen 9852', 'transfer to 9851, reopened') ORDER BY label;
SELECT label, kind, account_id, status, reason FROM outcome
 WHERE label IN ('close 9851 again', 'reopen 9851', 'reopen 9851 again', 'reopen 9852',
                 'transfer to 9851, reopened')
 ORDER BY label;
SELECT c.closed, c.balance_at_close, c.event_id = e.id AS by_the_reopen
  FROM ev e, ledger_account_closure(9851) c WHERE e.label = 'reopen 9851';
SELECT ledger_balance(9851);
-- every state it was in, newest last
SELECT e.label, c.closed, c.balance
  FROM ledger.closures c JOIN ev e ON e.id = c.event_id
 WHERE c.account_id = 9851 ORDER BY c.event_id;

-- 5. A credit in flight when the close is asked for.  9857's bucket (1) is
-- paused; 9852 (bucket 0) pays it 5, which bucket 0 debits and queues as a
-- credit for bucket 1; then 9857's close is queued behind that credit.
-- Decided in order: the credit lands, and the close is refused.
SELECT ledger_pause(1);
INSERT INTO ev VALUES ('transfer to 9857', ledger_transfer(9852, 9857, 5));
SELECT wait_balance(9852, 1000 - 7 - 5) AS debited_9852;
INSERT INTO ev VALUES ('close 9857', ledger_close_account(9857));
SELECT label, ledger_event_status(id) FROM ev
 WHERE label IN ('transfer to 9857', 'close 9857') ORDER BY label;
SELECT ledger_resume(1);
SELECT label, ledger_wait(id, 30000) FROM ev
 WHERE label IN ('transfer to 9857', 'close 9857') ORDER BY label;
SELECT label, kind, status, reason FROM outcome
 WHERE label IN ('transfer to 9857', 'close 9857') ORDER BY label;
SELECT ledger_balance(9857);
-- paid out, it closes
INSERT INTO ev VALUES ('withdraw 9857', ledger_withdraw(9857, 5));
INSERT INTO ev VALUES ('close 9857 paid out', ledger_close_account(9857));
SELECT label, ledger_wait(id, 30000) FROM ev
 WHERE label IN ('withdraw 9857', 'close 9857 paid out') ORDER BY label;
SELECT closed, balance_at_close FROM ledger_account_closure(9857);
-- opening it again the same way does nothing: it stays closed
SELECT ledger_open_account(9857);
SELECT closed FROM ledger_account_closure(9857);
-- and once it is closed, a payment from bucket 0 queued while bucket 0 is
-- paused is rejected when bucket 0 decides it
SELECT ledger_pause(0);
INSERT INTO ev VALUES ('transfer to closed 9857', ledger_transfer(9852, 9857, 3));
SELECT ledger_resume(0);
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'transfer to closed 9857';
SELECT label, status, reason FROM outcome WHERE label = 'transfer to closed 9857';
SELECT ledger_balance(9852), ledger_balance(9857);

-- 6. Bad calls.  NULL: the functions are STRICT, no event.
SELECT ledger_close_account(NULL) IS NULL AS close_null,
       ledger_reopen_account(NULL) IS NULL AS reopen_null,
       (SELECT count(*) FROM ledger_account_closure(NULL)) AS closure_null;
-- 0 and negative ids are refused at the door (22023), and so is an account
-- that does not exist (23503), as by the other enqueue functions
SELECT c.call, a.state, a.result
  FROM (VALUES
	(1, 'SELECT ledger_close_account(0)::text'),
	(2, 'SELECT ledger_close_account(-1)::text'),
	(3, 'SELECT ledger_reopen_account(-9223372036854775808)::text'),
	(4, 'SELECT ledger_close_account(9899)::text'),
	(5, 'SELECT ledger_reopen_account(9899)::text')) c(n, call),
       attempt(c.call) a
 ORDER BY c.n;
\set VERBOSITY default
SELECT ledger_close_account(0);
SELECT ledger_close_account(9899);
SELECT count(*) AS closures FROM ledger_account_closure(9899);
SELECT count(*) AS closures_of_9899 FROM ledger.closures WHERE account_id = 9899;

-- 7. Operators only: a client may read an account's closure, not close or
-- reopen one
CREATE ROLE regress_closing_client IN ROLE ledger_client;
SET ROLE regress_closing_client;
SELECT closed FROM ledger_account_closure(9857);
SELECT c.call, a.state, a.result
  FROM (VALUES
	(1, 'SELECT ledger_close_account(9853)::text'),
	(2, 'SELECT ledger_reopen_account(9857)::text')) c(n, call),
       attempt(c.call) a
 ORDER BY c.n;
RESET ROLE;
DROP ROLE regress_closing_client;
SELECT count(*) AS closures_of_9853 FROM ledger.closures WHERE account_id = 9853;

SELECT * FROM ledger_verify();
DROP VIEW outcome;
DROP FUNCTION wait_balance(bigint, bigint), attempt(text);
