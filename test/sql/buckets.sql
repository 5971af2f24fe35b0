-- Money moving across buckets: each account belongs to bucket (id mod 2) and
-- its bucket's worker posts its legs; a payment across buckets is debited in
-- the payer's bucket and credited in the payee's.  Events of one paying
-- account apply in the order they were enqueued.  An idempotency key names
-- one request.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

SELECT ledger_open_account(id) FROM generate_series(3001, 3008) id;
SELECT id, allow_negative, bucket FROM ledger.accounts
 WHERE id BETWEEN 3001 AND 3008 OR (id <= 0 AND currency = 0)
 ORDER BY bucket, id;

CREATE TEMP TABLE ev (ord serial, label text NOT NULL, id bigint NOT NULL);
CREATE TEMP VIEW balances AS
SELECT id AS account, ledger_balance(id) AS balance
  FROM generate_series(3001, 3008) id;

-- funds in both buckets, then transfers within and across buckets, both ways
INSERT INTO ev (label, id) VALUES ('deposit 3001 10000', ledger_deposit(3001, 10000));
INSERT INTO ev (label, id) VALUES ('deposit 3002 10000', ledger_deposit(3002, 10000));
SELECT label, ledger_wait(id, 30000) FROM ev ORDER BY ord;
INSERT INTO ev (label, id) VALUES ('transfer 3001->3002 1500 (1 to 0)', ledger_transfer(3001, 3002, 1500));
INSERT INTO ev (label, id) VALUES ('transfer 3002->3001 700 (0 to 1)', ledger_transfer(3002, 3001, 700));
INSERT INTO ev (label, id) VALUES ('transfer 3001->3004 100 (1 to 0)', ledger_transfer(3001, 3004, 100));
INSERT INTO ev (label, id) VALUES ('transfer 3002->3003 200 (0 to 1)', ledger_transfer(3002, 3003, 200));
INSERT INTO ev (label, id) VALUES ('transfer 3001->3003 300 (1 to 1)', ledger_transfer(3001, 3003, 300));
INSERT INTO ev (label, id) VALUES ('transfer 3002->3004 400 (0 to 0)', ledger_transfer(3002, 3004, 400));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE ord > 2 ORDER BY ord;
SELECT * FROM balances;

-- each transfer posted one debit in the payer's bucket and one credit in the
-- payee's, under the same event
SELECT e.label, t.account_id, a.bucket, t.amount
  FROM ev e
  JOIN ledger.transactions t ON t.event_id = e.id
  JOIN ledger.accounts a ON a.id = t.account_id
 WHERE e.label LIKE 'transfer%'
 ORDER BY e.ord, t.amount;

