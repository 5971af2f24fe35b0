-- The upgrade path 1.0 -> 1.9 on a populated ledger, with the workers
-- running and events pending across it.  The library serves its own
-- version's schema only: it refuses to enqueue into an earlier one, and its
-- workers wait for the update.  So the ledger of each earlier version is filled
-- here as its own library would have left it: rows inserted by the
-- superuser, legs with their running balances, a queued event, a credit in
-- flight between buckets, an idempotency key, holds open and ended.
CREATE EXTENSION ledger VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';

-- the library refuses to enqueue into a 1.0 schema
SELECT ledger_open_account(8001);
SELECT ledger_transfer(8001, 8002, 1);

-- a 1.0 ledger: 8001 and 8003 in bucket 1, 8002 and 8004 in bucket 0, the
-- external accounts -1 and -2 of the two buckets
INSERT INTO ledger.accounts (id, allow_negative, bucket) VALUES
	(-1, true, 0), (-2, true, 1), (8001, false, 1), (8002, false, 0),
	(8003, false, 1), (8004, false, 0);
-- applied: event 1 deposits 1000 into 8001, event 2 moves 200 from 8001 to
-- 8003 (idempotency key 'before-upgrade'), event 4 disburses 1 to 8002 and
-- 2 to 8004 from 8001, its credit still queued in bucket 0; queued: event
-- 3, a transfer of 7 from 8001 to 8002
INSERT INTO ledger.events (id, kind, account_id, to_account, amount, to_accounts,
						   amounts, status, enqueued_at, applied_at) VALUES
	(1, 'd', 8001, NULL, 1000, NULL, NULL, 'a', now(), now()),
	(2, 't', 8001, 8003, 200, NULL, NULL, 'a', now(), now()),
	(4, 's', 8001, NULL, 3, '{8002,8004}', '{1,2}', 'a', now(), now());
INSERT INTO ledger.transactions (id, account_id, event_id, amount, balance_after, created_at) VALUES
	(1, -2, 1, -1000, -1000, now()), (2, 8001, 1, 1000, 1000, now()),
	(3, 8001, 2, -200, 800, now()), (4, 8003, 2, 200, 200, now()),
	(5, 8001, 4, -3, 797, now());
INSERT INTO ledger.queue (bucket, seq, id, kind, account_id, to_account, amount,
						  to_accounts, amounts, enqueued_at) VALUES
	(1, 3, 3, 't', 8001, 8002, 7, NULL, NULL, now()),
	(0, 5, 4, 'c', 8001, NULL, 3, '{8002,8004}', '{1,2}', now());
INSERT INTO ledger.idempotency VALUES ('before-upgrade', 2);
SELECT setval('ledger.event_id_seq', 5), setval('ledger.transaction_id_seq', 5);
SELECT * FROM ledger_verify();

ALTER EXTENSION ledger UPDATE TO '1.1';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
-- the workers say why they apply nothing (they start a little after the
-- database is created)
DO $$
BEGIN
	FOR i IN 1 .. 300 LOOP
		EXIT WHEN (SELECT bool_and(state = 'waiting for extension update') FROM ledger_stats);
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SELECT bucket, state, pending FROM ledger_stats ORDER BY bucket;

ALTER EXTENSION ledger UPDATE TO '1.2';
-- accounts of earlier versions are in currency 0, named after the setting
SELECT * FROM ledger.currencies;
SELECT count(*) AS accounts, min(currency), max(currency) FROM ledger.accounts;
ALTER EXTENSION ledger UPDATE TO '1.3';
ALTER EXTENSION ledger UPDATE TO '1.4';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
SELECT * FROM ledger_verify();

-- a 1.4 ledger gains holds: event 6 holds 50 of 8003 for 8004 (open), event
-- 7 held 20 and event 8 voided it; event 9, with metadata, is queued
INSERT INTO ledger.events (id, kind, account_id, to_account, amount, status,
						   enqueued_at, applied_at, hold_id, metadata) VALUES
	(6, 'h', 8003, 8004, 50, 'a', now(), now(), NULL, NULL),
	(7, 'h', 8003, 8004, 20, 'a', now(), now(), NULL, NULL),
	(8, 'v', 8003, 8004, 0, 'a', now(), now(), 7, NULL);
INSERT INTO ledger.hold_ends VALUES (7, 8003, 'v', 8, 0, now());
INSERT INTO ledger.queue (bucket, seq, id, kind, account_id, to_account, amount,
						  enqueued_at, metadata) VALUES
	(0, 9, 9, 't', 8002, 8004, 1, now(), '{"pending": "across 1.5"}');
SELECT setval('ledger.event_id_seq', 9);
SELECT ledger_hold_status(6), ledger_hold_status(7), ledger_available(8003);
SELECT event_id, status FROM ledger_find_events('{"pending": "across 1.5"}');
SELECT * FROM ledger_verify();

-- 1.4 -> 1.5: the open hold's total is carried into ledger.account_holds,
-- the key of before 1.5 belongs to no role
ALTER EXTENSION ledger UPDATE TO '1.5';
SELECT account_id, held FROM ledger.account_holds ORDER BY account_id;
SELECT role, key, event_id FROM ledger.idempotency;
SELECT bucket, seq, id, kind FROM ledger.queue ORDER BY seq;

