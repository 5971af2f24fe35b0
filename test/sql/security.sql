-- The security model: the history cannot be changed, not even by a
-- superuser who does not first set the guard aside; members of
-- ledger_client move money between existing accounts and read; members of
-- ledger_operator also open accounts, move money across the ledger's edge,
-- set limits, run the workers and audit; other roles cannot even call; and
-- the API does the same whatever the caller's search_path holds.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;
\set VERBOSITY default

-- 6001 (bucket 1) with five legs, so that it has a breakpoint
SELECT ledger_open_account(6001), ledger_open_account(6002);
CREATE TEMP TABLE ev (n serial, id bigint NOT NULL);
GRANT SELECT ON ev TO PUBLIC;
INSERT INTO ev (id) SELECT ledger_deposit(6001, 10) FROM generate_series(1, 5);
SELECT count(*) FILTER (WHERE s = 'applied') AS applied
  FROM (SELECT ledger_wait(id, 30000) AS s FROM ev) w;
SELECT count(*) AS legs FROM ledger.transactions WHERE account_id = 6001;
SELECT count(*) AS breakpoints FROM ledger.breakpoints WHERE account_id = 6001;

-- the history is immutable, for the superuser running this too (each try
-- in a transaction rolled back, should the guard ever fail)
BEGIN;
UPDATE ledger.transactions SET amount = amount + 1 WHERE account_id = 6001;
ROLLBACK;
BEGIN;
DELETE FROM ledger.transactions WHERE account_id = 6001;
ROLLBACK;
BEGIN;
TRUNCATE ledger.transactions;
ROLLBACK;
BEGIN;
UPDATE ledger.event_log SET status = 'r' WHERE account_id = 6001;
ROLLBACK;
BEGIN;
DELETE FROM ledger.event_log WHERE account_id = 6001;
ROLLBACK;
BEGIN;
TRUNCATE ledger.event_log;
ROLLBACK;
BEGIN;
UPDATE ledger.breakpoints SET current_balance = 0 WHERE account_id = 6001;
ROLLBACK;
BEGIN;
DELETE FROM ledger.breakpoints WHERE account_id = 6001;
ROLLBACK;
BEGIN;
TRUNCATE ledger.breakpoints;
ROLLBACK;
BEGIN;
TRUNCATE ledger.transactions, ledger.event_log, ledger.breakpoints;
ROLLBACK;
SELECT ledger_balance(6001);
\set VERBOSITY terse

/*
 * Roles.  regress_ledger_user logs in and is a member of ledger_client;
 * regress_ledger_operator of ledger_operator; regress_ledger_outsider of
 * neither.
 */
CREATE ROLE regress_ledger_user LOGIN;
GRANT ledger_client TO regress_ledger_user;
CREATE ROLE regress_ledger_operator LOGIN;
GRANT ledger_operator TO regress_ledger_operator;
CREATE ROLE regress_ledger_outsider LOGIN;

-- attempt(sql): run one query returning one text value; its SQLSTATE and
-- message if it fails, "ok" and its value if not.  Runs as its caller.
CREATE FUNCTION attempt(sql text, OUT state text, OUT result text)
LANGUAGE plpgsql AS
$$
BEGIN
	EXECUTE sql INTO result;
	state := 'ok';
EXCEPTION WHEN OTHERS THEN
	state := SQLSTATE;
	result := SQLERRM;
