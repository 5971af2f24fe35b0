-- Account limits checked by the worker (overdraft_limit, max_amount,
-- daily_debit_limit), and the spam guard checked at enqueue
-- (ledger.max_pending_per_account).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- wait for an event; its status and the reason of a rejection
CREATE FUNCTION outcome(id bigint) RETURNS text LANGUAGE plpgsql AS
$$
BEGIN
	PERFORM ledger_wait(id, 30000);
	RETURN (SELECT e.status || COALESCE(' ' || e.reason, '') FROM ledger_event(id) e);
END
$$;

-- 9201 and 9203 are in bucket 1, 9202 in bucket 0
SELECT ledger_open_account(a) FROM generate_series(9201, 9203) a;
SELECT ledger_deposit(9201, 1000) AS d \gset
SELECT outcome(:d);

-- max_amount: no single debit above it
SELECT ledger_set_limits(9201, max_amount => 100);
SELECT ledger_transfer(9201, 9202, 101) AS t \gset
SELECT outcome(:t);
SELECT ledger_transfer(9201, 9202, 100) AS t \gset
SELECT outcome(:t);
SELECT ledger_disburse(9201, '{9202,9203}', '{60,41}') AS t \gset
SELECT outcome(:t);
SELECT ledger_hold(9201, 9202, 101) AS t \gset
SELECT outcome(:t);
-- credits are not limited
SELECT ledger_deposit(9201, 500) AS t \gset
SELECT outcome(:t);

-- daily_debit_limit: applied debits over the last 24 hours, 100 so far
SELECT ledger_set_limits(9201, daily_debit_limit => 250);
SELECT ledger_withdraw(9201, 100) AS t \gset
SELECT outcome(:t);
SELECT ledger_withdraw(9201, 51) AS t \gset
SELECT outcome(:t);
SELECT ledger_withdraw(9201, 50) AS t \gset
SELECT outcome(:t);
-- setting limits replaces them all: max_amount is gone, the day is full
SELECT ledger_transfer(9201, 9202, 1) AS t \gset
SELECT outcome(:t);
SELECT ledger_set_limits(9201, daily_debit_limit => 500);
SELECT ledger_transfer(9201, 9202, 250) AS t \gset
SELECT outcome(:t);
SELECT ledger_balance(9201);

-- overdraft_limit: balance minus holds may go down to minus the limit
SELECT ledger_set_limits(9203, overdraft_limit => 300);
SELECT ledger_hold(9203, 9202, 100) AS h \gset
SELECT outcome(:h);
SELECT ledger_withdraw(9203, 201) AS t \gset
SELECT outcome(:t);
SELECT ledger_withdraw(9203, 200) AS t \gset
SELECT outcome(:t);
SELECT ledger_balance(9203), ledger_available(9203);
-- the hold can still be posted: its money was reserved
SELECT ledger_post(:h) AS p \gset
SELECT outcome(:p);
SELECT ledger_balance(9203), ledger_available(9203);
-- lifting the limit: back to no negative balance for this account
SELECT ledger_set_limits(9203);
SELECT ledger_withdraw(9203, 1) AS t \gset
SELECT outcome(:t);

-- bad limits
SELECT ledger_set_limits(9201, overdraft_limit => -1);
SELECT ledger_set_limits(9201, max_amount => -5);
SELECT ledger_set_limits(9999, max_amount => 5);
SELECT ledger_set_limits(NULL);
SELECT count(*) AS limit_rows FROM ledger.limits WHERE account_id BETWEEN 9201 AND 9203;
-- a prepared transaction's commit would not reach the workers: refused
BEGIN;
SELECT ledger_set_limits(9201, max_amount => 1);
PREPARE TRANSACTION 'ledger_limits';
SELECT count(*) AS limit_rows FROM ledger.limits WHERE account_id BETWEEN 9201 AND 9203;

-- the spam guard: at most ledger.max_pending_per_account pending events
-- per payer; with the worker paused they pile up
SET ledger.max_pending_per_account = 3;
SELECT ledger_pause(1);
SELECT ledger_transfer(9201, 9202, 1) AS g1 \gset
SELECT ledger_transfer(9201, 9202, 1) AS g2 \gset
SELECT ledger_transfer(9201, 9202, 1, 'guard-key') AS g3 \gset
SELECT ledger_transfer(9201, 9202, 1);
-- an idempotent retry of a queued event is not a new one
SELECT ledger_transfer(9201, 9202, 1, 'guard-key') = :g3 AS same_event;
SELECT ledger_transfer_many('{9203,9201}', '{9202,9202}', '{1,1}');
-- what a transaction or savepoint rolls back is not counted, nor what a
-- transaction prepares
BEGIN;
SELECT cardinality(ledger_transfer_many('{9203,9203}', '{9202,9202}', '{1,1}'));
ROLLBACK;
BEGIN;
SELECT ledger_transfer(9203, 9202, 1) > 0 AS queued;
SAVEPOINT s;
SELECT ledger_transfer(9203, 9202, 1) > 0 AS queued;
SAVEPOINT s2;
SELECT ledger_transfer(9203, 9202, 1) > 0 AS queued;
RELEASE s2;
ROLLBACK TO s;
-- one left: two more pass, three do not
SAVEPOINT s3;
SELECT ledger_transfer_many('{9203,9203,9203}', '{9202,9202,9202}', '{1,1,1}');
ROLLBACK TO s3;
SELECT cardinality(ledger_transfer_many('{9203,9203}', '{9202,9202}', '{1,1}'));
ROLLBACK;
BEGIN;
SELECT cardinality(ledger_transfer_many('{9203,9203,9203}', '{9202,9202,9202}', '{1,1,1}'));
PREPARE TRANSACTION 'ledger_guard';
ROLLBACK PREPARED 'ledger_guard';
-- other payers are not held up
SELECT ledger_transfer_many('{9203,9203,9203}', '{9202,9202,9202}', '{1,1,1}') AS g4 \gset
SELECT ledger_transfer_many('{9203}', '{9202}', '{1}');
SET ledger.max_pending_per_account = 0;
SELECT ledger_transfer(9201, 9202, 1) AS g6 \gset
RESET ledger.max_pending_per_account;
SELECT ledger_resume(1);
SELECT outcome(:g6);
SELECT ledger_wait(e, 30000) FROM unnest(:'g4'::bigint[]) e;
-- clients may not change the setting
SET ROLE ledger_client;
SET ledger.max_pending_per_account = 0;
RESET ROLE;

SELECT * FROM ledger_verify();
DROP FUNCTION outcome(bigint);
