-- Enqueue one deposit to a random account.
-- Variables (pgbench -D): naccounts.
\set account random(1, :naccounts)
\set amount random(1, 100)
SELECT ledger_deposit(:account, :amount);
