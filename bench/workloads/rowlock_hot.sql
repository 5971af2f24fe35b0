-- Contrast: the conventional row-locking ledger with one hot payer
-- (account 1 pays every transfer), as rowlock_uniform.sql otherwise.
-- Variables (pgbench -D): naccounts.
\set to random(2, :naccounts)
\set amount random(1, 100)
BEGIN;
WITH d AS (UPDATE bench.accounts SET balance = balance - :amount
            WHERE id = 1 AND balance >= :amount RETURNING 1)
SELECT count(*) AS debited FROM d \gset
\if :debited
UPDATE bench.accounts SET balance = balance + :amount WHERE id = :to;
\endif
END;
