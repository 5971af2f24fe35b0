-- Probe: enqueue a transfer, then wait, in the next statement, until it is
-- applied; the transaction's latency is the client-observed time from
-- sending the enqueue to knowing the money moved.
-- Variables (pgbench -D): naccounts.
\set from random(1, :naccounts)
\set to 1 + (:from + random(0, :naccounts - 2)) % :naccounts
\set amount random(1, 100)
SELECT ledger_transfer(:from, :to, :amount) AS event_id \gset
SELECT ledger_wait(:event_id, 10000);
