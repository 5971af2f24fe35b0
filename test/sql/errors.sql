-- Every error an enqueue can raise, each a clear SQLSTATE and message, and
-- none of them leaving anything behind: no event queued or recorded, no
-- idempotency key kept, no leg posted.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- accounts of this file: 1001 (bucket 1), 1002 (bucket 0), 1003 (bucket 1,
-- may go negative); 1999 is never opened
SELECT ledger_open_account(1001), ledger_open_account(1002),
       ledger_open_account(1003, true);

-- what the ledger holds before: compared at the end
CREATE TEMP TABLE held_before AS
SELECT (SELECT count(*) FROM ledger.queue) AS queued,
       (SELECT count(*) FROM ledger.events) AS events,
       (SELECT max(id) FROM ledger.events) AS last_event,
       (SELECT count(*) FROM ledger.idempotency) AS keys,
       (SELECT count(*) FROM ledger.transactions) AS legs,
       (SELECT count(*) FROM ledger.accounts) AS accounts;

/*
 * attempt(sql, max_payees): run one query returning one text value in a
 * subtransaction that is always rolled back, so that even a call that is
 * accepted leaves nothing behind, and report what happened: the SQLSTATE and
 * message of its error, or "ok" and what it returned.  max_payees, when
 * given, sets ledger.max_payees for that call only.
 */
CREATE FUNCTION attempt(sql text, max_payees integer DEFAULT NULL,
                        OUT state text, OUT result text)
LANGUAGE plpgsql AS
$$
DECLARE
	value text;
BEGIN
	BEGIN
		IF max_payees IS NOT NULL THEN
			PERFORM set_config('ledger.max_payees', max_payees::text, true);
		END IF;
		EXECUTE sql INTO value;
		state := 'ok';
		result := coalesce(value, 'NULL');
		-- undo whatever the call did
		RAISE EXCEPTION USING ERRCODE = 'LDRBK';
	EXCEPTION
		WHEN SQLSTATE 'LDRBK' THEN
			NULL;
		WHEN OTHERS THEN
			state := SQLSTATE;
			result := SQLERRM;
	END;
END
$$;

CREATE TEMP TABLE cases (
	ord			serial,
	label		text NOT NULL,
	sql			text NOT NULL,
	max_payees	integer
);

-- NULL in each argument of every API function.  An idempotency key may be
-- NULL (no key); the read functions are STRICT and answer NULL or nothing.
INSERT INTO cases (label, sql) VALUES
('open: null account_id',        'SELECT ledger_open_account(NULL)::text'),
('open: null allow_negative',    'SELECT ledger_open_account(1001, NULL)::text'),
('deposit: null account_id',     'SELECT ledger_deposit(NULL, 1)::text'),
('deposit: null amount',         'SELECT ledger_deposit(1001, NULL)::text'),
('deposit: null key (accepted)', 'SELECT (ledger_deposit(1001, 1, NULL) > 0)::text'),
('withdraw: null account_id',    'SELECT ledger_withdraw(NULL, 1)::text'),
('withdraw: null amount',        'SELECT ledger_withdraw(1001, NULL)::text'),
('withdraw: null key (accepted)','SELECT (ledger_withdraw(1001, 1, NULL) > 0)::text'),
('transfer: null from_account',  'SELECT ledger_transfer(NULL, 1002, 1)::text'),
('transfer: null to_account',    'SELECT ledger_transfer(1001, NULL, 1)::text'),
('transfer: null amount',        'SELECT ledger_transfer(1001, 1002, NULL)::text'),
('transfer: null key (accepted)','SELECT (ledger_transfer(1001, 1002, 1, NULL) > 0)::text'),
('disburse: null from_account',  'SELECT ledger_disburse(NULL, ''{1002}'', ''{1}'')::text'),
('disburse: null to_accounts',   'SELECT ledger_disburse(1001, NULL, ''{1}'')::text'),
('disburse: null amounts',       'SELECT ledger_disburse(1001, ''{1002}'', NULL)::text'),
('disburse: null key (accepted)','SELECT (ledger_disburse(1001, ''{1002}'', ''{1}'', NULL) > 0)::text'),
('event_status: null',           'SELECT ledger_event_status(NULL)'),
('event: null',                  'SELECT count(*) || '' rows'' FROM ledger_event(NULL)'),
('wait: null event_id',          'SELECT ledger_wait(NULL, 10)'),
('wait: null timeout_ms',        'SELECT ledger_wait(1, NULL)'),
('balance: null',                'SELECT ledger_balance(NULL)::text'),
('history: null account_id',     'SELECT count(*) || '' rows'' FROM ledger_history(NULL)'),
('history: null max_rows',       'SELECT count(*) || '' rows'' FROM ledger_history(1001, NULL)');