-- disbursements across buckets, from either bucket; the last one cannot be
-- afforded (3004 holds 500, or 530 once 3001's 30 has landed) and posts
-- nothing in either bucket
INSERT INTO ev (label, id) VALUES ('disburse 3001 to 5 payees', ledger_disburse(3001, '{3002,3003,3004,3005,3006}', '{10,20,30,40,50}'));
INSERT INTO ev (label, id) VALUES ('disburse 3002 to 3 payees', ledger_disburse(3002, '{3001,3003,3006}', '{1,2,3}'));
INSERT INTO ev (label, id) VALUES ('disburse 3004 to 2 payees', ledger_disburse(3004, '{3005,3006}', '{500,31}'));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'disburse%' ORDER BY ord;
SELECT e.label, x.status, x.reason, count(t.id) AS legs,
       coalesce(sum(t.amount), 0) AS sum,
       array_agg(t.account_id || ':' || t.amount ORDER BY t.account_id)
         FILTER (WHERE t.id IS NOT NULL) AS account_amounts
  FROM ev e
  CROSS JOIN LATERAL ledger_event(e.id) x
  LEFT JOIN ledger.transactions t ON t.event_id = e.id
 WHERE e.label LIKE 'disburse%'
 GROUP BY e.ord, e.label, x.status, x.reason
 ORDER BY e.ord;
SELECT * FROM balances;

/*
 * Order per paying account.  3007 (bucket 1) and 3008 (bucket 0) each get a
 * deposit and then withdrawals; which of these succeed depends on the order
 * they are applied in.  3007's all come from one transaction, 3008's from
 * one statement each.  3008's are enqueued once 3007's are done, so that
 * what 3007 sent 3008 has arrived: the order is kept per paying account,
 * not between accounts of different buckets.
 */
BEGIN;
INSERT INTO ev (label, id) VALUES ('3007 deposit 100', ledger_deposit(3007, 100));
INSERT INTO ev (label, id) VALUES ('3007 withdraw 60', ledger_withdraw(3007, 60));
INSERT INTO ev (label, id) VALUES ('3007 withdraw 50', ledger_withdraw(3007, 50));
INSERT INTO ev (label, id) VALUES ('3007 withdraw 40', ledger_withdraw(3007, 40));
INSERT INTO ev (label, id) VALUES ('3007 withdraw 1', ledger_withdraw(3007, 1));
INSERT INTO ev (label, id) VALUES ('3007 deposit 5', ledger_deposit(3007, 5));
INSERT INTO ev (label, id) VALUES ('3007 transfer 5 to 3008', ledger_transfer(3007, 3008, 5));
INSERT INTO ev (label, id) VALUES ('3007 withdraw 1 again', ledger_withdraw(3007, 1));
COMMIT;
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label LIKE '3007 %' ORDER BY ord;
INSERT INTO ev (label, id) VALUES ('3008 deposit 30', ledger_deposit(3008, 30));
INSERT INTO ev (label, id) VALUES ('3008 transfer 20 to 3007', ledger_transfer(3008, 3007, 20));
INSERT INTO ev (label, id) VALUES ('3008 withdraw 16', ledger_withdraw(3008, 16));
INSERT INTO ev (label, id) VALUES ('3008 withdraw 11', ledger_withdraw(3008, 11));
INSERT INTO ev (label, id) VALUES ('3008 withdraw 10', ledger_withdraw(3008, 10));
INSERT INTO ev (label, id) VALUES ('3008 disburse 1 to 3007', ledger_disburse(3008, '{3007}', '{1}'));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label LIKE '3008 %' ORDER BY ord;
SELECT e.label, x.status, x.reason
  FROM ev e, ledger_event(e.id) x
 WHERE e.label LIKE '300_ %'
 ORDER BY e.ord;
-- 3007: 100 - 60 - 40 + 5 - 5 = 0, then 20 + 1 from 3008;
-- 3008: 5 from 3007, + 30 - 20 - 11 - 1 = 3
SELECT account, balance FROM balances WHERE account IN (3007, 3008);

-- idempotency: a key names one request, and the call that repeats it gets
-- its event, in the same transaction or later, applied or rejected; any
-- other call with the key is refused, naming what differs (trust.sql has
-- every case)
SELECT ledger_deposit(3005, 111, 'bk-1') AS k1 \gset
SELECT ledger_deposit(3005, 111, 'bk-1') = :k1 AS same_call;
SELECT ledger_deposit(3005, 999, 'bk-1');
SELECT ledger_withdraw(3006, 5, 'bk-1');
SELECT ledger_deposit(3006, 111, 'bk-1');
SELECT count(*) AS queued_or_recorded FROM (
  SELECT id FROM ledger.queue WHERE id = :k1
  UNION ALL SELECT id FROM ledger.events WHERE id = :k1) s;
SELECT ledger_wait(:k1, 30000);
SELECT ledger_deposit(3005, 111, 'bk-1') = :k1 AS same_after_applied;
SELECT ledger_balance(3005);
BEGIN;
SELECT ledger_transfer(3006, 3005, 1, 'bk-2') AS k2 \gset
SELECT ledger_transfer(3006, 3005, 1, 'bk-2') = :k2 AS same_in_transaction;
COMMIT;
-- a key whose enqueue was rolled back is free again
BEGIN;
SELECT ledger_deposit(3006, 7, 'bk-3') AS k3_rolled_back \gset
ROLLBACK;
SELECT ledger_deposit(3006, 8, 'bk-3') AS k3 \gset
SELECT :k3 <> :k3_rolled_back AS new_event;
-- a rejected event keeps its key: retrying returns the rejection
SELECT ledger_withdraw(3006, 1000000, 'bk-4') AS k4 \gset
SELECT ledger_wait(:k2, 30000), ledger_wait(:k3, 30000), ledger_wait(:k4, 30000);
SELECT ledger_withdraw(3006, 1000000, 'bk-4') = :k4 AS same_rejected_event,
       ledger_event_status(ledger_withdraw(3006, 1000000, 'bk-4')) AS status;
-- keys are compared exactly
SELECT ledger_deposit(3006, 1, 'BK-1') <> :k1 AS case_matters,
       ledger_deposit(3006, 1, 'bk-1 ') <> :k1 AS spaces_matter;
SELECT kind, account_id, amount, status, reason FROM ledger_event(:k1)
UNION ALL SELECT kind, account_id, amount, status, reason FROM ledger_event(:k2)
UNION ALL SELECT kind, account_id, amount, status, reason FROM ledger_event(:k3)
UNION ALL SELECT kind, account_id, amount, status, reason FROM ledger_event(:k4);

-- drain everything, then: nothing pending, every balance sums to zero with
-- the external accounts, and the audit is clean
SELECT count(*) FILTER (WHERE s IS DISTINCT FROM 'applied' AND s IS DISTINCT FROM 'rejected') AS undecided
  FROM (SELECT ledger_wait(id, 30000) AS s FROM ledger.queue) w;
SELECT count(*) AS queued FROM ledger.queue;
SELECT * FROM balances;
SELECT sum(ledger_balance(id)) AS all_balances FROM ledger.accounts;
SELECT sum(amount) AS all_legs FROM ledger.transactions;
SELECT * FROM ledger_verify();
