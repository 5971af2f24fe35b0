#!/usr/bin/env bash
# What two hard conditions cost the ledger, measured on this machine:
#   1. a long snapshot: a REPEATABLE READ transaction held open for
#      SNAPSHOT seconds under load (before, during, after);
#   2. checkpoint pressure: max_wal_size = 64MB, checkpoint_timeout = 30s.
# The load is pgbench enqueueing ledger_transfer between 10,000 accounts of
# two buckets from 16 clients; the workers apply as it comes.  Each window
# reports transfers enqueued per second, events applied per second (from
# ledger_stats), and what is pending at its end; the snapshot phase also
# the dead rows and the size of the ledger's tables, which an old snapshot
# would make grow if anything in the ledger were updated or deleted.  At
# the end every phase must drain and ledger_verify() be clean.
# Run as root on Debian 12, with the extension installed.  Writes
# bench/results/faults.txt.
#
#   bench/faults.sh [--quick]
source "$(dirname "$0")/../scripts/common.sh"

WINDOW=30
SNAPSHOT=120
[ "${1:-}" = --quick ] && { WINDOW=5; SNAPSHOT=10; }
CLIENTS=16
ACCOUNTS=10000
DIR=${LEDGER_BENCH_DIR:-/tmp/ledger-bench-faults}
PORT=${LEDGER_BENCH_PORT:-55760}
OUT=$TOP/bench/results/faults.txt

progress() { printf '[faults %s] %s\n' "$(date +%T)" "$*" >&2; }
sql() { as_pg psql -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
trap 'stop_server "$DIR"' EXIT

SCRIPT=$DIR.transfer.sql
cat >"$SCRIPT" <<'EOS'
\set from random(1, :accounts)
\set to 1 + (:from + random(0, :accounts - 2)) % :accounts
\set amount random(1, 100)
SELECT ledger_transfer(:from, :to, :amount);
EOS
chown "$PGUSER_OS" "$SCRIPT"

# a fresh server with these settings, accounts opened and funded
server() {
	stop_server "$DIR"
	start_server "$DIR" "$PORT" "ledger.buckets = 2" "max_connections = 100" \
		"shared_buffers = 512MB" "$@"
	sql -c "CREATE EXTENSION ledger" \
		-c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $ACCOUNTS) a" \
		-c "SELECT count(ledger_deposit(a, 1000000000)) FROM generate_series(1, $ACCOUNTS) a" >/dev/null
	drain
}

applied() { sql -c "SELECT sum(events_applied + events_rejected) FROM ledger_stats"; }
pending() { sql -c "SELECT count(*) FROM ledger.queue"; }
drain() {
	for _ in $(seq 1 3000); do [ "$(pending)" = 0 ] && return 0; sleep 0.1; done
	return 1
}

# window LABEL SECONDS: pgbench for SECONDS; prints a line of figures
window() {
	local label=$1 secs=$2 a0 a1 tps
	a0=$(applied)
	tps=$(as_pg pgbench -h "$DIR" -p "$PORT" -U postgres -n -M prepared -c "$CLIENTS" -j 2 \
		-T "$secs" -D accounts="$ACCOUNTS" -f "$SCRIPT" postgres 2>/dev/null |
		awk '/^tps = / { printf "%.0f", $3 }')
	a1=$(applied)
	printf '%-40s %12s %12s %10s\n' "$label" "$tps" "$(((a1 - a0) / secs))" "$(pending)"
}

# the ledger's tables: dead rows and size
tables() {
	sql -c "SELECT coalesce(sum(n_dead_tup), 0) || ' dead rows, '
				   || pg_size_pretty(sum(pg_total_relation_size(relid)))
			  FROM pg_stat_user_tables WHERE schemaname = 'ledger'"
}

header() { printf '%-40s %12s %12s %10s\n' "" "enqueued/s" "applied/s" "pending"; }

mkdir -p "$(dirname "$OUT")"
{
	echo "faults benchmark: ledger_transfer from $CLIENTS clients, $ACCOUNTS accounts, 2 buckets;"
	echo "$(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB, PostgreSQL $(pg_config --version | awk '{ print $2 }'), fsync on"
	echo
	echo "1. a REPEATABLE READ transaction held open for $SNAPSHOT s"
	progress "1. a long snapshot"
	server
	header
	window "before" "$WINDOW"
	echo "  ledger tables: $(tables)"
	sql -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT count(*) FROM ledger.accounts" \
		-c "SELECT pg_sleep($SNAPSHOT + 5)" -c "COMMIT" >/dev/null &
	HOLDER=$!
	sleep 2
	window "during (snapshot open)" "$SNAPSHOT"
	echo "  ledger tables at the end of it: $(tables)"
	wait "$HOLDER"
	window "after" "$WINDOW"
	drain && echo "  drained; ledger_verify(): $(sql -c 'SELECT count(*) FROM ledger_verify()') problems"
	sql -c "VACUUM" >/dev/null
	echo "  ledger tables after VACUUM: $(tables)"
	echo
	echo "2. checkpoint pressure: max_wal_size = 64MB, checkpoint_timeout = 30s"
	progress "2. checkpoint pressure"
	server "max_wal_size = 64MB" "checkpoint_timeout = 30s"
	ck0=$(sql -c "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
	header
	window "under pressure" $((WINDOW * 2))
	ck1=$(sql -c "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
	echo "  checkpoints during the window: $((ck1 - ck0))"
	drain && echo "  drained; ledger_verify(): $(sql -c 'SELECT count(*) FROM ledger_verify()') problems"
	progress "   baseline: default checkpoint settings"
	server
	header
	window "default settings (baseline)" $((WINDOW * 2))
	drain && echo "  drained; ledger_verify(): $(sql -c 'SELECT count(*) FROM ledger_verify()') problems"
} | tee "$OUT"
grep -q "drained; ledger_verify(): 0 problems" "$OUT" &&
	[ "$(grep -c 'drained; ledger_verify(): 0 problems' "$OUT")" = 3 ]
