-- Currencies: each account has one; money moves only within a currency;
-- each currency has its own external accounts, and sums to zero alone.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS ledger;
RESET client_min_messages;

SELECT ledger_open_account(9301, false, 'EUR');
SELECT ledger_open_account(9302, false, 'EUR');
SELECT ledger_open_account(9303, false, 'USD');
SELECT ledger_open_account(9304);	-- ledger.default_currency
SET ledger.default_currency = 'USD';
SELECT ledger_open_account(9305);
RESET ledger.default_currency;
SELECT a.id, c.code FROM ledger.accounts a JOIN ledger.currencies c ON c.no = a.currency
 WHERE a.id BETWEEN 9301 AND 9305 ORDER BY a.id;

-- opening again: the same currency is a no-op, another is an error
SELECT ledger_open_account(9301, false, 'EUR');
SELECT ledger_open_account(9301, false, 'USD');
SELECT ledger_open_account(9304, false, 'XXX');

-- deposits and withdrawals balance against the currency's external account
SELECT ledger_deposit(9301, 500) AS e1 \gset
SELECT ledger_deposit(9303, 700) AS e2 \gset
SELECT ledger_wait(:e1, 30000), ledger_wait(:e2, 30000);
-- every currency has an external account in every bucket (the workers
-- open those of the currency of 1.0's accounts when they start)
SELECT c.code, count(a.id) AS external_accounts
  FROM ledger.currencies c JOIN ledger.accounts a ON a.currency = c.no AND a.id < 0
 WHERE c.code IN ('XXX', 'EUR', 'USD') GROUP BY c.code ORDER BY c.code;
SELECT t.account_id < 0 AS external, c.code, t.amount
  FROM ledger.transactions t
  JOIN ledger.accounts a ON a.id = t.account_id
  JOIN ledger.currencies c ON c.no = a.currency
 WHERE t.event_id IN (:e1, :e2) ORDER BY t.event_id, t.amount;
SELECT ledger_transfer(9301, 9302, 200) AS e3 \gset
SELECT ledger_transfer(9303, 9305, 300) AS e4 \gset
SELECT ledger_wait(:e3, 30000), ledger_wait(:e4, 30000);
SELECT ledger_withdraw(9302, 50) AS e5 \gset
SELECT ledger_wait(:e5, 30000);
SELECT a, ledger_balance(a) FROM generate_series(9301, 9305) a;

-- paying across currencies is refused at enqueue
SELECT ledger_transfer(9301, 9303, 1);
SELECT ledger_disburse(9301, '{9302,9303}', '{1,1}');
SELECT ledger_transfer_many('{9301,9301}', '{9302,9303}', '{1,1}');
SELECT ledger_hold(9303, 9301, 1);

-- bad codes
SELECT ledger_open_account(9306, false, 'eur');
SELECT ledger_open_account(9306, false, '');
SELECT ledger_open_account(9306, false, 'TOO_LONG_A_CODE_X');
SET ledger.default_currency = 'usd';

-- the audit checks the zero sum in each currency
SELECT * FROM ledger_verify();
