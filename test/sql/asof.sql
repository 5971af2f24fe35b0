-- Balances as of a time, and the legs of a time range, across breakpoints
-- (ledger.breakpoint_interval is 5 in the test configuration).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

SELECT ledger_open_account(9501), ledger_open_account(9502);

-- 23 deposits of 1, 2, 3, ... to 9501, each applied before the next; the
-- time after each is noted with the balance it should show
CREATE TEMP TABLE marks (n integer, at timestamptz, balance bigint);
INSERT INTO marks VALUES (0, clock_timestamp(), 0);
DO $$
DECLARE
	e bigint;
BEGIN
	FOR i IN 1..23 LOOP
		e := ledger_deposit(9501, i);
		COMMIT;
		IF ledger_wait(e, 30000) <> 'applied' THEN
			RAISE EXCEPTION 'deposit % not applied', i;
		END IF;
		INSERT INTO marks VALUES (i, clock_timestamp(), i * (i + 1) / 2);
		COMMIT;
	END LOOP;
END
$$;
SELECT count(*) AS breakpoints FROM ledger.breakpoints WHERE account_id = 9501;

-- the balance as of each mark is the balance then
SELECT count(*) AS marks,
	   count(*) FILTER (WHERE ledger_balance(9501, at) = balance) AS right
  FROM marks;
SELECT ledger_balance(9501, '-infinity'), ledger_balance(9501, 'infinity'),
	   ledger_balance(9501, now() - interval '1 day') AS yesterday,
	   ledger_balance(9502, 'infinity') AS no_legs,
	   ledger_balance(9999, 'infinity') AS no_account;

-- the legs between two marks are the deposits made between them
SELECT array_agg(amount ORDER BY transaction_id)
  FROM ledger_history(9501, (SELECT at FROM marks WHERE n = 3),
					  (SELECT at FROM marks WHERE n = 17));
SELECT count(*) AS all_legs FROM ledger_history(9501, '-infinity', 'infinity');
SELECT count(*) AS none FROM ledger_history(9501, 'infinity', '-infinity');

DROP TABLE marks;
SELECT * FROM ledger_verify();
