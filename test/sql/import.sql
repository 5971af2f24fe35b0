-- Importing a history: ledger_import() logs rows with the times they
-- happened; the workers apply them as any event (double entry, no
-- overdraft, limits) but post their legs at those times, so that balances
-- and history as of a time answer by the original times.  Then every
-- refusal of the import, with its SQLSTATE, and imported events the
-- workers reject.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set VERBOSITY terse

-- accounts of this file: 9701..9716, bucket id mod 2; 9711 in EUR; 9799 is
-- never opened
SELECT count(ledger_open_account(a)) AS opened FROM generate_series(9701, 9710) a;
SELECT ledger_open_account(9711, false, 'EUR');
SELECT count(ledger_open_account(a)) AS opened FROM generate_series(9712, 9716) a;

/*
 * 1. A history of accounts of one bucket (9702, 9704, 9706: bucket 0), as
 * another system exported it, loaded with COPY.  Its rows are not in time
 * order; rows 2 and 4 have the same time, and are applied in the order of
 * the file: the withdrawal of row 4 needs the transfer of row 2.
 */
CREATE TEMP TABLE history (
	kind			text,
	from_account	bigint,
	to_account		bigint,
	amount			bigint,
	occurred_at		timestamptz,
	metadata		jsonb,
	note			text			-- not read
);
COPY history FROM stdin;
deposit	\N	9702	10000	2021-01-01 09:00:00+00	{"ref": "opening"}	first
transfer	9702	9704	2500	2021-02-01 12:00:00+00	\N	\N
deposit	\N	9704	1000	2021-01-15 00:00:00+00	\N	\N
withdraw	9704	\N	3000	2021-02-01 12:00:00+00	\N	\N
transfer	9702	9706	7000	2021-03-01 00:00:00+00	{"ref": "rent"}	\N
transfer	9706	9702	500	2021-03-10 00:00:00+00	\N	last
\.

SELECT * FROM ledger_import('history') \gset
SELECT :events AS events, :last_event - :first_event + 1 AS ids;
-- the events, in id order: by occurred_at, then by row
SELECT row_number() OVER (ORDER BY e.id) AS n, e.kind, e.account_id, e.to_account,
	   e.amount, e.occurred_at
  FROM ledger.event_log e
 WHERE e.id BETWEEN :first_event AND :last_event
 ORDER BY e.id;
-- committed: the workers apply them
SELECT ledger_wait(id, 30000) AS status, count(*)
  FROM ledger.event_log
 WHERE id BETWEEN :first_event AND :last_event AND credit_of IS NULL
 GROUP BY 1 ORDER BY 1;
SELECT e.kind, e.account_id, e.amount, e.status, e.reason, e.metadata
  FROM generate_series(:first_event, :last_event) id, ledger_event(id) e
 ORDER BY id;

-- the legs are posted at the times the rows give
SELECT t.account_id, t.amount, t.balance_after, t.created_at
  FROM ledger.transactions t
 WHERE t.event_id BETWEEN :first_event AND :last_event AND t.account_id > 0
 ORDER BY t.account_id, t.id;
SELECT a AS account, ledger_balance(a) AS now,
	   ledger_balance(a, '2020-12-31') AS before,
	   ledger_balance(a, '2021-01-10') AS jan_10,
	   ledger_balance(a, '2021-01-20') AS jan_20,
	   ledger_balance(a, '2021-02-01 11:59:59') AS feb_1_before_noon,
	   ledger_balance(a, '2021-02-01 12:00') AS feb_1_noon,
	   ledger_balance(a, '2021-03-05') AS mar_5
  FROM unnest('{9702,9704,9706}'::bigint[]) a;
SELECT amount, balance_after, created_at
  FROM ledger_history(9702, '2021-01-01', '2021-03-05');
SELECT amount, balance_after, created_at
  FROM ledger_history(9704, '2021-02-01 12:00', '2021-02-01 12:00:01');
SELECT count(*) AS none FROM ledger_history(9706, '2021-01-01', '2021-03-01');
-- the external account's legs keep its own time order
SELECT count(*) AS external_legs_out_of_order
  FROM (SELECT t.created_at < lag(t.created_at) OVER (PARTITION BY t.account_id ORDER BY t.id) AS back
		  FROM ledger.transactions t WHERE t.account_id < 0) x
 WHERE x.back;

/*
 * 2. A credit from another bucket is posted at its time.  9707 (bucket 1)
 * pays 9708 (bucket 0) on 1 February; 9708's own bucket has a deposit for
 * it on 15 February and a withdrawal on 1 March that needs the credit: the
 * credit, logged with the transfer in 9708's bucket, is posted in the
 * history's order there, once bucket 1 has applied the transfer.
 */
