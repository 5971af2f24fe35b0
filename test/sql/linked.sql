-- Linked transfers (ledger_transfer_linked): a group of 1 to 100 transfers,
-- across payers, buckets and currencies, all applied or all rejected.  The
-- rejected transfer has its own reason, the others linked_rejected
-- (element N: reason).  Each transfer is checked against its payer's
-- balance before the group's own transfers, and one that voted sets its
-- amount aside without holding back its payer's other events.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- the transfers of a group, in element order (a group's transfers are
-- events of their own, link_of naming the group)
CREATE FUNCTION elements(g bigint, OUT n bigint, OUT kind text, OUT account_id bigint,
                         OUT to_account bigint, OUT amount bigint, OUT status text,
                         OUT reason text)
RETURNS SETOF record LANGUAGE sql AS
$$
	SELECT row_number() OVER (ORDER BY e.id), x.kind, x.account_id, x.to_accounts[1],
	       x.amount, x.status, x.reason
	  FROM ledger.event_log e, ledger_event(e.id) x
	 WHERE e.link_of = g AND e.credit_of IS NULL
	 ORDER BY e.id
$$;
-- wait for every transfer of a group to be decided; their statuses
CREATE FUNCTION wait_group(g bigint) RETURNS text LANGUAGE sql AS
$$
	SELECT string_agg(ledger_wait(e.id, 30000), ', ' ORDER BY e.id)
	  FROM ledger.event_log e WHERE e.link_of = g AND e.credit_of IS NULL
$$;
-- the legs of a group's transfers
CREATE FUNCTION group_legs(g bigint, OUT n bigint, OUT account_id bigint, OUT amount bigint)
RETURNS SETOF record LANGUAGE sql AS
$$
	SELECT x.n, t.account_id, t.amount
	  FROM (SELECT e.id, row_number() OVER (ORDER BY e.id) AS n
	          FROM ledger.event_log e WHERE e.link_of = g AND e.credit_of IS NULL) x
	  JOIN ledger.transactions t ON t.event_id = x.id
	 ORDER BY x.n, t.amount
$$;
-- wait, up to 30 s, for an account's available balance to reach a value
CREATE FUNCTION wait_available(account bigint, want bigint) RETURNS bigint LANGUAGE plpgsql AS
$$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN ledger_available(account) = want;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN ledger_available(account);
END
$$;
/*
 * attempt(sql): run one query returning one text value in a subtransaction
 * that is always rolled back, so that a call that is accepted leaves
 * nothing behind; its SQLSTATE, message and the context line naming the
 * element of the group if it fails, "ok" and its value if not.  Runs as its
 * caller.
 */
CREATE FUNCTION attempt(sql text, OUT state text, OUT result text, OUT element text)
LANGUAGE plpgsql AS
$$
DECLARE
	value text;
	context text;
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
			GET STACKED DIAGNOSTICS context = PG_EXCEPTION_CONTEXT;
			state := SQLSTATE;
			result := SQLERRM;
			IF split_part(context, E'\n', 1) LIKE 'transfer % of the batch' THEN
				element := split_part(context, E'\n', 1);
			END IF;
	END;
END
$$;
CREATE TEMP TABLE grp (label text PRIMARY KEY, id bigint NOT NULL);
GRANT ALL ON grp TO PUBLIC;
-- other events
CREATE TEMP TABLE ev (label text PRIMARY KEY, id bigint NOT NULL);

-- 9901, 9903 and 9905 are in bucket 1; 9902, 9904 and 9906 in bucket 0
SELECT count(ledger_open_account(a)) AS opened FROM generate_series(9901, 9906) a;
INSERT INTO ev SELECT 'fund ' || a, ledger_deposit(a, amount)
  FROM (VALUES (9901, 1000), (9902, 1000), (9903, 100), (9904, 1000), (9906, 20)) f(a, amount);
SELECT label, ledger_wait(id, 30000) FROM ev ORDER BY label;
SELECT a, ledger_balance(a) FROM generate_series(9901, 9906) a;

-- 1. A group within one bucket: applied, each transfer an event of kind
-- linked with its own legs
INSERT INTO grp VALUES ('one bucket',
	ledger_transfer_linked('{9901,9903}', '{9903,9905}', '{10,20}'));
SELECT wait_group(id) FROM grp WHERE label = 'one bucket';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'one bucket';
SELECT x.* FROM grp, group_legs(grp.id) x WHERE grp.label = 'one bucket';
-- the group's id is its first transfer's
SELECT (SELECT min(e.id) FROM ledger.event_log e WHERE e.link_of = grp.id) = grp.id AS first_id
  FROM grp WHERE label = 'one bucket';

