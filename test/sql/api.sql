-- The SQL API end to end: open accounts, move money four ways, read it back.
CREATE EXTENSION ledger;

-- wait for every event given to leave "pending"; returns the statuses
CREATE FUNCTION wait_all(ids bigint[]) RETURNS text[] LANGUAGE sql AS
$$ SELECT array_agg(ledger_wait(id, 30000) ORDER BY ord) FROM unnest(ids) WITH ORDINALITY u(id, ord) $$;

SELECT ledger_open_account(1);
SELECT ledger_open_account(2);
SELECT ledger_open_account(3);
SELECT ledger_open_account(4, true);
-- opening again with the same flag is a no-op
SELECT ledger_open_account(1);
SELECT ledger_open_account(4, true);
SELECT id, allow_negative, bucket FROM ledger.accounts WHERE id > 0 ORDER BY id;

SELECT ledger_deposit(1, 10000) AS e1 \gset
SELECT ledger_event_status(:e1) IN ('pending', 'applied') AS known;
SELECT ledger_wait(:e1, 30000);
SELECT ledger_balance(1);
SELECT kind, account_id, to_accounts, amounts, amount, status, reason,
       applied_at >= enqueued_at AS ordered
  FROM ledger_event(:e1);

-- a transfer within one bucket (1 and 3 are both in bucket 1)
SELECT ledger_wait(ledger_transfer(1, 3, 1000), 30000) AS enqueued_and_pending;
SELECT ledger_transfer(1, 3, 1000) AS e2 \gset
SELECT ledger_wait(:e2, 30000);
-- a transfer across buckets (2 is in bucket 0)
SELECT ledger_transfer(1, 2, 2500, 'order-77') AS e3 \gset
SELECT ledger_wait(:e3, 30000);
SELECT ledger_balance(1), ledger_balance(2), ledger_balance(3);

-- the idempotency key returns the first event and enqueues nothing; it
-- names that request, and another call with it is an error
SELECT ledger_transfer(1, 2, 2500, 'order-77') = :e3 AS same_event;
SELECT ledger_deposit(2, 5, 'order-77');
SELECT count(*) FROM ledger.queue;
SELECT ledger_balance(2);

-- a withdrawal, and one that would overdraw: rejected, posts nothing
SELECT ledger_withdraw(2, 500) AS e4 \gset
SELECT ledger_withdraw(2, 1000000) AS e5 \gset
SELECT wait_all(ARRAY[:e4, :e5]);
SELECT status, reason FROM ledger_event(:e5);
SELECT ledger_balance(2);
SELECT count(*) FROM ledger.transactions WHERE event_id = :e5;

-- an account allowed to go negative
SELECT ledger_withdraw(4, 700) AS e6 \gset
SELECT ledger_wait(:e6, 30000);
SELECT ledger_balance(4);

-- a disbursement to payees in both buckets
-- (a read in the statement that waits sees the snapshot taken before it)
SELECT ledger_disburse(1, '{2,3,4}', '{100,200,300}', 'payroll-1') AS e7 \gset
SELECT ledger_wait(:e7, 30000);
SELECT kind, to_accounts, amounts, amount, status FROM ledger_event(:e7);
SELECT ledger_balance(1), ledger_balance(2), ledger_balance(3), ledger_balance(4);
-- all or nothing: one payee too many for the payer's balance
SELECT ledger_disburse(3, '{1,2}', '{1000,1201}') AS e8 \gset
SELECT ledger_wait(:e8, 30000);
SELECT ledger_balance(1), ledger_balance(2), ledger_balance(3);
SELECT reason FROM ledger_event(:e8);

-- history, newest first, with running balances
SELECT event_id = :e7 AS is_e7, amount, balance_after FROM ledger_history(1, 3);
SELECT count(*) FROM ledger_history(1);
SELECT count(*) FROM ledger_history(1, 2);

-- an unknown event, and unknown accounts
SELECT ledger_event_status(999999) IS NULL AS unknown;
SELECT count(*) FROM ledger_event(999999);
SELECT ledger_wait(999999, 10) IS NULL AS unknown;
SELECT ledger_balance(999) IS NULL AS unknown;

-- double entry: with nothing pending, all balances sum to zero
SELECT sum(ledger_balance(id)) FROM ledger.accounts;
SELECT * FROM ledger_verify();
