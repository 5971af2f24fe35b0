-- Enqueue one transfer, always from the hot payer (account 1).
-- Variables (pgbench -D): naccounts.
\set to random(2, :naccounts)
\set amount random(1, 100)
SELECT ledger_transfer(1, :to, :amount);
