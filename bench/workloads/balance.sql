-- Read one account's balance.  Variables (pgbench -D): account.
SELECT ledger_balance(:account);