-- a 1.5 ledger with a debit waiting for a credit of its transaction: 8005
-- (bucket 1) got 500 (event 10) and, in one transaction, sent 300 to 8006
-- (bucket 0, event 11), whose credit is still queued, and 8006 withdraws
-- 250 (event 12, queued before the credit, waiting from event 11)
INSERT INTO ledger.accounts (id, allow_negative, bucket, currency) VALUES
	(8005, false, 1, 0), (8006, false, 0, 0);
INSERT INTO ledger.events (id, kind, account_id, to_account, amount, status,
						   enqueued_at, applied_at) VALUES
	(10, 'd', 8005, NULL, 500, 'a', now(), now()),
	(11, 't', 8005, 8006, 300, 'a', now(), now());
INSERT INTO ledger.transactions (id, account_id, event_id, amount, balance_after, created_at) VALUES
	(6, -2, 10, -500, -1500, now()), (7, 8005, 10, 500, 500, now()),
	(8, 8005, 11, -300, 200, now());
INSERT INTO ledger.queue (bucket, seq, id, kind, account_id, to_account, amount,
						  to_accounts, amounts, enqueued_at, waits_from) VALUES
	(0, 12, 12, 'w', 8006, NULL, 250, NULL, NULL, now(), 11),
	(0, 13, 11, 'c', 8005, NULL, 300, '{8006}', '{300}', now(), NULL);
SELECT setval('ledger.event_id_seq', 13), setval('ledger.transaction_id_seq', 8);
SELECT * FROM ledger_verify();

-- 1.5 -> 1.8: the queued events move into the log (a credit keeps its
-- place, its queue seq becoming its id); the 1.9 library serves its own
-- schema only, so they wait for 1.9
ALTER EXTENSION ledger UPDATE TO '1.8';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
SELECT id, kind, bucket, credit_of, txid IS NOT NULL AS logged
  FROM ledger.event_log WHERE txid IS NOT NULL ORDER BY id;
DO $$
BEGIN
	FOR i IN 1 .. 300 LOOP
		EXIT WHEN (SELECT bool_and(state = 'waiting for extension update') FROM ledger_stats);
		PERFORM pg_sleep(0.1);
	END LOOP;
END
$$;
SELECT worker, state, pending FROM ledger_stats ORDER BY worker;

-- 1.8 -> 1.9: they apply, and the credit in flight lands
ALTER EXTENSION ledger UPDATE TO '1.9';
SELECT extversion FROM pg_extension WHERE extname = 'ledger';
SELECT ledger_wait(3, 30000), ledger_wait(4, 30000), ledger_wait(9, 30000);
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(8001, 8004) a;
-- the withdrawal waited for the credit of event 11, as 1.5 would have
SELECT ledger_wait(11, 30000), ledger_wait(12, 30000);
SELECT ledger_balance(8005), ledger_balance(8006);
SELECT worker, pending FROM ledger_stats ORDER BY worker;

-- the worker knows the hold and posts it
SELECT ledger_post(6) AS p \gset
SELECT ledger_wait(:p, 30000);
SELECT ledger_hold_status(6), ledger_balance(8003), ledger_available(8003),
       ledger_balance(8004);

-- a key from before 1.5 answers with its event, as it did, to any caller
SELECT ledger_transfer(8001, 8003, 200, 'before-upgrade') AS same_event;
SELECT ledger_deposit(8002, 5, 'before-upgrade') AS any_call;
SELECT role, key, event_id, kind, request IS NULL AS no_request FROM ledger.idempotency;
-- new keys are the caller's, and name one request
SELECT ledger_transfer(8001, 8003, 1, 'after-upgrade') AS k \gset
SELECT ledger_transfer(8001, 8003, 1, 'after-upgrade') = :k AS same_request;
SELECT ledger_transfer(8001, 8003, 2, 'after-upgrade');

-- the roles of 1.5
SELECT r.rolname, pg_has_role('ledger_operator', 'ledger_client', 'MEMBER') AS operator_is_client
  FROM pg_roles r WHERE r.rolname IN ('ledger_client', 'ledger_operator') ORDER BY 1;
SELECT ledger_wait(:k, 30000);
SELECT * FROM ledger_verify();

-- 1.7's ledger_wait until credited
SELECT ledger_pause(0);
SELECT ledger_transfer(8002, 8004, 7, 'credited-1.7') AS x \gset
SELECT ledger_wait(:x, 0);
SELECT ledger_wait(:x, 0, 'credited');
SELECT ledger_resume(0);
SELECT ledger_wait(:x, 30000, until => 'credited'), ledger_event_status(:x);
SELECT ledger_wait(:x, 0, 'settled');
SELECT ledger_wait(:x, 0, NULL);
-- the money of a ledger on its own: nothing in flight, and zero in all
SELECT currency, external, customers, in_flight, external + customers + in_flight AS total
  FROM ledger_node_money();
SELECT * FROM ledger_verify();

-- 1.8's ledger_stats has a row per worker, and says so
SELECT worker, state, pending FROM ledger_stats ORDER BY worker;
-- and the workers decide what comes after it
SELECT ledger_transfer(8002, 8004, 1) AS x \gset
SELECT ledger_wait(:x, 30000);
SELECT count(*) FROM ledger_health('0 seconds');
-- 1.9: the batches since the update are chained, from each bucket's first
SELECT count(*) AS heads, bool_and(length(hash) = 32) AS sha256 FROM ledger_chain_heads();
SELECT * FROM ledger_verify_chain();
SELECT * FROM ledger_verify();

-- leave the database to the next test without the extension
DROP EXTENSION ledger;
