-- Enqueue one transfer between two distinct random accounts.
-- Variables (pgbench -D): naccounts.
\set from random(1, :naccounts)
\set to 1 + (:from + random(0, :naccounts - 2)) % :naccounts
\set amount random(1, 100)
SELECT ledger_transfer(:from, :to, :amount);