SELECT * FROM ledger_import(
	ARRAY['deposit', 'deposit', 'transfer', 'deposit', 'withdraw'],
	ARRAY[NULL, NULL, 9707, NULL, 9708]::bigint[],
	ARRAY[9707, 9708, 9708, 9708, NULL]::bigint[],
	ARRAY[1000, 100, 300, 1, 350]::bigint[],
	ARRAY['2021-01-01', '2021-01-01', '2021-02-01', '2021-02-15', '2021-03-01']::timestamptz[]) \gset
-- the transfer is logged with its credit, in 9708's bucket, next to it
SELECT e.id - :first_event + 1 AS n, e.kind, e.bucket, e.account_id, e.to_account,
	   e.to_accounts, e.amount, e.credit_of - :first_event + 1 AS credit_of_n
  FROM ledger.event_log e
 WHERE e.id BETWEEN :first_event AND :last_event
 ORDER BY e.id;
SELECT ledger_wait(id, 30000) AS status, count(*)
  FROM ledger.event_log
 WHERE id BETWEEN :first_event AND :last_event AND credit_of IS NULL
 GROUP BY 1 ORDER BY 1;
SELECT a AS account, ledger_balance(a) AS now,
	   ledger_balance(a, '2021-01-20') AS jan_20,
	   ledger_balance(a, '2021-02-10') AS feb_10,
	   ledger_balance(a, '2021-02-20') AS feb_20
  FROM unnest('{9707,9708}'::bigint[]) a;
SELECT amount, balance_after, created_at
  FROM ledger_history(9708, '2021-01-01', 'infinity');

/*
 * 3. The workers decide imported events as any other: a withdrawal beyond
 * the balance is rejected (insufficient_funds), and so is a transfer to
 * another bucket beyond it (its credit is dropped there), and a debit that
 * waited for a credit from another bucket (9710, bucket 0, credited by
 * 9709, bucket 1) that does not cover it.  Each is reported by its event.
 */
SELECT * FROM ledger_import(
	ARRAY['deposit', 'withdraw', 'transfer', 'transfer', 'withdraw', 'withdraw'],
	ARRAY[NULL, 9709, 9709, 9709, 9710, 9710]::bigint[],
	ARRAY[9709, NULL, 9710, 9710, NULL, NULL]::bigint[],
	ARRAY[100, 150, 60, 1000, 100, 60]::bigint[],
	ARRAY['2021-04-01', '2021-04-02', '2021-04-03', '2021-04-03 12:00', '2021-04-04',
		  '2021-04-05']::timestamptz[]) \gset
SELECT ledger_wait(id, 30000) AS status, count(*)
  FROM ledger.event_log
 WHERE id BETWEEN :first_event AND :last_event AND credit_of IS NULL
 GROUP BY 1 ORDER BY 1;
SELECT row_number() OVER (ORDER BY l.id) AS n, e.kind, e.account_id, e.amount, e.status,
	   e.reason
  FROM ledger.event_log l, ledger_event(l.id) e
 WHERE l.id BETWEEN :first_event AND :last_event
 ORDER BY l.id;
SELECT ledger_balance(9709) AS b9709, ledger_balance(9710) AS b9710,
	   ledger_balance(9710, '2021-04-04 12:00') AS b9710_apr_4;
-- the credit of the rejected transfer is dropped in 9710's bucket, not left
-- pending
SELECT c.credit_of - :first_event + 1 AS credit_of_n, o.status, o.reason
  FROM ledger.event_log c JOIN ledger.outcomes o ON o.event_id = c.id
 WHERE c.id BETWEEN :first_event AND :last_event AND c.credit_of IS NOT NULL
   AND o.status = 'r';
SELECT count(*) AS pending FROM ledger.queue q WHERE q.id BETWEEN :first_event AND :last_event;

-- a transfer imported after what the ledger holds is fine
SELECT * FROM ledger_import(ARRAY['transfer'], '{9704}', '{9716}', '{100}',
							ARRAY[now()]) \gset
SELECT ledger_wait(:last_event, 30000);
SELECT ledger_balance(9704) AS b9704, ledger_balance(9716) AS b9716;

/*
 * 4. What the import refuses, before it logs anything: each attempt in a
 * subtransaction rolled back, its SQLSTATE and message.
 */
CREATE FUNCTION attempt(sql text, OUT state text, OUT result text)
LANGUAGE plpgsql AS
$$
DECLARE
	value text;
BEGIN
	BEGIN
		EXECUTE sql INTO value;
		state := 'ok';
		result := coalesce(value, 'NULL');
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
-- imp(kind, from, to, amount, at[, metadata]): the call importing one row
CREATE FUNCTION imp(kind text, f text, t text, amount text, at text,
					metadata text DEFAULT 'NULL') RETURNS text