-- 2. A group spanning both buckets (payers 9901 in bucket 1, 9902 and 9904
-- in bucket 0, payees across): applied, every leg there
INSERT INTO grp VALUES ('two buckets',
	ledger_transfer_linked('{9901,9902,9904}', '{9902,9903,9901}', '{5,6,7}'));
SELECT wait_group(id) FROM grp WHERE label = 'two buckets';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'two buckets';
SELECT x.* FROM grp, group_legs(grp.id) x WHERE grp.label = 'two buckets';
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9901, 9906) a;

-- 3. The second payer is short (9906 has 20): every transfer rejected, the
-- short one with insufficient_funds, the others naming it; no legs, and
-- the amounts the others set aside are released
INSERT INTO grp VALUES ('second short',
	ledger_transfer_linked('{9901,9906,9903}', '{9902,9901,9904}', '{1,1000,1}'));
SELECT wait_group(id) FROM grp WHERE label = 'second short';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'second short';
SELECT count(*) AS legs FROM grp, group_legs(grp.id) x WHERE grp.label = 'second short';
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9901, 9906) a;

-- 4. A group's credits do not fund its debits: 9906 (20) is paid 50 by the
-- group and pays 60 in it; across buckets, and within one (9905 has 20)
INSERT INTO grp VALUES ('own credit, two buckets',
	ledger_transfer_linked('{9901,9906}', '{9906,9904}', '{50,60}'));
INSERT INTO grp VALUES ('own credit, one bucket',
	ledger_transfer_linked('{9903,9905}', '{9905,9901}', '{50,60}'));
-- and a payer's transfers of one group add up: 9906 cannot pay 15 twice
INSERT INTO grp VALUES ('one payer twice',
	ledger_transfer_linked('{9906,9906}', '{9904,9902}', '{15,15}'));
SELECT label, wait_group(id) FROM grp
 WHERE label IN ('own credit, two buckets', 'own credit, one bucket', 'one payer twice')
 ORDER BY label;
SELECT grp.label, x.* FROM grp, elements(grp.id) x
 WHERE label IN ('own credit, two buckets', 'own credit, one bucket', 'one payer twice')
 ORDER BY grp.label, x.n;
SELECT count(*) AS legs FROM grp, group_legs(grp.id) x
 WHERE label IN ('own credit, two buckets', 'own credit, one bucket', 'one payer twice');
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9901, 9906) a;

-- 5. A group in flight: bucket 0 is paused, so 9902's transfer cannot vote.
-- 9901's has voted: its 10 is set aside, and 9901's other events go on.
SELECT ledger_pause(0);
INSERT INTO grp VALUES ('in flight',
	ledger_transfer_linked('{9901,9902}', '{9903,9901}', '{10,10}'));
SELECT wait_available(9901, 992 - 10) AS available_9901;
SELECT n, status FROM grp, elements(grp.id) x WHERE grp.label = 'in flight';
SELECT ledger_balance(9901);
INSERT INTO ev VALUES ('other event of 9901', ledger_transfer(9901, 9905, 1));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'other event of 9901';
-- what is set aside cannot be spent: 981 is available, not 982
INSERT INTO ev VALUES ('too much', ledger_withdraw(9901, 982));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'too much';
SELECT e.label, x.status, x.reason FROM ev e, ledger_event(e.id) x
 WHERE e.label IN ('other event of 9901', 'too much') ORDER BY e.label;
SELECT ledger_balance(9901), ledger_available(9901);
-- the audit counts what is set aside as held
SELECT * FROM ledger_verify();
SELECT ledger_resume(0);
SELECT wait_group(id) FROM grp WHERE label = 'in flight';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'in flight';
SELECT x.* FROM grp, group_legs(grp.id) x WHERE grp.label = 'in flight';
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9901, 9906) a;
-- decided, nothing is held any more (9902's transfer, the last to vote,
-- was paid in the batch that voted it)
SELECT * FROM ledger_verify();

-- 6. Currency exchange: Alice pays Bob dollars, Bob pays Alice euros, one
-- group, each transfer in its own currency.  9911 Alice's dollars (bucket
-- 1), 9912 Bob's dollars (bucket 0), 9913 Bob's euros (bucket 1), 9914
-- Alice's euros (bucket 0).
SELECT ledger_open_account(9911, false, 'USD'), ledger_open_account(9912, false, 'USD'),
       ledger_open_account(9913, false, 'EUR'), ledger_open_account(9914, false, 'EUR');
