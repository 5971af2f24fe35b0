#!/usr/bin/env bash
# Run the ledger: install what it needs, build and install the extension,
# start a throwaway PostgreSQL with it preloaded, open and fund accounts, run
# a short transfer workload with pgbench, print throughput and a few
# balances, check the books, and stop the server.  Run as root on Debian 12.
#
#   scripts/run.sh [seconds] [clients]
source "$(dirname "$0")/common.sh"

SECONDS_TO_RUN=${1:-10}
CLIENTS=${2:-8}
ACCOUNTS=10000
DIR=${LEDGER_RUN_DIR:-/tmp/ledger-run}
PORT=${LEDGER_RUN_PORT:-55600}

build_dependencies
build_and_install
trap 'stop_server "$DIR"' EXIT
log "starting PostgreSQL on port $PORT (data in $DIR)"
start_server "$DIR" "$PORT" "ledger.buckets = 2"

psql_() { as_pg psql -h "$DIR" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }

log "opening and funding $ACCOUNTS accounts"
psql_ <<SQL
CREATE EXTENSION ledger;
SELECT count(ledger_open_account(a)) FROM generate_series(1, $ACCOUNTS) a;
SELECT count(ledger_deposit(a, 1000000)) FROM generate_series(1, $ACCOUNTS) a;
SQL

cat >"$DIR/transfer.sql" <<SQL
\set from random(1, $ACCOUNTS)
\set to 1 + (:from + random(0, $ACCOUNTS - 2)) % $ACCOUNTS
\set amount random(1, 100)
SELECT ledger_transfer(:from, :to, :amount);
SQL
chown "$PGUSER_OS" "$DIR/transfer.sql"

log "transfers: pgbench, $CLIENTS clients, $SECONDS_TO_RUN s"
as_pg pgbench -h "$DIR" -p "$PORT" -U postgres -n -M prepared -c "$CLIENTS" -j 2 \
	-T "$SECONDS_TO_RUN" -f "$DIR/transfer.sql" postgres | grep -E "^(number of transactions actually processed|latency average|tps)"

log "waiting for the workers to apply everything"
psql_ <<'SQL'
DO $$
BEGIN
	WHILE EXISTS (SELECT 1 FROM ledger.queue) LOOP
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
\pset footer off
SELECT count(*) FILTER (WHERE kind = 't') AS transfers,
       count(*) FILTER (WHERE status = 'a') AS applied,
       count(*) FILTER (WHERE status = 'r') AS rejected,
       round(1000 * extract(epoch FROM percentile_cont(0.5) WITHIN GROUP
             (ORDER BY applied_at - enqueued_at))::numeric, 1) AS "enqueue to applied p50 ms",
       round(1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP
             (ORDER BY applied_at - enqueued_at))::numeric, 1) AS "p99 ms"
  FROM ledger.events WHERE kind = 't';
SELECT a AS account, ledger_balance(a) AS balance FROM generate_series(1, 5) a;
SELECT sum(ledger_balance(id)) AS "sum of all balances" FROM ledger.accounts;
SELECT count(*) AS "ledger_verify() problems" FROM ledger_verify();
SQL
log "stopping PostgreSQL"
