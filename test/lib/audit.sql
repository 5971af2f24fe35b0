-- The audit after a load of test/lib/load.sql, once the queue has drained.
-- Expects a table acked (id bigint): the acknowledged event ids.  Prints one
-- line per check, its name and a count that must be 0.
CREATE TEMP TABLE legs AS
	SELECT event_id, account_id, count(*) AS n
	  FROM ledger.transactions GROUP BY event_id, account_id;
SELECT 'acknowledged events missing', count(*)
  FROM acked a
 WHERE NOT EXISTS (SELECT 1 FROM ledger.events e WHERE e.id = a.id)
UNION ALL
SELECT 'events recorded twice', count(*) - count(DISTINCT id)
  FROM ledger.events
UNION ALL
SELECT 'events neither applied nor rejected', count(*)
  FROM ledger.events WHERE status NOT IN ('a', 'r')
UNION ALL
SELECT 'rejections for no known reason', count(*)
  FROM ledger.events
 WHERE status = 'r'
   AND reason NOT IN ('insufficient_funds', 'overflow', 'hold_rejected', 'hold_posted',
					  'hold_voided', 'exceeds_hold')
UNION ALL
SELECT 'accounts with two legs of one event', count(*)
  FROM legs WHERE n > 1
UNION ALL
SELECT 'events with the wrong number of legs', count(*)
  FROM ledger.events e
  LEFT JOIN (SELECT event_id, sum(n) AS n FROM legs GROUP BY event_id) l
	ON l.event_id = e.id
 WHERE COALESCE(l.n, 0) <> CASE WHEN e.status = 'r' OR e.kind IN ('h', 'v') THEN 0
								WHEN e.kind = 's' THEN 1 + cardinality(e.to_accounts)
								ELSE 2 END
UNION ALL
SELECT 'ledger_verify() problems', count(*) FROM ledger_verify()
UNION ALL
SELECT 'sum of all balances', COALESCE(sum(ledger_balance(id)), 0)
  FROM ledger.accounts
UNION ALL
SELECT 'overdrawn legs', count(*)
  FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
 WHERE NOT a.allow_negative AND t.balance_after < 0;