-- amounts: zero, negative, the bigint extremes (the largest is a valid
-- amount: whether it fits a balance is the worker's decision)
INSERT INTO cases (label, sql) VALUES
('deposit: amount 0',            'SELECT ledger_deposit(1001, 0)::text'),
('deposit: amount -1',           'SELECT ledger_deposit(1001, -1)::text'),
('deposit: amount bigint min',   'SELECT ledger_deposit(1001, -9223372036854775808)::text'),
('deposit: amount bigint max',   'SELECT (ledger_deposit(1001, 9223372036854775807) > 0)::text'),
('withdraw: amount 0',           'SELECT ledger_withdraw(1001, 0)::text'),
('withdraw: amount -1',          'SELECT ledger_withdraw(1001, -1)::text'),
('withdraw: amount bigint min',  'SELECT ledger_withdraw(1001, -9223372036854775808)::text'),
('withdraw: amount bigint max',  'SELECT (ledger_withdraw(1001, 9223372036854775807) > 0)::text'),
('transfer: amount 0',           'SELECT ledger_transfer(1001, 1002, 0)::text'),
('transfer: amount -1',          'SELECT ledger_transfer(1001, 1002, -1)::text'),
('transfer: amount bigint min',  'SELECT ledger_transfer(1001, 1002, -9223372036854775808)::text'),
('transfer: amount bigint max',  'SELECT (ledger_transfer(1001, 1002, 9223372036854775807) > 0)::text'),
('disburse: amount 0',           'SELECT ledger_disburse(1001, ''{1002,1003}'', ''{1,0}'')::text'),
('disburse: amount -1',          'SELECT ledger_disburse(1001, ''{1002,1003}'', ''{-1,1}'')::text'),
('disburse: amount bigint min',  'SELECT ledger_disburse(1001, ''{1002}'', ''{-9223372036854775808}'')::text'),
('disburse: amount bigint max',  'SELECT (ledger_disburse(1001, ''{1002}'', ''{9223372036854775807}'') > 0)::text'),
('disburse: total overflows',    'SELECT ledger_disburse(1001, ''{1002,1003}'', ''{9223372036854775807,1}'')::text'),
('disburse: total overflows (2)','SELECT ledger_disburse(1001, ''{1002,1003}'', ''{4611686018427387904,4611686018427387904}'')::text'),
('disburse: total = bigint max', 'SELECT (ledger_disburse(1001, ''{1002,1003}'', ''{4611686018427387904,4611686018427387903}'') > 0)::text');

-- accounts: unknown, external (ids up to zero), paying yourself
INSERT INTO cases (label, sql) VALUES
('open: account 0',              'SELECT ledger_open_account(0)::text'),
('open: account -1 (external)',  'SELECT ledger_open_account(-1, true)::text'),
('open: account bigint min',     'SELECT ledger_open_account(-9223372036854775808)::text'),
('open: other allow_negative',   'SELECT ledger_open_account(1001, true)::text'),
('open: other allow_negative (2)','SELECT ledger_open_account(1003, false)::text'),
('open: other allow_negative (3)','SELECT ledger_open_account(1003)::text'),
('open: same flag again (no-op)','SELECT ledger_open_account(1003, true)::text'),
('deposit: unknown account',     'SELECT ledger_deposit(1999, 1)::text'),
('deposit: account 0',           'SELECT ledger_deposit(0, 1)::text'),
('deposit: account -1',          'SELECT ledger_deposit(-1, 1)::text'),
('deposit: account -2',          'SELECT ledger_deposit(-2, 1)::text'),
('withdraw: unknown account',    'SELECT ledger_withdraw(1999, 1)::text'),
('withdraw: account -1',         'SELECT ledger_withdraw(-1, 1)::text'),
('transfer: unknown payer',      'SELECT ledger_transfer(1999, 1001, 1)::text'),
('transfer: unknown payee',      'SELECT ledger_transfer(1001, 1999, 1)::text'),
('transfer: from account -1',    'SELECT ledger_transfer(-1, 1001, 1)::text'),
('transfer: to account -2',      'SELECT ledger_transfer(1001, -2, 1)::text'),
('transfer: to account 0',       'SELECT ledger_transfer(1001, 0, 1)::text'),
('transfer: to itself',          'SELECT ledger_transfer(1001, 1001, 1)::text'),
('disburse: unknown payer',      'SELECT ledger_disburse(1999, ''{1001}'', ''{1}'')::text'),
('disburse: unknown payee',      'SELECT ledger_disburse(1001, ''{1002,1999}'', ''{1,1}'')::text'),
('disburse: from account -2',    'SELECT ledger_disburse(-2, ''{1001}'', ''{1}'')::text'),
('disburse: to account -1',      'SELECT ledger_disburse(1001, ''{1002,-1}'', ''{1,1}'')::text'),
('disburse: to account 0',       'SELECT ledger_disburse(1001, ''{0}'', ''{1}'')::text'),
('disburse: to itself',          'SELECT ledger_disburse(1001, ''{1001}'', ''{1}'')::text'),
('disburse: payer among payees', 'SELECT ledger_disburse(1001, ''{1002,1003,1001}'', ''{1,1,1}'')::text');

-- arrays: empty, mismatched, repeated payee, NULL elements, more dimensions
INSERT INTO cases (label, sql) VALUES
('disburse: both arrays empty',  'SELECT ledger_disburse(1001, ''{}'', ''{}'')::text'),
('disburse: no payees',          'SELECT ledger_disburse(1001, ''{}'', ''{1}'')::text'),
('disburse: no amounts',         'SELECT ledger_disburse(1001, ''{1002}'', ''{}'')::text'),
('disburse: more amounts',       'SELECT ledger_disburse(1001, ''{1002}'', ''{1,2}'')::text'),
('disburse: fewer amounts',      'SELECT ledger_disburse(1001, ''{1002,1003}'', ''{1}'')::text'),
('disburse: payee twice',        'SELECT ledger_disburse(1001, ''{1002,1003,1002}'', ''{1,2,3}'')::text'),
('disburse: null payee',         'SELECT ledger_disburse(1001, ''{1002,NULL}'', ''{1,2}'')::text'),
('disburse: null amount',        'SELECT ledger_disburse(1001, ''{1002,1003}'', ''{NULL,2}'')::text'),
('disburse: 2-D to_accounts',    'SELECT ledger_disburse(1001, ''{{1002},{1003}}'', ''{1,2}'')::text'),
('disburse: 2-D amounts',        'SELECT ledger_disburse(1001, ''{1002,1003}'', ''{{1,2}}'')::text'),
('disburse: lower bound 0',      'SELECT (ledger_disburse(1001, ''[0:1]={1002,1003}'', ''{1,2}'') > 0)::text');

-- idempotency keys: at most 256 bytes, counted in bytes not characters
INSERT INTO cases (label, sql) VALUES
('deposit: key of 256 bytes',    'SELECT (ledger_deposit(1001, 1, repeat(''k'', 256)) > 0)::text'),
('deposit: key of 257 bytes',    'SELECT ledger_deposit(1001, 1, repeat(''k'', 257))::text'),
('deposit: key of 129 x 2 bytes','SELECT ledger_deposit(1001, 1, repeat(''é'', 129))::text'),
('withdraw: key of 257 bytes',   'SELECT ledger_withdraw(1001, 1, repeat(''k'', 257))::text'),
('transfer: key of 10000 bytes', 'SELECT ledger_transfer(1001, 1002, 1, repeat(''k'', 10000))::text'),
('disburse: key of 257 bytes',   'SELECT ledger_disburse(1001, ''{1002}'', ''{1}'', repeat(''k'', 257))::text');

-- payees beyond ledger.max_payees (set for the call only), up to arrays of
-- 100,000 elements (the largest ledger.max_payees allows)
INSERT INTO cases (label, sql, max_payees) VALUES
('disburse: 4 payees, limit 3',
 'SELECT ledger_disburse(1001, ''{1002,1003,1004,1005}'', ''{1,1,1,1}'')::text', 3),
('disburse: 3 payees, limit 3',
 'SELECT ledger_disburse(1001, ''{1002,1003,1999}'', ''{1,1,1}'')::text', 3),
('disburse: 1,001 payees, default limit',
 'SELECT ledger_disburse(1001, array_agg(i), array_agg(1::bigint)) FROM generate_series(2000001::bigint, 2001001) i', NULL),
('disburse: 100,000 payees, limit 99,999',
 'SELECT ledger_disburse(1001, array_agg(i), array_agg(1::bigint)) FROM generate_series(2000001::bigint, 2100000) i', 99999),
('disburse: 100,000 unknown payees',
 'SELECT ledger_disburse(1001, array_agg(i), array_agg(1::bigint)) FROM generate_series(2000001::bigint, 2100000) i', 100000),
('disburse: 100,000 payees, last twice',
 'SELECT ledger_disburse(1001, array_agg(least(i, 2099999)), array_agg(1::bigint)) FROM generate_series(2000001::bigint, 2100000) i', 100000),
('disburse: 100,000 payees, last null',
 'SELECT ledger_disburse(1001, array_agg(nullif(i, 2100000)), array_agg(1::bigint)) FROM generate_series(2000001::bigint, 2100000) i', 100000),
('disburse: 100,000 payees, total overflows',
 'SELECT ledger_disburse(1001, array_agg(i), array_agg(92233720368547758::bigint)) FROM generate_series(2000001::bigint, 2100000) i', 100000),
('disburse: 100,000 payees, 99,999 amounts',
 'SELECT ledger_disburse(1001, array_agg(i), array_agg(1::bigint) FILTER (WHERE i > 2000001)) FROM generate_series(2000001::bigint, 2100000) i', 100000);

-- other arguments of the read functions
INSERT INTO cases (label, sql) VALUES
('wait: negative timeout',       'SELECT ledger_wait(1, -1)'),
('wait: unknown event',          'SELECT ledger_wait(-1, 0)'),
('event_status: unknown event',  'SELECT ledger_event_status(-1)'),
('event: unknown event',         'SELECT count(*) || '' rows'' FROM ledger_event(-1)'),
('balance: unknown account',     'SELECT ledger_balance(1999)::text'),
('balance: new account',         'SELECT ledger_balance(1001)::text'),
('history: unknown account',     'SELECT count(*) || '' rows'' FROM ledger_history(1999)'),
('history: max_rows 0',          'SELECT count(*) || '' rows'' FROM ledger_history(1001, 0)'),
('history: max_rows -1',         'SELECT count(*) || '' rows'' FROM ledger_history(1001, -1)');

SELECT c.label, a.state, a.result
  FROM cases c, attempt(c.sql, c.max_payees) a
 ORDER BY c.ord;

-- ledger_wait refuses a snapshot that could never see the event change
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT ledger_wait(1, 0);
ROLLBACK;

-- how the errors read in full, for a few
\set VERBOSITY default
SELECT ledger_deposit(1001, 0);
SELECT ledger_transfer(1001, 1999, 5);
SELECT ledger_open_account(-5);
SELECT ledger_open_account(1001, true);
SELECT ledger_disburse(1001, '{1002}', '{1,2}');
SET ledger.max_payees = 1;
SELECT ledger_disburse(1001, '{1002,1003}', '{1,2}');
RESET ledger.max_payees;
SELECT ledger_disburse(1001, '{1002,NULL}', '{1,2}');
SELECT ledger_deposit(1001, 1, repeat('k', 300));
\set VERBOSITY terse

-- nothing was enqueued, recorded or posted by any of it
SELECT (SELECT count(*) FROM ledger.queue) - queued AS queued,
       (SELECT count(*) FROM ledger.events) - events AS events,
       (SELECT max(id) FROM ledger.events) IS NOT DISTINCT FROM last_event AS same_last_event,
       (SELECT count(*) FROM ledger.idempotency) - keys AS keys,
       (SELECT count(*) FROM ledger.transactions) - legs AS legs,
       (SELECT count(*) FROM ledger.accounts) - accounts AS accounts
  FROM held_before;
SELECT count(*) AS events_of_these_accounts FROM ledger.events
 WHERE account_id BETWEEN 1000 AND 2200000 OR to_account BETWEEN 1000 AND 2200000;
SELECT ledger_balance(1001), ledger_balance(1002), ledger_balance(1003);
SELECT * FROM ledger_verify();

DROP FUNCTION attempt(text, integer);
