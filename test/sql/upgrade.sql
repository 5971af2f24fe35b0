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

-- The 1.1 -> 1.2 upgrade, with an event pending across it: the worker of
-- account 8001's bucket is paused while it is enqueued and the schema
-- changes under it.
SELECT ledger_pause(1);
SELECT ledger_transfer(8001, 8002, 7) AS pending_transfer \gset
ALTER EXTENSION ledger UPDATE TO '1.2';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
SELECT ledger_resume(1);
SELECT ledger_wait(:pending_transfer, 30000);

-- accounts opened before 1.2 are in currency 0, named after the setting
SELECT * FROM ledger.currencies;
SELECT count(*) AS accounts, min(currency), max(currency) FROM ledger.accounts;
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(8001, 8004) a;
SELECT * FROM ledger_verify();

-- the events of earlier versions read as before, with 1.2's columns empty
SELECT kind, status, hold_id, expires_at, metadata FROM ledger_event((SELECT id FROM ev LIMIT 1));

-- and what 1.2 adds works on the upgraded ledger
SELECT ledger_hold(8001, 8004, 100) AS h \gset
SELECT ledger_wait(:h, 30000);
SELECT ledger_balance(8001), ledger_available(8001), ledger_hold_status(:h);
SELECT ledger_post(:h, 60, NULL, '{"upgrade": true}') AS p \gset
SELECT ledger_wait(:p, 30000);
SELECT ledger_balance(8001), ledger_available(8001), ledger_balance(8004), ledger_hold_status(:h);
SELECT event_id = :p AS found FROM ledger_find_events('{"upgrade": true}');
SELECT * FROM ledger_verify();

-- 1.2 -> 1.3: a ledger on its own stays one (ledger.node_id is 0 here)
ALTER EXTENSION ledger UPDATE TO '1.3';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
SELECT ledger_wait(ledger_transfer(8004, 8001, 3), 0) AS own_transaction;
SELECT ledger_transfer(8004, 8001, 3) AS t \gset
SELECT ledger_wait(:t, 30000);
SELECT * FROM ledger_node_totals();
SELECT * FROM ledger_verify();
SELECT count(*) AS directory FROM ledger.directory;
SELECT ledger_cluster_init();

-- 1.3 -> 1.4: the queue loses the indexes the spam guard and the metadata
-- search used; both still work, with an event pending across the update
SELECT ledger_pause(0);
SELECT ledger_transfer(8002, 8003, 7, metadata => '{"pending": "across 1.4"}') AS q \gset
ALTER EXTENSION ledger UPDATE TO '1.4';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
SELECT indexrelid::regclass AS queue_index FROM pg_index
 WHERE indrelid = 'ledger.queue'::regclass ORDER BY 1;
SELECT event_id = :q AS found, status FROM ledger_find_events('{"pending": "across 1.4"}');
SET ledger.max_pending_per_account = 1;
SELECT ledger_transfer(8002, 8003, 1);
RESET ledger.max_pending_per_account;
SELECT ledger_resume(0);
SELECT ledger_wait(:q, 30000);
SELECT event_id = :q AS found, status FROM ledger_find_events('{"pending": "across 1.4"}');
-- applied, it no longer counts
SET ledger.max_pending_per_account = 1;
SELECT ledger_transfer(8002, 8003, 1) > :q AS accepted;
RESET ledger.max_pending_per_account;
SELECT * FROM ledger_verify();

-- leave the database to the next test without the extension
DROP EXTENSION ledger;