END
$$;
CREATE TEMP TABLE calls (ord serial, sql text NOT NULL);
GRANT SELECT ON calls TO PUBLIC;
INSERT INTO calls (sql) VALUES
('SELECT ledger_open_account(6003)::text'),
('SELECT (ledger_deposit(6003, 500) > 0)::text'),
('SELECT (ledger_withdraw(6001, 1) > 0)::text'),
('SELECT (ledger_transfer(6001, 6002, 2) > 0)::text'),
('SELECT (ledger_disburse(6001, ''{6002}'', ''{3}'') > 0)::text'),
('SELECT ledger_event_status((SELECT min(id) FROM ev))'),
('SELECT ledger_wait((SELECT min(id) FROM ev), 30000)'),
('SELECT status FROM ledger_event((SELECT min(id) FROM ev))'),
('SELECT ledger_balance(6001)::text'),
('SELECT count(*)::text FROM ledger_history(6001)'),
('SELECT count(*)::text FROM ledger_verify()'),
('SELECT count(*)::text FROM ledger.transactions'),
('SELECT count(*)::text FROM ledger.accounts'),
('SELECT count(*)::text FROM ledger.queue'),
('INSERT INTO ledger.queue VALUES (1, -1, ''d'', 6001, NULL, 1000000, NULL, NULL, now()) RETURNING ''inserted'''),
('INSERT INTO ledger.transactions VALUES (-1, 6001, -1, 1000000, 1000000, now()) RETURNING ''inserted'''),
('UPDATE ledger.accounts SET allow_negative = true WHERE id = 6001 RETURNING ''updated'''),
('DELETE FROM ledger.queue RETURNING ''deleted'''),
('SELECT nextval(''ledger.event_id_seq'')::text'),
('SELECT ledger.refuse_change()::text'),
('SELECT set_config(''ledger.max_payees'', ''100000'', false)'),
('SELECT set_config(''session_replication_role'', ''replica'', false)'),
('SELECT (ledger_hold(6001, 6002, 4) > 0)::text'),
('SELECT ledger_available(6001)::text'),
('SELECT (ledger_balance(6001, now()) IS NOT NULL)::text'),
('SELECT count(*)::text FROM ledger_history(6001, ''-infinity'', ''infinity'')'),
('SELECT count(*)::text FROM ledger_find_events(''{"k": 1}'')'),
('SELECT ledger_set_limits(6001, 0)::text'),
('SELECT count(*)::text FROM ledger.limits'),
('SELECT set_config(''ledger.max_pending_per_account'', ''0'', false)'),
('SELECT ledger_open_account(6005, true)::text'),
('SELECT ledger_pause(0)::text'),
('SELECT ledger_resume(0)::text'),
('SELECT ledger_stats_reset()::text'),
('SELECT count(*)::text FROM ledger_stats'),
('SELECT (sum(pending) >= 0 AND count(lag) >= 0)::text FROM ledger_stats'),
('SELECT count(*)::text FROM ledger_health()'),
('SELECT ledger_supply_bound()::text'),
('SELECT count(*)::text FROM ledger_node_totals()'),
('SELECT ledger_hold_status((SELECT min(id) FROM ev))'),
('SELECT ledger_transfer_many(''{6001}'', ''{6002}'', ''{1}'')::text');

-- a member of ledger_client: money between accounts and reads work, the
-- operator's functions are refused, the tables are out of reach
SET ROLE regress_ledger_user;
SELECT current_user, c.sql, a.state, a.result
  FROM calls c, attempt(c.sql) a ORDER BY c.ord;
RESET ROLE;

-- a member of ledger_operator: the whole API, and still not the tables
SET ROLE regress_ledger_operator;
SELECT current_user, c.sql, a.state, a.result
  FROM calls c, attempt(c.sql) a ORDER BY c.ord;
RESET ROLE;

-- not a member: not even the API
SET ROLE regress_ledger_outsider;
SELECT current_user, c.sql, a.state, a.result
  FROM calls c, attempt(c.sql) a ORDER BY c.ord;
RESET ROLE;

-- what the members' calls did: the client's payments and hold, the
-- operator's deposit and withdrawal and the same payments again, once
-- each, once the queue is drained
SELECT count(*) FILTER (WHERE s IS DISTINCT FROM 'applied' AND s IS DISTINCT FROM 'rejected') AS undecided
  FROM (SELECT ledger_wait(id, 30000) AS s FROM ledger.queue) w;
SELECT x.kind, x.account_id, x.to_accounts, x.amounts, x.amount
  FROM ledger.events e, ledger_event(e.id) x
 WHERE e.account_id IN (6001, 6003) AND e.id > (SELECT max(id) FROM ev)
 ORDER BY e.id;

/*
 * A hostile schema, first on the search_path, with look-alikes of what the
 * API's queries use: the bigint = operator, nextval(), now(),
 * statement_timestamp(), and tables named like the ledger's.  Each records
 * that it ran.  The hostile objects are made by the superuser here for
 * brevity; an attacker with CREATE on any schema could make the same.
 */
SELECT current_user AS superuser \gset
SELECT last_value AS last_event_id FROM ledger.event_id_seq \gset
CREATE SCHEMA regress_hostile;
CREATE TABLE regress_hostile.ran (what text);
CREATE FUNCTION regress_hostile.bigint_eq(a bigint, b bigint) RETURNS boolean
LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO regress_hostile.ran VALUES ('='); RETURN true; END $$;
CREATE OPERATOR regress_hostile.= (FUNCTION = regress_hostile.bigint_eq,
                                   LEFTARG = bigint, RIGHTARG = bigint);
CREATE FUNCTION regress_hostile.nextval(text) RETURNS bigint
LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO regress_hostile.ran VALUES ('nextval'); RETURN 1; END $$;
CREATE FUNCTION regress_hostile.now() RETURNS timestamptz
LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO regress_hostile.ran VALUES ('now'); RETURN '2000-01-01'; END $$;
CREATE FUNCTION regress_hostile.statement_timestamp() RETURNS timestamptz
LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO regress_hostile.ran VALUES ('statement_timestamp'); RETURN '2000-01-01'; END $$;
CREATE TABLE regress_hostile.accounts (id bigint, allow_negative boolean, bucket integer);
INSERT INTO regress_hostile.accounts VALUES (6999, true, 1);
CREATE TABLE regress_hostile.queue (LIKE ledger.queue);
CREATE TABLE regress_hostile.transactions (LIKE ledger.transactions);
INSERT INTO regress_hostile.transactions VALUES (1, 6001, 1, 1, 1000000, now());
CREATE FUNCTION regress_hostile.log_insert() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO regress_hostile.ran VALUES ('insert into ' || TG_TABLE_NAME); RETURN NEW; END $$;
CREATE TRIGGER log_insert BEFORE INSERT ON regress_hostile.queue
	FOR EACH ROW EXECUTE FUNCTION regress_hostile.log_insert();
