-- The trust boundary: what a member of ledger_client cannot do, and what no
-- sequence of calls can make the ledger do.  security.sql has the roles of
-- every function; rejections.sql the supply bound.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- attempt(sql): run one query returning one text value; its SQLSTATE and
-- message (and detail) if it fails, "ok" and its value if not.  Runs as
-- its caller.
CREATE FUNCTION attempt(sql text, OUT state text, OUT result text)
LANGUAGE plpgsql AS
$$
DECLARE
	detail text;
BEGIN
	EXECUTE sql INTO result;
	state := 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
	state := SQLSTATE;
	result := SQLERRM || COALESCE(' / ' || NULLIF(detail, ''), '');
END
$$;
CREATE TEMP TABLE ev (label text PRIMARY KEY, id bigint NOT NULL);
GRANT ALL ON ev TO PUBLIC;

/*
 * Two tenants, each a role of its own that its service logs in as:
 * regress_tenant_a (a member of regress_owner_a) and regress_tenant_b.
 * 7101 (bucket 1) belongs to regress_owner_a, 7102 (bucket 0) to
 * regress_tenant_b; 7103 (bucket 1) and 7104 (bucket 0) to no one.
 */
CREATE ROLE regress_owner_a;
CREATE ROLE regress_tenant_a LOGIN IN ROLE ledger_client, regress_owner_a;
CREATE ROLE regress_tenant_b LOGIN IN ROLE ledger_client;
SELECT ledger_open_account(7101, owner => 'regress_owner_a'),
       ledger_open_account(7102, owner => 'regress_tenant_b'),
       ledger_open_account(7103), ledger_open_account(7104);
SELECT id, owner FROM ledger.accounts WHERE id BETWEEN 7101 AND 7104 ORDER BY id;
-- opening again the same way does nothing; with another owner is an error
SELECT ledger_open_account(7101, owner => 'regress_owner_a');
SELECT * FROM attempt('SELECT ledger_open_account(7101, owner => ''regress_tenant_b'')::text');
SELECT * FROM attempt('SELECT ledger_open_account(7103, owner => ''regress_tenant_b'')::text');
INSERT INTO ev SELECT 'fund ' || a, ledger_deposit(a, 1000) FROM generate_series(7101, 7104) a;
SELECT count(*) FILTER (WHERE ledger_wait(id, 30000) = 'applied') AS funded
  FROM ev WHERE label LIKE 'fund %';

-- 1. Owners.  A debit of an owned account needs the caller to be a member
-- of its owner; crediting it does not.
SET ROLE regress_tenant_a;
SELECT c.call, a.state, a.result
  FROM (VALUES
	(1, 'SELECT (ledger_transfer(7101, 7103, 10) > 0)::text'),
	(2, 'SELECT (ledger_transfer(7102, 7103, 10) > 0)::text'),
	(3, 'SELECT (ledger_disburse(7102, ''{7103,7104}'', ''{1,1}'') > 0)::text'),
	(4, 'SELECT (ledger_hold(7102, 7104, 10) > 0)::text'),
	(5, 'SELECT ledger_transfer_many(''{7101,7102}'', ''{7103,7103}'', ''{1,1}'')::text'),
	(6, 'SELECT (ledger_transfer(7103, 7102, 10) > 0)::text'),
	(7, 'SELECT (ledger_withdraw(7101, 10) > 0)::text')) c(n, call),
       attempt(c.call) a
 ORDER BY c.n;
RESET ROLE;
-- a hold of 7102, placed by its owner, cannot be posted or voided by others
SET ROLE regress_tenant_b;
INSERT INTO ev VALUES ('hold of 7102', ledger_hold(7102, 7104, 10));
RESET ROLE;
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'hold of 7102';
SET ROLE regress_tenant_a;
SELECT * FROM attempt('SELECT ledger_post((SELECT id FROM ev WHERE label = ''hold of 7102''))::text');
SELECT * FROM attempt('SELECT ledger_void((SELECT id FROM ev WHERE label = ''hold of 7102''))::text');
RESET ROLE;
SET ROLE regress_tenant_b;
SELECT (ledger_void(id) > 0) AS voided_by_its_owner FROM ev WHERE label = 'hold of 7102';
RESET ROLE;
-- superusers may debit any account
SELECT ledger_transfer(7102, 7104, 1) > 0 AS accepted;