INSERT INTO ev VALUES ('alice usd', ledger_deposit(9911, 10000)),
                      ('bob eur', ledger_deposit(9913, 9200));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('alice usd', 'bob eur') ORDER BY label;
INSERT INTO grp VALUES ('exchange',
	ledger_transfer_linked('{9911,9913}', '{9912,9914}', '{10000,9200}', 'fx-0001'));
SELECT wait_group(id) FROM grp WHERE label = 'exchange';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'exchange';
SELECT a.id, c.code, ledger_balance(a.id)
  FROM ledger.accounts a JOIN ledger.currencies c ON c.no = a.currency
 WHERE a.id BETWEEN 9911 AND 9914 ORDER BY a.id;
-- and back, but Alice's euros are short: nothing moves in either currency
INSERT INTO grp VALUES ('exchange back, short',
	ledger_transfer_linked('{9912,9914}', '{9911,9913}', '{10000,9201}'));
SELECT wait_group(id) FROM grp WHERE label = 'exchange back, short';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'exchange back, short';
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9911, 9914) a;

-- 7. A transfer to a closed account rejects the group with account_closed
SELECT ledger_open_account(9909);
INSERT INTO ev VALUES ('close 9909', ledger_close_account(9909));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'close 9909';
INSERT INTO grp VALUES ('to a closed account',
	ledger_transfer_linked('{9901,9902}', '{9903,9909}', '{1,1}'));
SELECT wait_group(id) FROM grp WHERE label = 'to a closed account';
SELECT x.* FROM grp, elements(grp.id) x WHERE grp.label = 'to a closed account';
-- A payee of bucket 1 (9921, empty) asked to close while a transfer of a
-- group to it has voted and waits for the group (bucket 0 is paused): the
-- close waits for the group's decision, and no money may land in the
-- account while it is closed.  (Then it is reopened if it was closed, so
-- that the group can end, applied.)
SELECT ledger_open_account(9921);
SELECT ledger_available(9901) - 10 AS set_aside_9901 \gset
SELECT ledger_pause(0);
INSERT INTO grp VALUES ('payee closing',
	ledger_transfer_linked('{9901,9902}', '{9921,9904}', '{10,10}'));
SELECT wait_available(9901, :set_aside_9901) = :set_aside_9901 AS voted;
INSERT INTO ev VALUES ('close 9921', ledger_close_account(9921));
SELECT ledger_wait(id, 2000) AS close_waits FROM ev WHERE label = 'close 9921';
SELECT ledger_resume(0);
SELECT ledger_wait(id, 30000) AS close FROM ev WHERE label = 'close 9921';
SELECT x.reason FROM ev, ledger_event(ev.id) x WHERE label = 'close 9921';
SELECT ledger_wait(max(e.id), 30000) AS second_transfer
  FROM grp, ledger.event_log e
 WHERE grp.label = 'payee closing' AND e.link_of = grp.id AND e.credit_of IS NULL;
-- the first transfer's turn (decided, or held back: 3 s)
SELECT ledger_wait(min(e.id), 3000) IS NOT NULL AS waited
  FROM grp, ledger.event_log e
 WHERE grp.label = 'payee closing' AND e.link_of = grp.id AND e.credit_of IS NULL;
SELECT COALESCE((SELECT c.closed AND ledger_balance(9921) <> c.balance_at_close
                   FROM ledger_account_closure(9921) c), false) AS money_in_a_closed_account;
INSERT INTO ev SELECT 'reopen 9921', ledger_reopen_account(9921)
  FROM ledger_account_closure(9921) c WHERE c.closed;
SELECT COALESCE(bool_and(ledger_wait(id, 30000) = 'applied'), true) AS reopened_if_closed
  FROM ev WHERE label = 'reopen 9921';
SELECT wait_group(id) FROM grp WHERE label = 'payee closing';
SELECT ledger_balance(9921), (SELECT closed FROM ledger_account_closure(9921)) IS NOT TRUE AS open;

-- 8. An idempotency key names the whole group: the same call again returns
-- the same id and enqueues nothing, also once it is decided; another group,
-- other metadata or another function under the key is an error (23L01)
INSERT INTO grp VALUES ('keyed',
	ledger_transfer_linked('{9901,9902}', '{9903,9904}', '{2,3}', 'linked-key', '{"order": 7}'));
SELECT ledger_transfer_linked('{9901,9902}', '{9903,9904}', '{2,3}', 'linked-key', '{"order": 7}') = id
       AS same_id
  FROM grp WHERE label = 'keyed';