LANGUAGE sql AS
$$
	SELECT format('SELECT events || '' events'' FROM ledger_import(ARRAY[%s]::text[], ARRAY[%s]::bigint[], ARRAY[%s]::bigint[], ARRAY[%s]::bigint[], ARRAY[%s]::timestamptz[], ARRAY[%s]::jsonb[])',
				  kind, f, t, amount, at, metadata)
$$;

-- 9714 is closed; 9715 has an event pending (its bucket, 1, is paused);
-- 9716 belongs to a role
SELECT ledger_close_account(9714) AS closing \gset
SELECT ledger_wait(:closing, 30000);
SELECT ledger_pause(1);
SELECT ledger_deposit(9715, 5) AS pending_deposit \gset
CREATE ROLE regress_import_tenant;
CREATE ROLE regress_import_operator IN ROLE ledger_operator;
CREATE ROLE regress_import_client IN ROLE ledger_client;
CREATE ROLE regress_import_outsider;
SELECT ledger_open_account(9717, owner => 'regress_import_tenant');

CREATE TEMP TABLE before AS
SELECT (SELECT max(id) FROM ledger.event_log) AS last_event,
	   (SELECT count(*) FROM ledger.transactions) AS legs;

CREATE TEMP TABLE cases (ord serial, label text NOT NULL, sql text NOT NULL);
INSERT INTO cases (label, sql) VALUES
('one good row',            imp('''deposit''', 'NULL', '9712', '5', '''2021-06-01''')),
('unknown kind',            imp('''refund''', 'NULL', '9712', '5', '''2021-06-01''')),
('NULL kind',               imp('NULL', 'NULL', '9712', '5', '''2021-06-01''')),
('NULL amount',             imp('''deposit''', 'NULL', '9712', 'NULL', '''2021-06-01''')),
('NULL occurred_at',        imp('''deposit''', 'NULL', '9712', '5', 'NULL')),
('deposit without payee',   imp('''deposit''', 'NULL', 'NULL', '5', '''2021-06-01''')),
('withdraw without payer',  imp('''withdraw''', 'NULL', 'NULL', '5', '''2021-06-01''')),
('transfer without payee',  imp('''transfer''', '9712', 'NULL', '5', '''2021-06-01''')),
('deposit with a payer',    imp('''deposit''', '9713', '9712', '5', '''2021-06-01''')),
('withdraw with a payee',   imp('''withdraw''', '9712', '9713', '5', '''2021-06-01''')),
('amount 0',                imp('''deposit''', 'NULL', '9712', '0', '''2021-06-01''')),
('amount -5',               imp('''transfer''', '9712', '9713', '-5', '''2021-06-01''')),
('account 0',               imp('''transfer''', '0', '9713', '5', '''2021-06-01''')),
('external account -1',     imp('''transfer''', '9712', '-1', '5', '''2021-06-01''')),
('paying itself',           imp('''transfer''', '9712', '9712', '5', '''2021-06-01''')),
('unknown payer',           imp('''transfer''', '9799', '9712', '5', '''2021-06-01''')),
('unknown payee',           imp('''transfer''', '9712', '9799', '5', '''2021-06-01''')),
('unknown account',         imp('''deposit''', 'NULL', '9799', '5', '''2021-06-01''')),
('currencies differ',       imp('''transfer''', '9712', '9711', '5', '''2021-06-01''')),
('in the future',           imp('''deposit''', 'NULL', '9712', '5', 'now() + interval ''1 minute''')),
('infinity',                imp('''deposit''', 'NULL', '9712', '5', '''infinity''')),
('-infinity',               imp('''deposit''', 'NULL', '9712', '5', '''-infinity''')),
('older than newest leg',   imp('''transfer''', '9702', '9712', '5', '''2021-03-09''')),
('payee has a newer leg',   imp('''transfer''', '9712', '9706', '5', '''2021-03-09''')),
('closed account',          imp('''deposit''', 'NULL', '9714', '5', '''2021-06-01''')),
('event pending',           imp('''transfer''', '9712', '9715', '5', '''2021-06-01''')),
('metadata not an object',  imp('''deposit''', 'NULL', '9712', '5', '''2021-06-01''', '''[1]''')),
('metadata too large',      imp('''deposit''', 'NULL', '9712', '5', '''2021-06-01''',
								'jsonb_build_object(''k'', repeat(''x'', 70000))')),
('debit of an owned account',
	imp('''withdraw''', '9717', 'NULL', '5', '''2021-06-01''')),
('credit of an owned account',
	imp('''deposit''', 'NULL', '9717', '5', '''2021-06-01''')),
