-- Enqueue one disbursement from a random payer to 10 distinct payees.  The
-- payees are spaced naccounts/10 apart from a random offset, so they are
-- distinct and never the payer.
-- Variables (pgbench -D): naccounts (a multiple of 10).
\set from random(1, :naccounts)
\set stride :naccounts / 10
\set off random(1, :stride - 1)
\set p0 1 + (:from - 1 + :off) % :naccounts
\set p1 1 + (:from - 1 + :off + 1 * :stride) % :naccounts
\set p2 1 + (:from - 1 + :off + 2 * :stride) % :naccounts
\set p3 1 + (:from - 1 + :off + 3 * :stride) % :naccounts
\set p4 1 + (:from - 1 + :off + 4 * :stride) % :naccounts
\set p5 1 + (:from - 1 + :off + 5 * :stride) % :naccounts
\set p6 1 + (:from - 1 + :off + 6 * :stride) % :naccounts
\set p7 1 + (:from - 1 + :off + 7 * :stride) % :naccounts
\set p8 1 + (:from - 1 + :off + 8 * :stride) % :naccounts
\set p9 1 + (:from - 1 + :off + 9 * :stride) % :naccounts
\set a0 random(1, 100)
\set a1 random(1, 100)
\set a2 random(1, 100)
\set a3 random(1, 100)
\set a4 random(1, 100)
\set a5 random(1, 100)
\set a6 random(1, 100)
\set a7 random(1, 100)
\set a8 random(1, 100)
\set a9 random(1, 100)
SELECT ledger_disburse(:from,
	ARRAY[:p0, :p1, :p2, :p3, :p4, :p5, :p6, :p7, :p8, :p9]::bigint[],
	ARRAY[:a0, :a1, :a2, :a3, :a4, :a5, :a6, :a7, :a8, :a9]::bigint[]);
