-- What the workers refuse: events that would overdraw an account or take
-- its bucket past the supply bound are rejected with a reason and post
-- nothing, disbursements all or nothing.  Waits happen in one statement,
-- reads in the next.
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

-- The supply bound: in each bucket and currency, the accounts may owe at
-- most ledger_supply_bound() (what negative balances and holds take beyond
-- the money), so that no balance can overflow.  A currency of its own
-- here, REJ, so that only this section's events count: 2011 (may go
-- negative), 2013 and 2015 in bucket 1, 2012 in bucket 0.
SELECT ledger_supply_bound() AS bound \gset
SELECT ledger_open_account(2011, true, 'REJ'), ledger_open_account(2012, false, 'REJ'),
       ledger_open_account(2013, false, 'REJ'), ledger_open_account(2015, false, 'REJ');
INSERT INTO ev (label, id) VALUES ('b1 deposit 2013 the bound', ledger_deposit(2013, :bound));
INSERT INTO ev (label, id) VALUES ('b2 deposit 2013 1', ledger_deposit(2013, 1));
INSERT INTO ev (label, id) VALUES ('b3 deposit 2015 max', ledger_deposit(2015, 9223372036854775807));
INSERT INTO ev (label, id) VALUES ('b4 transfer 2011->2013 1', ledger_transfer(2011, 2013, 1));
INSERT INTO ev (label, id) VALUES ('b5 withdraw 2013 10', ledger_withdraw(2013, 10));
INSERT INTO ev (label, id) VALUES ('b6 transfer 2011->2012 10', ledger_transfer(2011, 2012, 10));
INSERT INTO ev (label, id) VALUES ('b7 transfer 2011->2012 1', ledger_transfer(2011, 2012, 1));
INSERT INTO ev (label, id) VALUES ('b8 hold 2011->2013 1', ledger_hold(2011, 2013, 1));
INSERT INTO ev (label, id) VALUES ('b9 transfer 2013->2011 10', ledger_transfer(2013, 2011, 10));
INSERT INTO ev (label, id) VALUES ('b10 hold 2011->2013 10', ledger_hold(2011, 2013, 10));
INSERT INTO ev (label, id) VALUES ('b11 deposit 2015 1', ledger_deposit(2015, 1));
INSERT INTO ev (label, id)
	SELECT 'b12 void b10', ledger_void(id) FROM ev WHERE label LIKE 'b10 %';
INSERT INTO ev (label, id) VALUES ('b13 deposit 2015 10', ledger_deposit(2015, 10));
INSERT INTO ev (label, id) VALUES ('b14 transfer 2013->2015 max', ledger_transfer(2013, 2015, 9223372036854775807));
SELECT ord, label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'b%' ORDER BY ord;
-- a maximal deposit into a fresh bucket and currency does not use it up
INSERT INTO ev (label, id) VALUES ('c1 deposit 2012 max', ledger_deposit(2012, 9223372036854775807));
INSERT INTO ev (label, id) VALUES ('c2 deposit 2012 5', ledger_deposit(2012, 5));
SELECT ord, label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'c%' ORDER BY ord;
SELECT ledger_balance(2011) AS "2011", ledger_balance(2012) AS "2012",
       ledger_balance(2013) AS "2013", ledger_balance(2015) AS "2015",
       ledger_available(2011) AS "available 2011";
-- bucket 1 owes the whole bound in REJ: the operator is told
SELECT problem, bucket, detail FROM ledger_health('1 hour') WHERE problem = 'supply';

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

-- what the accounts at the bound owe, as the legs recorded it
SELECT t.account_id, t.amount, t.balance_after
  FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
 WHERE a.currency = (SELECT no FROM ledger.currencies WHERE code = 'REJ')
   AND a.bucket = 1 AND a.allow_negative
 ORDER BY t.account_id, t.id;

-- nothing is left in the queue for these events, and the ledger is sound
SELECT count(*) AS queued FROM ledger.queue q JOIN ev e ON e.id = q.id;
SELECT * FROM ledger_verify();