('arrays of other lengths', 'SELECT events::text FROM ledger_import(''{deposit}'', ''{NULL}'', ''{9712}'', ''{5,6}'', ARRAY[''2021-06-01''::timestamptz])'),
('a NULL array',            'SELECT events::text FROM ledger_import(''{deposit}'', ''{NULL}'', ''{9712}'', NULL, ARRAY[''2021-06-01''::timestamptz])'),
('a 2-D array',             'SELECT events::text FROM ledger_import(''{{deposit}}'', ''{{NULL}}'', ''{{9712}}'', ''{{5}}'', ARRAY[[''2021-06-01''::timestamptz]])'),
('no rows',                 'SELECT events || '' events'' FROM ledger_import(''{}'', ''{}'', ''{}'', ''{}'', ''{}'')'),
('the bad row is named',    'SELECT events::text FROM ledger_import(''{deposit,deposit,deposit,deposit}'', ''{NULL,NULL,NULL,NULL}'', ''{9712,9712,9712,9712}'', ''{5,0,6,-1}'', ''{2021-06-01,2021-06-02,2021-06-03,2021-06-04}'')');

GRANT SELECT ON cases TO regress_import_operator;
SET ROLE regress_import_operator;
SELECT c.label, a.state, a.result
  FROM cases c, attempt(c.sql) a
 ORDER BY c.ord;
RESET ROLE;
-- a superuser may debit any account
SELECT * FROM attempt(imp('''withdraw''', '9717', 'NULL', '5', '''2021-06-01'''));

-- the table form: columns it needs, and what it may read
CREATE TEMP TABLE no_amount (kind text, from_account bigint, to_account bigint, occurred_at timestamptz);
CREATE TEMP TABLE readable (LIKE history);
CREATE TEMP TABLE unreadable (LIKE history);
GRANT SELECT ON no_amount, readable TO regress_import_operator;
INSERT INTO readable VALUES ('deposit', NULL, 9712, 5, '2021-06-01', NULL, NULL);
INSERT INTO unreadable VALUES ('deposit', NULL, 9712, 5, '2021-06-01', NULL, NULL);
SET ROLE regress_import_operator;
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''readable'')');
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''unreadable'')');
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''no_amount'')');
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''ledger_stats'')');
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(NULL)');
RESET ROLE;
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''ledger.event_id_seq'')');
-- a client may not import, nor may others
SET ROLE regress_import_client;
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''readable'')');
SELECT * FROM attempt('SELECT events::text FROM ledger_import(''{deposit}'', ''{NULL}'', ''{9712}'', ''{5}'', ARRAY[''2021-06-01''::timestamptz])');
RESET ROLE;
SET ROLE regress_import_outsider;
SELECT * FROM attempt('SELECT events || '' events'' FROM ledger_import(''readable'')');
RESET ROLE;

-- how a refusal reads in full
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM ledger_import('{deposit,transfer,transfer,transfer}', '{NULL,9712,9712,9712}',
							'{9712,9713,9713,9713}', '{5,0,1,-1}',
							'{2021-06-01,2021-06-02,2021-06-03,2021-06-04}');
SELECT * FROM ledger_import('{transfer}', '{9702}', '{9712}', '{5}', '{2021-03-09}');
SELECT * FROM ledger_import('{withdraw}', '{9712}', '{9713}', '{5}', '{2021-06-01}');
SELECT * FROM ledger_import('no_amount');
\set SHOW_CONTEXT errors
\set VERBOSITY terse

-- nothing was logged or posted by any of it
SELECT (SELECT max(id) FROM ledger.event_log) - b.last_event AS new_events,
	   (SELECT count(*) FROM ledger.transactions) - b.legs AS new_legs
  FROM before b;

SELECT ledger_resume(1);
SELECT ledger_wait(:pending_deposit, 30000);

/*
 * 5. While the payer's bucket has not decided an imported transfer to
 * another bucket, its credit is no money in flight: the queue lists the
 * transfer, not the credit, and the audit finds nothing.
 */
SELECT ledger_pause(1);
SELECT * FROM ledger_import('{deposit,transfer}', '{NULL,9713}', '{9713,9712}', '{100,40}',
							'{2021-07-01,2021-07-02}') \gset
SELECT q.kind, q.bucket FROM ledger.queue q
 WHERE q.seq BETWEEN :first_event AND :last_event + 1 ORDER BY q.seq;
SELECT count(*) AS problems FROM ledger_verify();
SELECT ledger_resume(1);
SELECT ledger_wait(:last_event, 30000);
SELECT ledger_balance(9713) AS b9713, ledger_balance(9712) AS b9712,
	   ledger_balance(9712, '2021-07-01 12:00') AS b9712_jul_1,
	   ledger_balance(9712, '2021-07-02') AS b9712_jul_2;

DROP TABLE history, before, cases, no_amount, readable, unreadable;
DROP FUNCTION attempt(text), imp(text, text, text, text, text, text);
DROP ROLE regress_import_tenant, regress_import_operator, regress_import_client,
	regress_import_outsider;
SELECT * FROM ledger_verify();
