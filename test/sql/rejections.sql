-- What the workers refuse: events that would overdraw an account or overflow
-- a balance are rejected with a reason and post nothing, disbursements all
-- or nothing.  Waits happen in one statement, reads in the next.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- accounts of this file: 2001, 2003, 2005, 2007 in bucket 1, 2002 and 2004
-- in bucket 0; 2005 may go negative
SELECT ledger_open_account(2001), ledger_open_account(2002),
       ledger_open_account(2003), ledger_open_account(2004),
       ledger_open_account(2005, true), ledger_open_account(2007);

-- status transitions: pending (in the enqueueing transaction, and until a
-- worker gets to it), then applied
BEGIN;
SELECT ledger_deposit(2001, 1000) AS d1 \gset
SELECT ledger_event_status(:d1);
-- its own uncommitted event cannot change: ledger_wait answers at once
SELECT ledger_wait(:d1, 30000);
SELECT kind, account_id, to_accounts, amounts, amount, status, reason,
       enqueued_at IS NOT NULL AS enqueued, applied_at IS NULL AS not_applied
  FROM ledger_event(:d1);
COMMIT;
SELECT ledger_wait(:d1, 30000);
SELECT kind, account_id, amount, status, reason, applied_at IS NOT NULL AS applied
  FROM ledger_event(:d1);
SELECT ledger_balance(2001);

-- pending, then rejected
BEGIN;
SELECT ledger_withdraw(2001, 1001) AS w1 \gset
SELECT ledger_event_status(:w1);
SELECT status, applied_at IS NULL AS not_applied FROM ledger_event(:w1);
COMMIT;
SELECT ledger_wait(:w1, 30000);
SELECT kind, account_id, amount, status, reason, applied_at IS NOT NULL AS decided
  FROM ledger_event(:w1);
SELECT ledger_balance(2001);
SELECT count(*) AS legs FROM ledger.transactions WHERE event_id = :w1;

-- An enqueue rolled back leaves nothing, and its event id is unknown.
BEGIN;
SELECT ledger_deposit(2001, 5) AS d0 \gset
ROLLBACK;
SELECT ledger_event_status(:d0), ledger_wait(:d0, 0);

-- The events below are enqueued one statement (so one transaction) each, in
-- this order; the worker of the paying account's bucket decides each in that
-- order.  Payers are all in bucket 1, so the outcomes depend on the order.
CREATE TEMP TABLE ev (ord serial, label text NOT NULL, id bigint NOT NULL);

-- insufficient funds, all or nothing
INSERT INTO ev (label, id) VALUES ('a1 transfer 2001->2002 1001', ledger_transfer(2001, 2002, 1001));
INSERT INTO ev (label, id) VALUES ('a2 transfer 2001->2003 1001', ledger_transfer(2001, 2003, 1001));
INSERT INTO ev (label, id) VALUES ('a3 disburse 2001 1001', ledger_disburse(2001, '{2002,2003,2004}', '{500,400,101}'));
INSERT INTO ev (label, id) VALUES ('a4 disburse 2001 1000', ledger_disburse(2001, '{2002,2003,2004}', '{500,400,100}'));
INSERT INTO ev (label, id) VALUES ('a5 withdraw 2001 1', ledger_withdraw(2001, 1));
INSERT INTO ev (label, id) VALUES ('a6 withdraw 2005 250', ledger_withdraw(2005, 250));
INSERT INTO ev (label, id) VALUES ('a7 transfer 2005->2007 50', ledger_transfer(2005, 2007, 50));

SELECT ord, label, ledger_wait(id, 30000) FROM ev ORDER BY ord;
SELECT ledger_balance(2001) AS "2001", ledger_balance(2002) AS "2002",
       ledger_balance(2003) AS "2003", ledger_balance(2004) AS "2004",
       ledger_balance(2005) AS "2005", ledger_balance(2007) AS "2007";

-- overflow: 2003 is brought to 10 below the largest bigint by 2005, which
-- may go negative, then deposits and transfers into 2003 and withdrawals
-- from 2005 hit the ends of bigint
INSERT INTO ev (label, id) VALUES ('b1 transfer 2005->2003 to max-10', ledger_transfer(2005, 2003, 9223372036854775397));
INSERT INTO ev (label, id) VALUES ('b2 deposit 2003 11', ledger_deposit(2003, 11));
INSERT INTO ev (label, id) VALUES ('b3 deposit 2003 10', ledger_deposit(2003, 10));
INSERT INTO ev (label, id) VALUES ('b4 transfer 2007->2003 1', ledger_transfer(2007, 2003, 1));
INSERT INTO ev (label, id) VALUES ('b5 disburse 2007 to 2001,2003', ledger_disburse(2007, '{2001,2003}', '{5,1}'));
INSERT INTO ev (label, id) VALUES ('b6 disburse 2007 to 2001,2002', ledger_disburse(2007, '{2001,2002}', '{5,1}'));
INSERT INTO ev (label, id) VALUES ('b7 withdraw 2005 112', ledger_withdraw(2005, 112));
INSERT INTO ev (label, id) VALUES ('b8 withdraw 2005 111', ledger_withdraw(2005, 111));
INSERT INTO ev (label, id) VALUES ('b9 transfer 2005->2001 1', ledger_transfer(2005, 2001, 1));
INSERT INTO ev (label, id) VALUES ('b10 deposit 2005 1', ledger_deposit(2005, 1));
INSERT INTO ev (label, id) VALUES ('b11 transfer 2003->2005 max', ledger_transfer(2003, 2005, 9223372036854775807));

SELECT ord, label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'b%' ORDER BY ord;
SELECT ledger_balance(2001) AS "2001", ledger_balance(2002) AS "2002",
       ledger_balance(2003) AS "2003", ledger_balance(2004) AS "2004",
       ledger_balance(2005) AS "2005", ledger_balance(2007) AS "2007";

-- every event as ledger_event() tells it, one of each kind applied and rejected
SELECT e.label, x.kind, x.account_id, x.to_accounts, x.amounts, x.amount,
       x.status, x.reason, x.applied_at IS NOT NULL AS decided
  FROM ev e, ledger_event(e.id) x
 ORDER BY e.ord;

-- rejected events post nothing; applied ones post balanced legs
SELECT e.label, count(t.id) AS legs, coalesce(sum(t.amount), 0) AS sum,
       array_agg(t.account_id || ':' || t.amount ORDER BY t.account_id)
         FILTER (WHERE t.id IS NOT NULL) AS account_amounts
  FROM ev e LEFT JOIN ledger.transactions t ON t.event_id = e.id
 GROUP BY e.ord, e.label
 ORDER BY e.ord;

-- the balances near the ends of bigint, as the legs recorded them
SELECT account_id, amount, balance_after
  FROM ledger.transactions
 WHERE account_id IN (2003, 2005)
 ORDER BY account_id, id;

-- nothing is left in the queue for these events, and the ledger is sound
SELECT count(*) AS queued FROM ledger.queue q JOIN ev e ON e.id = q.id;
SELECT * FROM ledger_verify();