-- 2. Idempotency keys name one request of one role.
SET ROLE regress_tenant_a;
INSERT INTO ev VALUES ('a inv-1', ledger_transfer(7101, 7103, 5, 'inv-1'));
RESET ROLE;
SET ROLE regress_tenant_b;
INSERT INTO ev VALUES ('b inv-1', ledger_transfer(7102, 7104, 5, 'inv-1'));
RESET ROLE;
SELECT count(DISTINCT id) AS two_events FROM ev WHERE label LIKE '_ inv-1';
SET ROLE regress_tenant_a;
-- the same request again gets its event; any other request is refused,
-- naming what differs
SELECT ledger_transfer(7101, 7103, 5, 'inv-1') = (SELECT id FROM ev WHERE label = 'a inv-1') AS retried;
SELECT c.call, a.state, a.result
  FROM (VALUES
	(1, 'SELECT ledger_transfer(7101, 7103, 6, ''inv-1'')::text'),
	(2, 'SELECT ledger_transfer(7101, 7104, 5, ''inv-1'')::text'),
	(3, 'SELECT ledger_transfer(7101, 7103, 5, ''inv-1'', ''{"order": 1}'')::text'),
	(4, 'SELECT ledger_disburse(7101, ''{7103}'', ''{5}'', ''inv-1'')::text'),
	(5, 'SELECT ledger_hold(7101, 7103, 5, NULL, ''inv-1'')::text'),
	(6, 'SELECT ledger_transfer_many(''{7101}'', ''{7103}'', ''{5}'', ''{inv-1}'')::text')) c(n, call),
       attempt(c.call) a
 ORDER BY c.n;
-- a hold's timeout is compared as the time it spans
INSERT INTO ev VALUES ('a hold-1', ledger_hold(7101, 7103, 5, '1 hour', 'hold-1'));
SELECT ledger_hold(7101, 7103, 5, '60 minutes', 'hold-1') = (SELECT id FROM ev WHERE label = 'a hold-1') AS same_timeout;
SELECT * FROM attempt('SELECT ledger_hold(7101, 7103, 5, ''2 hours'', ''hold-1'')::text');
SELECT * FROM attempt('SELECT ledger_hold(7101, 7103, 5, NULL, ''hold-1'')::text');
RESET ROLE;
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'a hold-1';
SET ROLE regress_tenant_a;
-- posting a hold with the hold's own key is not the hold: refused, not
-- answered with the hold's id (1.4 said "applied" and posted nothing)
SELECT * FROM attempt('SELECT ledger_post((SELECT id FROM ev WHERE label = ''a hold-1''), NULL, ''hold-1'')::text');
INSERT INTO ev SELECT 'a post-1', ledger_post(id, 2, 'post-1') FROM ev WHERE label = 'a hold-1';
SELECT ledger_post(h.id, 2, 'post-1') = p.id AS same_post
  FROM ev h, ev p WHERE h.label = 'a hold-1' AND p.label = 'a post-1';
SELECT * FROM attempt('SELECT ledger_post((SELECT id FROM ev WHERE label = ''a hold-1''), 3, ''post-1'')::text');
SELECT * FROM attempt('SELECT ledger_post((SELECT id FROM ev WHERE label = ''a hold-1''), NULL, ''post-1'')::text');
SELECT * FROM attempt('SELECT ledger_void((SELECT id FROM ev WHERE label = ''a hold-1''), ''post-1'')::text');
-- inside one ledger_transfer_many: the same request twice is one event,
-- two requests under one key an error naming the element
SELECT ids[1] = ids[2] AS one_event, ids[1] <> ids[3] AS other_event
  FROM (SELECT ledger_transfer_many('{7101,7101,7101}', '{7103,7103,7103}', '{1,1,1}',
									'{dup-1,dup-1,dup-2}') AS ids) t;
SELECT * FROM attempt('SELECT ledger_transfer_many(''{7101,7101,7101}'', ''{7103,7103,7103}'', ''{1,1,2}'', ''{dup-3,dup-4,dup-3}'')::text');
RESET ROLE;
\set VERBOSITY default
SELECT ledger_transfer_many('{7101,7101,7101}', '{7103,7103,7103}', '{1,1,2}', '{dup-3,dup-4,dup-3}');
\set VERBOSITY terse

-- 3. The spam guard: posts and voids pass it only to release an open
-- hold, once.  7103's bucket (1) is paused so that its events wait.
SELECT ledger_hold(7103, 7104, 10) AS open_hold, ledger_hold(7103, 7104, 10) AS ended_hold \gset
SELECT ledger_wait(:ended_hold, 30000), ledger_wait(:open_hold, 30000);
SELECT ledger_void(:ended_hold) AS void \gset
SELECT ledger_wait(:void, 30000);
SELECT ledger_hold_status(:ended_hold), ledger_hold_status(:open_hold);
SELECT ledger_pause(1);
SET ledger.max_pending_per_account = 3;
-- voids of a hold that has ended count like any event: 3 pass, the 4th not
INSERT INTO ev SELECT 'void again ' || i, ledger_void(:ended_hold) FROM generate_series(1, 3) i;
SELECT * FROM attempt(format('SELECT ledger_void(%s)::text', :ended_hold));
-- the payer is at its limit: a transfer is refused, the void that releases
-- its open hold is not, a second one is
SELECT * FROM attempt('SELECT ledger_transfer(7103, 7104, 1)::text');
INSERT INTO ev VALUES ('void of the open hold', ledger_void(:open_hold));
SELECT * FROM attempt(format('SELECT ledger_void(%s)::text', :open_hold));
RESET ledger.max_pending_per_account;
SELECT ledger_resume(1);
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'void %' ORDER BY label;
SELECT e.reason, count(*) FROM ledger.events e
 WHERE e.kind = 'v' AND e.hold_id IN (:open_hold, :ended_hold)
 GROUP BY 1 ORDER BY 1;

