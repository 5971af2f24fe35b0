-- Contrast: the conventional row-locking ledger.  Debit the payer only if the
-- money is there, then credit the payee, in one transaction.  Deadlocks
-- (opposite transfers crossing) are retried by pgbench --max-tries.
-- Variables (pgbench -D): naccounts.
\set from random(1, :naccounts)
\set to 1 + (:from + random(0, :naccounts - 2)) % :naccounts
\set amount random(1, 100)
BEGIN;
WITH d AS (UPDATE bench.accounts SET balance = balance - :amount
            WHERE id = :from AND balance >= :amount RETURNING 1)
SELECT count(*) AS debited FROM d \gset
\if :debited
UPDATE bench.accounts SET balance = balance + :amount WHERE id = :to;
\endif
END;
