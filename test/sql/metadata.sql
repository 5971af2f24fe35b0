-- Metadata: an optional JSON object on every event, returned by
-- ledger_event() and searchable with ledger_find_events().
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

SELECT ledger_open_account(a) FROM generate_series(9401, 9403) a;
SELECT ledger_deposit(9401, 1000, NULL, '{"order": "A-1", "channel": "web"}') AS m1 \gset
SELECT ledger_withdraw(9401, 10, NULL, '{"order": "A-2", "channel": "atm"}') AS m2 \gset
SELECT ledger_transfer(9401, 9402, 20, NULL, '{"order": "A-3", "channel": "web", "tags": ["x", "y"]}') AS m3 \gset
SELECT ledger_disburse(9401, '{9402,9403}', '{1,2}', NULL, '{"order": "A-4", "payroll": {"month": 11}}') AS m4 \gset
SELECT ledger_transfer_many('{9401,9401,9401}', '{9402,9403,9402}', '{3,4,5}', NULL,
							ARRAY['{"order": "A-5"}', NULL, '{"order": "A-6", "channel": "web"}']::jsonb[]) AS m5 \gset
SELECT ledger_hold(9401, 9402, 30, NULL, NULL, '{"order": "A-7", "channel": "web"}') AS m6 \gset
SELECT ledger_post(:m6, NULL, NULL, '{"order": "A-8"}') AS m7 \gset
SELECT ledger_transfer(9401, 9402, 1) AS m8 \gset
SELECT ledger_wait(:m8, 30000);

SELECT kind, metadata FROM unnest(ARRAY[:m1, :m2, :m3, :m4, :m6, :m7, :m8]::bigint[]) e,
	   LATERAL ledger_event(e) ORDER BY e;
SELECT e.id - (:'m5'::bigint[])[1] AS element, e.metadata FROM ledger.events e
 WHERE e.id = ANY (:'m5'::bigint[]) ORDER BY e.id;

-- containment: pending events are found too (the worker of 9401 paused)
SELECT ledger_pause(1);
SELECT ledger_transfer(9401, 9403, 1, NULL, '{"channel": "web", "pending": true}') AS m9 \gset
SELECT kind, account_id, amount, status, event_metadata FROM ledger_find_events('{"channel": "web"}');
SELECT ledger_resume(1);
SELECT ledger_wait(:m9, 30000);
SELECT kind, status FROM ledger_find_events('{"channel": "web"}', 2);
SELECT count(*) FROM ledger_find_events('{"payroll": {"month": 11}}');
SELECT count(*) FROM ledger_find_events('{"tags": ["y"]}');
SELECT count(*) FROM ledger_find_events('{"order": "nope"}');
SELECT count(*) FROM ledger_find_events('{}');

-- bad metadata
SELECT ledger_transfer(9401, 9402, 1, NULL, '[1, 2]');
SELECT ledger_transfer(9401, 9402, 1, NULL, '"text"');
SELECT ledger_transfer(9401, 9402, 1, NULL, jsonb_build_object('big', repeat('x', 70000)));
SELECT ledger_transfer_many('{9401}', '{9402}', '{1}', NULL, ARRAY['1']::jsonb[]);
SELECT ledger_transfer_many('{9401}', '{9402}', '{1}', NULL, ARRAY['{}', '{}']::jsonb[]);
SELECT * FROM ledger_find_events('[1]');
SELECT * FROM ledger_find_events('{}', -1);

SELECT * FROM ledger_verify();
