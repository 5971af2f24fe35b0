-- Breakpoints: every ledger.breakpoint_interval legs of an account (5 in
-- test/ledger.conf) its worker writes one row condensing them.  The rows of
-- an account chain: each starts at the leg after the previous one's last,
-- starts from the balance the previous one ended with, and agrees with the
-- legs it covers.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

SHOW ledger.breakpoint_interval;

-- 4001 and 4003 in bucket 1, 4002 in bucket 0
SELECT ledger_open_account(4001), ledger_open_account(4002),
       ledger_open_account(4003);

/*
 * 23 events moving money in or out of 4001, in one transaction, in order:
 * deposits, withdrawals, transfers to 4003 (same bucket) and to 4002
 * (across buckets, so 4002's legs are posted from credit entries).
 */
CREATE TEMP TABLE ev (n integer PRIMARY KEY, label text NOT NULL, id bigint NOT NULL);
DO $$
BEGIN
	FOR n IN 1..23 LOOP
		CASE n % 4
			WHEN 1 THEN
				INSERT INTO ev VALUES (n, 'deposit ' || n * 100, ledger_deposit(4001, n * 100));
			WHEN 2 THEN
				INSERT INTO ev VALUES (n, 'withdraw ' || n, ledger_withdraw(4001, n));
			WHEN 3 THEN
				INSERT INTO ev VALUES (n, 'to 4003 ' || n, ledger_transfer(4001, 4003, n));
			ELSE
				INSERT INTO ev VALUES (n, 'to 4002 ' || n * 2, ledger_transfer(4001, 4002, n * 2));
		END CASE;
	END LOOP;
END
$$;
SELECT count(*) FILTER (WHERE s = 'applied') AS applied, count(*) AS events
  FROM (SELECT ledger_wait(id, 30000) AS s FROM ev) w;

-- the legs of 4001, oldest first, one per event, in the order enqueued
CREATE TEMP VIEW legs AS
SELECT t.account_id, row_number() OVER w AS leg, t.id, t.event_id, t.amount,
       t.balance_after
  FROM ledger.transactions t
 WHERE t.account_id IN (4001, 4002, 4003)
WINDOW w AS (PARTITION BY t.account_id ORDER BY t.id);

SELECT l.leg, e.n, e.label, l.amount, l.balance_after
  FROM legs l JOIN ev e ON e.id = l.event_id
 WHERE l.account_id = 4001
 ORDER BY l.leg;

/*
 * The breakpoints of each account.  A breakpoint covers the account's legs
 * whose ids lie in [first_txn_id, last_txn_id]; shown here by the numbers of
 * the first and last legs it covers rather than by leg ids.
 */
CREATE TEMP VIEW bp AS
SELECT b.account_id, row_number() OVER w AS k, c.legs, c.first_leg, c.last_leg,
       b.previous_balance, b.current_balance, b.amount_difference,
       b.previous_balance = coalesce(lag(b.current_balance) OVER w, 0) AS chained,
       c.first_leg = coalesce(lag(c.last_leg) OVER w, 0) + 1 AS contiguous,
       b.first_txn_id > coalesce(lag(b.last_txn_id) OVER w, 0) AS disjoint,
       b.last_txn_id = c.last_id AND b.current_balance = c.last_balance AS ends_at_leg,
       b.amount_difference = c.sum AS sums_legs
  FROM ledger.breakpoints b
  CROSS JOIN LATERAL
       (SELECT count(*) AS legs, min(l.leg) AS first_leg, max(l.leg) AS last_leg,
               sum(l.amount) AS sum, max(l.id) AS last_id,
               (array_agg(l.balance_after ORDER BY l.id DESC))[1] AS last_balance
          FROM legs l
         WHERE l.account_id = b.account_id
           AND l.id BETWEEN b.first_txn_id AND b.last_txn_id) c
 WHERE b.account_id IN (4001, 4002, 4003)
WINDOW w AS (PARTITION BY b.account_id ORDER BY b.last_txn_id);

SELECT * FROM bp ORDER BY account_id, k;
SELECT account_id, count(*) AS legs, sum(amount) AS sum,
       (array_agg(balance_after ORDER BY id DESC))[1] AS newest_balance_after,
       ledger_balance(account_id)
  FROM legs GROUP BY account_id ORDER BY account_id;
-- the balance is the newest breakpoint plus the legs after it
SELECT b.account_id, b.current_balance + coalesce(
         (SELECT sum(t.amount) FROM ledger.transactions t
           WHERE t.account_id = b.account_id AND t.id > b.last_txn_id), 0)
       = ledger_balance(b.account_id) AS breakpoint_plus_legs
  FROM ledger.breakpoints b
 WHERE b.account_id IN (4001, 4002, 4003)
   AND b.last_txn_id = (SELECT max(b2.last_txn_id) FROM ledger.breakpoints b2
                         WHERE b2.account_id = b.account_id)
 ORDER BY b.account_id;

-- history: newest first, limited, agreeing with the legs
SELECT h.ord, e.n, h.amount, h.balance_after
  FROM ledger_history(4001, 3) WITH ORDINALITY
       AS h(transaction_id, event_id, amount, balance_after, created_at, ord)
  JOIN ev e ON e.id = h.event_id
 ORDER BY h.ord;
SELECT (SELECT count(*) FROM ledger_history(4001)) AS default_limit,
       (SELECT count(*) FROM ledger_history(4001, 23)) AS "23",
       (SELECT count(*) FROM ledger_history(4001, 22)) AS "22",
       (SELECT count(*) FROM ledger_history(4001, 1)) AS "1",
       (SELECT count(*) FROM ledger_history(4001, 0)) AS "0",
       (SELECT count(*) FROM ledger_history(4001, 2147483647)) AS max;
SELECT count(*) AS disagreeing
  FROM ledger_history(4001) h
  FULL JOIN (SELECT * FROM legs WHERE account_id = 4001) l ON l.id = h.transaction_id
 WHERE h.transaction_id IS NULL OR l.id IS NULL
    OR (h.event_id, h.amount, h.balance_after) IS DISTINCT FROM (l.event_id, l.amount, l.balance_after);

-- two more legs complete the fifth breakpoint of 4001, in a later batch
INSERT INTO ev VALUES (24, 'deposit 1', ledger_deposit(4001, 1));
INSERT INTO ev VALUES (25, 'withdraw 2', ledger_withdraw(4001, 2));
SELECT ledger_wait(id, 30000) FROM ev WHERE n >= 24 ORDER BY n;
SELECT * FROM bp WHERE account_id = 4001 ORDER BY k;
SELECT ledger_balance(4001);

SELECT * FROM ledger_verify();