-- 4. Open holds count against the daily debit limit from when they are
-- placed: holds posted together cannot pass it.
SELECT ledger_open_account(7105), ledger_open_account(7106);
SELECT ledger_deposit(7105, 5000) AS d \gset
SELECT ledger_wait(:d, 30000);
SELECT ledger_set_limits(7105, daily_debit_limit => 1000);
INSERT INTO ev VALUES ('daily hold 1', ledger_hold(7105, 7106, 1000));
INSERT INTO ev VALUES ('daily hold 2', ledger_hold(7105, 7106, 1000));
INSERT INTO ev VALUES ('daily hold 3', ledger_hold(7105, 7106, 1));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'daily hold%' ORDER BY label;
SELECT label, status, reason FROM ev, ledger_event(id) WHERE label LIKE 'daily hold%' ORDER BY label;
-- posting the open one spends it; nothing more today
INSERT INTO ev SELECT 'daily post 1', ledger_post(id) FROM ev WHERE label = 'daily hold 1';
INSERT INTO ev VALUES ('daily transfer', ledger_transfer(7105, 7106, 1));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('daily post 1', 'daily transfer') ORDER BY label;
SELECT reason FROM ledger_event((SELECT id FROM ev WHERE label = 'daily transfer'));
SELECT ledger_balance(7105), ledger_available(7105), ledger_balance(7106);

-- 5. ledger_available reads the running total of open holds, and never
-- fails: wide arithmetic, saturated at the ends of bigint (here with a
-- total no worker could write, in a transaction rolled back)
SELECT ledger_available(7103) = ledger_balance(7103) AS no_open_holds;
BEGIN;
INSERT INTO ledger.account_holds VALUES (-2, 9223372036854775807, 9223372036854775807, now());
SELECT ledger_balance(-2) < 0 AS negative, ledger_available(-2) AS saturated;
ROLLBACK;

-- 6. Order inside one transaction, across buckets: 7108 (bucket 0) is
-- empty; the transfer from 7103 (bucket 1) funds the withdrawal
SELECT ledger_open_account(7108);
BEGIN;
INSERT INTO ev VALUES ('order transfer', ledger_transfer(7103, 7108, 100));
INSERT INTO ev VALUES ('order withdraw', ledger_withdraw(7108, 100));
COMMIT;
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label LIKE 'order %' ORDER BY label;
SELECT ledger_balance(7108);
-- a hold credits its payee nothing: a withdrawal after it waits for nothing
-- (bucket 1, the hold's, is paused)
SELECT ledger_pause(1);
BEGIN;
INSERT INTO ev VALUES ('hold before withdraw', ledger_hold(7103, 7108, 5));
INSERT INTO ev VALUES ('withdraw after hold', ledger_withdraw(7108, 5));
COMMIT;
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'withdraw after hold';
SELECT ledger_resume(1);
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'hold before withdraw';

-- 7. Small things: every kind has its name; nothing pending is reported
-- by the health check once the queue is drained
SELECT k, ledger.kind_name(k::"char") FROM unnest('{d,w,t,s,h,p,v,c,l,x,o,q}'::text[]) k;
SELECT * FROM ledger_health('0') WHERE problem = 'pending';
SELECT ledger_pause(0);
SELECT ledger_transfer(7104, 7103, 1) AS paused_event \gset
SELECT problem, bucket, event_id = :paused_event AS the_event, account_id, detail
  FROM ledger_health('0') WHERE problem = 'pending';
SELECT ledger_resume(0);
SELECT ledger_wait(:paused_event, 30000);

-- 8. The audit sees the running totals of holds and the keys (each
-- tampering in a transaction rolled back)
BEGIN;
INSERT INTO ledger.account_holds VALUES (7105, 9223372036854775806, 5, now());
SELECT problem, account_id, expected, found FROM ledger_verify();
ROLLBACK;
BEGIN;
INSERT INTO ledger.idempotency VALUES ('ghost', 999999999, 'regress_tenant_a', 't', NULL);
SELECT problem, event_id FROM ledger_verify();
ROLLBACK;
SELECT * FROM ledger_verify();

-- 9. A large ledger_transfer_many returns the ids it logged, in call order
CREATE TEMP TABLE many AS
SELECT x.id, x.n
  FROM unnest(ledger_transfer_many(array_fill(7101::bigint, ARRAY[3000]),
								   array_fill(7103::bigint, ARRAY[3000]),
								   array_fill(1::bigint, ARRAY[3000])))
	   WITH ORDINALITY AS x(id, n);
SELECT count(*) AS returned, count(e.id) AS logged,
	   bool_and(e.account_id = 7101 AND e.to_account = 7103 AND e.amount = 1) AS as_called,
	   max(x.id) - min(x.id) = 2999 AND bool_and(x.id - min_id = x.n - 1) AS in_call_order
  FROM many x LEFT JOIN ledger.event_log e ON e.id = x.id,
	   (SELECT min(id) AS min_id FROM many) m;
SELECT ledger_wait(max(id), 30000) IS NOT NULL AS decided FROM many;

DROP FUNCTION attempt(text);
DROP ROLE regress_tenant_a, regress_tenant_b, regress_owner_a;
