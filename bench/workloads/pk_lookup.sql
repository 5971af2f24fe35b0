-- Baseline for balance: a primary-key lookup on ledger.accounts.
-- Variables (pgbench -D): account.
SELECT a.allow_negative FROM ledger.accounts a WHERE a.id = :account;
