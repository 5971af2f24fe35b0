-- Statistics and controls: ledger_stats, ledger_stats_reset, ledger_pause,
-- ledger_resume.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- 7002 is in bucket 0, 7001 in bucket 1
SELECT ledger_open_account(7001), ledger_open_account(7002);
SELECT ledger_stats_reset();
SELECT worker, pid IS NOT NULL AS running, paused, events_applied, events_rejected,
       batches, pending
  FROM ledger_stats ORDER BY worker;

-- a paused bucket keeps accepting events but applies none
SELECT ledger_pause(0);
SELECT ledger_deposit(7002, 500) AS d \gset
SELECT ledger_wait(:d, 300) AS while_paused;
SELECT worker, state = 'paused' AS shows_paused, paused, pending,
       lag > interval '0' AS lagging
  FROM ledger_stats ORDER BY worker;
-- the other bucket goes on
SELECT ledger_wait(ledger_deposit(7001, 10), 0) AS own;
SELECT ledger_deposit(7001, 10) AS e \gset
SELECT ledger_wait(:e, 30000) AS other_bucket;

SELECT ledger_resume(0);
SELECT ledger_wait(:d, 30000) AS after_resume;
SELECT ledger_balance(7002);
SELECT worker, paused, events_applied, events_rejected, batches > 0 AS batched,
       avg_batch_size > 0 AS sized, pending
  FROM ledger_stats ORDER BY worker;

-- a rejection is counted as such
SELECT ledger_withdraw(7002, 1000000) AS w \gset
SELECT ledger_wait(:w, 30000);
SELECT worker, events_applied, events_rejected FROM ledger_stats WHERE worker = 0;

SELECT ledger_stats_reset();
SELECT sum(events_applied) AS applied, sum(batches) AS batches FROM ledger_stats;

SELECT ledger_pause(-1);
SELECT * FROM ledger_verify();