SELECT wait_group(id) FROM grp WHERE label = 'keyed';
SELECT ledger_transfer_linked('{9901,9902}', '{9903,9904}', '{2,3}', 'linked-key', '{"order": 7}') = id
       AS same_id_once_decided
  FROM grp WHERE label = 'keyed';
SELECT count(*) AS transfers FROM grp, ledger.event_log e
 WHERE grp.label = 'keyed' AND e.link_of = grp.id AND e.credit_of IS NULL;
-- the group's metadata is every transfer's
SELECT x.n, x.status, y.metadata FROM grp, elements(grp.id) x,
       LATERAL (SELECT l.id FROM ledger.event_log l
                 WHERE l.link_of = grp.id AND l.credit_of IS NULL ORDER BY l.id
                OFFSET x.n - 1 LIMIT 1) l, ledger_event(l.id) y
 WHERE grp.label = 'keyed' ORDER BY x.n;
SELECT c.call, a.state, a.result
  FROM (VALUES
	(1, 'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9904}'', ''{2,4}'', ''linked-key'', ''{"order": 7}'')::text'),
	(2, 'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9906}'', ''{2,3}'', ''linked-key'', ''{"order": 7}'')::text'),
	(3, 'SELECT ledger_transfer_linked(''{9901}'', ''{9903}'', ''{2}'', ''linked-key'', ''{"order": 7}'')::text'),
	(4, 'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9904}'', ''{2,3}'', ''linked-key'', ''{"order": 8}'')::text'),
	(5, 'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9904}'', ''{2,3}'', ''linked-key'')::text'),
	(6, 'SELECT ledger_transfer(9901, 9903, 2, ''linked-key'', ''{"order": 7}'')::text'),
	(7, 'SELECT ledger_transfer_many(''{9901,9902}'', ''{9903,9904}'', ''{2,3}'', ''{linked-key,NULL}'')::text')) c(n, call),
       attempt(c.call) a
 ORDER BY c.n;
-- a key a transfer took cannot name a group
INSERT INTO ev VALUES ('plain', ledger_transfer(9901, 9903, 1, 'plain-key'));
SELECT ledger_wait(id, 30000) FROM ev WHERE label = 'plain';
SELECT * FROM attempt('SELECT ledger_transfer_linked(''{9901}'', ''{9903}'', ''{1}'', ''plain-key'')::text');

-- 9. Errors at the door, each with its SQLSTATE, naming the element of the
-- group when it is about one (none of them enqueues anything)
CREATE TEMP TABLE cases (ord serial, label text NOT NULL, sql text NOT NULL);
INSERT INTO cases (label, sql) VALUES
('arrays of different lengths',   'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903}'', ''{1,1}'')::text'),
('amounts longer',                'SELECT ledger_transfer_linked(''{9901}'', ''{9903}'', ''{1,1}'')::text'),
('empty arrays',                  'SELECT ledger_transfer_linked(''{}'', ''{}'', ''{}'')::text'),
('100 transfers (accepted)',      'SELECT (ledger_transfer_linked(array_fill(9901::bigint, ARRAY[100]), array_fill(9903::bigint, ARRAY[100]), array_fill(1::bigint, ARRAY[100])) > 0)::text'),
('101 transfers',                 'SELECT ledger_transfer_linked(array_fill(9901::bigint, ARRAY[101]), array_fill(9903::bigint, ARRAY[101]), array_fill(1::bigint, ARRAY[101]))::text'),
('null from_accounts',            'SELECT ledger_transfer_linked(NULL, ''{9903}'', ''{1}'')::text'),
('null to_accounts',              'SELECT ledger_transfer_linked(''{9901}'', NULL, ''{1}'')::text'),
('null amounts',                  'SELECT ledger_transfer_linked(''{9901}'', ''{9903}'', NULL)::text'),
('null payer in element 2',       'SELECT ledger_transfer_linked(''{9901,NULL}'', ''{9903,9904}'', ''{1,1}'')::text'),
('null payee in element 2',       'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,NULL}'', ''{1,1}'')::text'),
('null amount in element 1',      'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9904}'', ''{NULL,1}'')::text'),
('2-D from_accounts',             'SELECT ledger_transfer_linked(''{{9901},{9902}}'', ''{9903,9904}'', ''{1,1}'')::text'),
('self transfer in element 2',    'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9902}'', ''{1,1}'')::text'),
('amount 0 in element 2',         'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9904}'', ''{1,0}'')::text'),
('amount -5 in element 1',        'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,9904}'', ''{-5,1}'')::text'),
('account 0 in element 2',        'SELECT ledger_transfer_linked(''{9901,9902}'', ''{9903,0}'', ''{1,1}'')::text'),
('external payer in element 3',   'SELECT ledger_transfer_linked(''{9901,9902,-1}'', ''{9903,9904,9901}'', ''{1,1,1}'')::text'),
('unknown payer in element 2',    'SELECT ledger_transfer_linked(''{9901,9999}'', ''{9903,9904}'', ''{1,1}'')::text'),
('unknown payee in element 3',    'SELECT ledger_transfer_linked(''{9901,9902,9904}'', ''{9903,9904,9998}'', ''{1,1,1}'')::text'),
('currency mismatch, element 2',  'SELECT ledger_transfer_linked(''{9901,9911}'', ''{9903,9914}'', ''{1,1}'')::text'),
('currency mismatch, element 1',  'SELECT ledger_transfer_linked(''{9912,9901}'', ''{9902,9903}'', ''{1,1}'')::text'),
('metadata not an object',        'SELECT ledger_transfer_linked(''{9901}'', ''{9903}'', ''{1}'', NULL, ''[1]'')::text'),
('key of 257 bytes',              'SELECT ledger_transfer_linked(''{9901}'', ''{9903}'', ''{1}'', repeat(''k'', 257))::text'),
('null key and metadata (accepted)', 'SELECT (ledger_transfer_linked(''{9901}'', ''{9903}'', ''{1}'', NULL, NULL) > 0)::text');
CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM ledger.event_log) AS events, (SELECT count(*) FROM ledger.queue) AS queued;
SELECT c.label, a.state, a.result, a.element
  FROM cases c, attempt(c.sql) a
 ORDER BY c.ord;
