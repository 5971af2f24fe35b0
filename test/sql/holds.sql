-- Holds (two-phase transfers): reserve, post all or part, void, expire, and
-- every way a post or void can be refused.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

-- wait, up to 30 s, for a hold to reach a state; returns the state it has
CREATE FUNCTION wait_hold(id bigint, want text) RETURNS text LANGUAGE plpgsql AS
$$
BEGIN
	FOR i IN 1..600 LOOP
		EXIT WHEN ledger_hold_status(id) = want;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN ledger_hold_status(id);
END
$$;

-- 9101 and 9103 are in bucket 1, 9102 in bucket 0
SELECT ledger_open_account(a) FROM generate_series(9101, 9103) a;
SELECT ledger_deposit(9101, 1000) AS d \gset
SELECT ledger_wait(:d, 30000);

-- a hold reserves money: the balance stays, the available balance drops
SELECT ledger_hold(9101, 9102, 300) AS h1 \gset
SELECT ledger_hold_status(:h1) IN ('pending', 'open') AS known;
SELECT ledger_wait(:h1, 30000);
SELECT ledger_hold_status(:h1), ledger_balance(9101), ledger_available(9101);
SELECT kind, account_id, to_accounts, amounts, status, hold_id, expires_at
  FROM ledger_event(:h1);

-- held money cannot be spent twice: 800 is more than the 700 available
SELECT ledger_withdraw(9101, 800) AS w \gset
SELECT ledger_wait(:w, 30000);
SELECT status, reason FROM ledger_event(:w);
-- nor held twice
SELECT ledger_hold(9101, 9103, 701) AS h_over \gset
SELECT ledger_wait(:h_over, 30000);
SELECT status, reason FROM ledger_event(:h_over);
SELECT ledger_hold_status(:h_over);

-- a partial post pays the payee (in another bucket) and releases the rest
SELECT ledger_post(:h1, 120) AS p1 \gset
SELECT ledger_wait(:p1, 30000);
SELECT kind, account_id, to_accounts, amounts, amount, status, hold_id = :h1 AS of_h1
  FROM ledger_event(:p1);
SELECT ledger_hold_status(:h1), ledger_balance(9101), ledger_available(9101),
       ledger_balance(9102);

-- posting or voiding it again is refused, naming why
SELECT ledger_post(:h1) AS p2 \gset
SELECT ledger_void(:h1) AS v2 \gset
SELECT ledger_wait(:v2, 30000);
SELECT e = :p2 AS is_post, status, reason FROM unnest(ARRAY[:p2, :v2]::bigint[]) e,
       LATERAL ledger_event(e) ORDER BY e;

-- a whole post (no amount), in the payer's own bucket
SELECT ledger_hold(9101, 9103, 200) AS h2 \gset
SELECT ledger_post(:h2) AS p3 \gset
SELECT ledger_wait(:p3, 30000);
SELECT amount, status FROM ledger_event(:p3);
SELECT ledger_hold_status(:h2), ledger_balance(9101), ledger_available(9101),
       ledger_balance(9103);

-- more than was held: refused, and the hold stays open for a smaller post
SELECT ledger_hold(9101, 9102, 50) AS h3 \gset
SELECT ledger_post(:h3, 51) AS p4 \gset
SELECT ledger_wait(:p4, 30000);
SELECT status, reason FROM ledger_event(:p4);
SELECT ledger_hold_status(:h3), ledger_available(9101);

-- voided: released, nothing moves; then a post of it is refused
SELECT ledger_void(:h3) AS v3 \gset
SELECT ledger_post(:h3) AS p5 \gset
SELECT ledger_wait(:p5, 30000);
SELECT (ledger_event(:v3)).status AS void, (ledger_event(:p5)).reason AS post;
SELECT ledger_hold_status(:h3), ledger_balance(9101), ledger_available(9101);

-- a rejected hold cannot be posted
SELECT ledger_post(:h_over) AS p6 \gset
SELECT ledger_wait(:p6, 30000);
SELECT status, reason FROM ledger_event(:p6);

-- a hold and its post in one batch: the worker is paused while both queue
SELECT ledger_pause(1);
SELECT ledger_hold(9101, 9102, 10) AS h4 \gset
SELECT ledger_post(:h4, 4) AS p7 \gset
SELECT ledger_void(:h4) AS v7 \gset
SELECT ledger_hold_status(:h4);
SELECT ledger_resume(1);
SELECT ledger_wait(:v7, 30000), ledger_wait(:p7, 30000);
SELECT (ledger_event(:p7)).status AS post, (ledger_event(:v7)).reason AS void,
       ledger_hold_status(:h4);

-- expiry: the worker ends a hold past its timeout and frees its money
SELECT ledger_hold(9101, 9102, 100, '200 milliseconds') AS h5 \gset
SELECT ledger_wait(:h5, 30000);
SELECT expires_at > enqueued_at AS expires_later FROM ledger_event(:h5);
SELECT ledger_available(9101) AS before_expiry;
SELECT wait_hold(:h5, 'expired');
SELECT ledger_available(9101) AS after_expiry;
SELECT ledger_post(:h5) AS p8 \gset
SELECT ledger_wait(:p8, 30000);
SELECT status, reason FROM ledger_event(:p8);

-- a hold whose timeout passed before it was applied is refused
SELECT ledger_pause(1);
SELECT ledger_hold(9101, 9102, 5, '1 millisecond') AS h6 \gset
SELECT pg_sleep(0.05);
SELECT ledger_resume(1);
SELECT ledger_wait(:h6, 30000);
SELECT status, reason FROM ledger_event(:h6);

-- idempotency keys work as for any event
SELECT ledger_hold(9101, 9102, 1, NULL, 'hold-key') AS h7 \gset
SELECT ledger_hold(9101, 9102, 1, NULL, 'hold-key') = :h7 AS same_hold;
SELECT ledger_post(:h7, NULL, 'post-key') AS p9 \gset
SELECT ledger_post(:h7, NULL, 'post-key') = :p9 AS same_post;
SELECT ledger_wait(:p9, 30000);

-- bad calls
SELECT ledger_post(424242);
\set VERBOSITY sqlstate
SELECT ledger_void(:w);
\set VERBOSITY default
SELECT ledger_post(:h1, 0);
SELECT ledger_post(NULL);
SELECT ledger_hold(9101, 9102, 10, '-1 second');
SELECT ledger_hold(9101, 9102, 10, '0 seconds');
SELECT ledger_hold(9101, 9101, 10);
SELECT ledger_hold(9101, 9999, 10);
SELECT ledger_hold_status(:w) AS not_a_hold;

-- and the books balance
SELECT * FROM ledger_verify();
DROP FUNCTION wait_hold(bigint, text);
