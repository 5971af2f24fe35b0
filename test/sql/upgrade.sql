-- The 1.0 -> 1.1 upgrade path, on a populated ledger, with the workers running.
CREATE EXTENSION ledger VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';

SELECT ledger_open_account(a) FROM generate_series(8001, 8004) a;
CREATE TEMP TABLE ev AS
SELECT ledger_deposit(8001, 1000) AS id
UNION ALL SELECT ledger_transfer(8001, 8002, 100)
UNION ALL SELECT ledger_transfer(8001, 8003, 200, 'before-upgrade')
UNION ALL SELECT ledger_disburse(8001, '{8002,8003,8004}', '{1,2,3}');
SELECT count(*) FILTER (WHERE ledger_wait(id, 30000) = 'applied') AS applied FROM ev;

ALTER EXTENSION ledger UPDATE TO '1.1';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';

-- the history is intact and the ledger keeps working
SELECT a, ledger_balance(a) FROM generate_series(8001, 8004) a;
SELECT ledger_transfer(8001, 8003, 200, 'before-upgrade') = (SELECT id FROM ev LIMIT 1 OFFSET 2) AS same_event;
SELECT ledger_wait(ledger_transfer(8002, 8004, 50), 0) AS own_transaction;
SELECT ledger_transfer(8002, 8004, 50) AS t \gset
SELECT ledger_wait(:t, 30000);
SELECT a, ledger_balance(a) FROM generate_series(8001, 8004) a;
SELECT * FROM ledger_verify();

-- what 1.1 adds
SELECT bucket, pid IS NOT NULL AS running, paused FROM ledger_stats ORDER BY bucket;

-- leave the database to the next test without the extension
DROP EXTENSION ledger;