SELECT (SELECT count(*) FROM ledger.event_log) - events AS events,
       (SELECT count(*) FROM ledger.queue) - queued AS queued
  FROM before;
-- how two of them read in full
\set VERBOSITY default
SELECT ledger_transfer_linked('{9901,9902,9904}', '{9903,9904,9998}', '{1,1,1}');
SELECT ledger_transfer_linked('{9901,9911}', '{9903,9914}', '{1,1}');

-- 10. A client may debit only the accounts whose owner it is a member of:
-- regress_linked_tenant is a member of regress_linked_owner_a, which owns
-- 9907; 9908 belongs to regress_linked_owner_b
CREATE ROLE regress_linked_owner_a;
CREATE ROLE regress_linked_owner_b;
CREATE ROLE regress_linked_tenant IN ROLE ledger_client, regress_linked_owner_a;
SELECT ledger_open_account(9907, owner => 'regress_linked_owner_a'),
       ledger_open_account(9908, owner => 'regress_linked_owner_b');
INSERT INTO ev VALUES ('fund 9907', ledger_deposit(9907, 100)),
                      ('fund 9908', ledger_deposit(9908, 100));
SELECT label, ledger_wait(id, 30000) FROM ev WHERE label IN ('fund 9907', 'fund 9908') ORDER BY label;
SET ROLE regress_linked_tenant;
SELECT c.call, a.state, a.result, a.element
  FROM (VALUES
	(1, 'SELECT (ledger_transfer_linked(''{9907,9903}'', ''{9908,9907}'', ''{1,1}'') > 0)::text'),
	(2, 'SELECT ledger_transfer_linked(''{9907,9908}'', ''{9901,9901}'', ''{1,1}'')::text'),
	(3, 'SELECT ledger_transfer_linked(''{9908}'', ''{9907}'', ''{1}'')::text')) c(n, call),
       attempt(c.call) a
 ORDER BY c.n;
-- one it may make, applied
INSERT INTO grp VALUES ('by the tenant', ledger_transfer_linked('{9907}', '{9908}', '{40}'));
RESET ROLE;
SELECT wait_group(id) FROM grp WHERE label = 'by the tenant';
SELECT ledger_balance(9907), ledger_balance(9908);
DROP ROLE regress_linked_tenant, regress_linked_owner_a, regress_linked_owner_b;

-- nothing is left set aside, and the books balance
SELECT count(*) AS pending FROM grp, ledger.event_log e
 WHERE e.link_of = grp.id AND ledger_event_status(e.id) = 'pending';
SELECT a, ledger_balance(a), ledger_available(a) FROM generate_series(9901, 9908) a;
SELECT * FROM ledger_verify();
DROP FUNCTION elements(bigint), wait_group(bigint), group_legs(bigint),
	wait_available(bigint, bigint), attempt(text);
