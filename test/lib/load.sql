-- A pgbench script that enqueues every kind of event on one ledger: deposits,
-- withdrawals, transfers (some with idempotency keys, made of the call's
-- arguments so that a repeated call is an idempotent retry), disbursements,
-- transfer_many pairs, holds posted or voided, and transactions enqueueing
-- two events.  After a call's transaction commits, the ids it got are
-- appended to :ackfile: those enqueues are acknowledged.
--
-- Variables (pgbench -D): accounts (accounts 1 .. accounts exist, funded),
-- ackfile, phase (a number in the idempotency keys: a key names one event
-- per phase).  Used by TAP 001 and the chaos runner; test/lib/audit.sql
-- checks what it leaves.
\set p random(1, :accounts)
\set k random(0, :accounts - 3)
\set q 1 + (:p + :k) % :accounts
\set r 1 + (:p + :k + 1) % :accounts
\set a random(1, 300)
\set b random(1, 300)
\set op random(1, 22)
\if :op <= 4
SELECT ledger_deposit(:p, :a + 200) AS id \gset
\shell echo :id >> :ackfile
\elif :op <= 6
SELECT ledger_withdraw(:p, :a) AS id \gset
\shell echo :id >> :ackfile
\elif :op <= 12
SELECT ledger_transfer(:p, :q, :a) AS id \gset
\shell echo :id >> :ackfile
\elif :op <= 14
SELECT ledger_transfer(:p, :q, :a, 'load-' || :phase || '-' || :p || '-' || :q || '-' || :a) AS id \gset
\shell echo :id >> :ackfile
\elif :op <= 16
SELECT ledger_disburse(:p, ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[]) AS id \gset
\shell echo :id >> :ackfile
\elif :op <= 18
SELECT array_to_string(ledger_transfer_many(ARRAY[:p, :q]::bigint[], ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[]), ' ') AS ids \gset
\shell echo :ids >> :ackfile
\elif :op <= 20
BEGIN;
SELECT ledger_transfer(:q, :p, :a) AS id \gset
SELECT ledger_withdraw(:r, :b) AS id2 \gset
COMMIT;
\shell echo :id :id2 >> :ackfile
\elif :op <= 21
SELECT ledger_hold(:p, :q, :a) AS id \gset
SELECT ledger_post(:id) AS id2 \gset
\shell echo :id :id2 >> :ackfile
\else
SELECT ledger_hold(:p, :q, :a) AS id \gset
SELECT ledger_void(:id) AS id2 \gset
\shell echo :id :id2 >> :ackfile
\endif