GRANT USAGE ON SCHEMA regress_hostile TO PUBLIC;
GRANT ALL ON ALL TABLES IN SCHEMA regress_hostile TO PUBLIC;

-- a new session of the operator, so that the API prepares its queries with
-- the hostile objects in place
\c - regress_ledger_operator
-- temporary tables come first for unqualified table names
CREATE TEMP TABLE accounts (id bigint, allow_negative boolean, bucket integer);
INSERT INTO accounts VALUES (6999, true, 1);
SET search_path = regress_hostile, pg_catalog, public;
-- the hostile objects are live: plain queries use them
SELECT 1::bigint = 2::bigint AS one_is_two, nextval('ledger.event_id_seq') AS "nextval",
       now() < '2001-01-01' AS now_is_in_2000;
SELECT what FROM ran ORDER BY what;
DELETE FROM ran;

-- the same calls as before, now with the hostile search_path
SELECT ledger_open_account(6004);
SELECT ledger_deposit(6004, 700) AS h1 \gset
SELECT ledger_transfer(6004, 6002, 70) AS h2 \gset
SELECT ledger_disburse(6004, '{6002,6001}', '{7,8}') AS h3 \gset
SELECT ledger_withdraw(6004, 700) AS h4 \gset
SELECT ledger_wait(:h1, 30000), ledger_wait(:h2, 30000), ledger_wait(:h3, 30000),
       ledger_wait(:h4, 30000);
SELECT ledger_balance(6004), ledger_balance(6999);
SELECT kind, account_id, to_accounts, amounts, amount, status, reason,
       enqueued_at > '2001-01-01' AS real_enqueued_at,
       applied_at > '2001-01-01' AS real_applied_at
  FROM ledger_event(:h1)
UNION ALL
SELECT kind, account_id, to_accounts, amounts, amount, status, reason,
       enqueued_at > '2001-01-01', applied_at > '2001-01-01'
  FROM ledger_event(:h2)
UNION ALL
SELECT kind, account_id, to_accounts, amounts, amount, status, reason,
       enqueued_at > '2001-01-01', applied_at > '2001-01-01'
  FROM ledger_event(:h3)
UNION ALL
SELECT kind, account_id, to_accounts, amounts, amount, status, reason,
       enqueued_at > '2001-01-01', applied_at > '2001-01-01'
  FROM ledger_event(:h4);
SELECT amount, balance_after FROM ledger_history(6004, 10) ORDER BY transaction_id;
SELECT ledger_event_status(:h1), ledger_event_status(-5);
SELECT ledger_deposit(6999, 1);
SELECT count(*) AS problems FROM ledger_verify();
-- none of the hostile objects ran
SELECT count(*) AS hostile_calls FROM ran;
DROP TABLE pg_temp.accounts;
\c - :superuser

-- and the calls did exactly what they do on a clean path, with event ids
-- from the ledger's own sequence
SELECT count(*) AS events_of_6004, count(DISTINCT id) AS distinct_ids,
       bool_and(id > :last_event_id) AS ids_from_the_sequence
  FROM ledger.events WHERE account_id = 6004;
SELECT count(*) AS legs_of_6999 FROM ledger.transactions WHERE account_id = 6999;
SELECT ledger_balance(6001), ledger_balance(6002), ledger_balance(6003),
       ledger_balance(6004);
SELECT * FROM ledger_verify();

SET client_min_messages = warning;
DROP SCHEMA regress_hostile CASCADE;
RESET client_min_messages;
DROP FUNCTION attempt(text);

-- Nothing of the extension is for PUBLIC; every function's roles
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid AND d.classid = 'pg_proc'::regclass
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ledger')
   AND d.deptype = 'e'
   AND EXISTS (SELECT FROM aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) a
				WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE');
SELECT p.proname,
       string_agg(DISTINCT a.grantee::regrole::text, ', ' ORDER BY a.grantee::regrole::text)
         FILTER (WHERE a.grantee::regrole::text LIKE 'ledger\_%') AS roles
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid AND d.classid = 'pg_proc'::regclass
  LEFT JOIN LATERAL aclexplode(p.proacl) a ON a.privilege_type = 'EXECUTE'
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ledger')
   AND d.deptype = 'e' AND p.pronamespace <> 'ledger'::regnamespace
 GROUP BY p.proname
 ORDER BY p.proname;

REVOKE ledger_client FROM regress_ledger_user;
REVOKE ledger_operator FROM regress_ledger_operator;
DROP ROLE regress_ledger_user;
DROP ROLE regress_ledger_operator;
DROP ROLE regress_ledger_outsider;
