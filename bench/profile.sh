#!/usr/bin/env bash
# Where a bucket worker's time goes: perf over one worker draining a backlog.
#
# One bucket, 10,000 accounts.  With the bucket paused, bench/apply_load.sql
# loads N pending events of one mix (uniform, hot, disburse: see that file);
# the bucket is resumed and `perf record -g -p <worker>` samples the worker
# for SECONDS while it drains.  Prints the drain rate (perf attached slows
# it) and the worker's hottest symbols, flat and then with their callers.
# Run as root on Debian 12 with the extension installed and perf.  Keeps
# perf.data in bench/results/ for `perf report -i`.
#
#   bench/profile.sh [--mix M] [--events N] [--seconds S]
source "$(dirname "$0")/../scripts/common.sh"

MIX=uniform
EVENTS=1000000
SECONDS_PERF=8
while [ $# -gt 0 ]; do
	case $1 in
	--mix) MIX=$2; shift 2 ;;
	--events) EVENTS=$2; shift 2 ;;
	--seconds) SECONDS_PERF=$2; shift 2 ;;
	*) echo "usage: $0 [--mix M] [--events N] [--seconds S]" >&2; exit 2 ;;
	esac
done
ACCOUNTS=10000
DIR=${LEDGER_BENCH_DIR:-/tmp/ledger-bench-profile}
PORT=${LEDGER_BENCH_PORT:-55762}
DATA=$TOP/bench/results/perf.data

sql() { as_pg psql -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
pending() { sql -c "SELECT count(*) FROM ledger.queue"; }
trap 'stop_server "$DIR"' EXIT

start_server "$DIR" "$PORT" "ledger.buckets = 1" "shared_buffers = 1GB" "max_wal_size = 4GB"
sql -c "CREATE EXTENSION ledger" \
	-c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $ACCOUNTS) a" \
	-c "SELECT count(ledger_deposit(a, 1000000000)) FROM generate_series(1, $ACCOUNTS) a" >/dev/null
until [ "$(pending)" = 0 ]; do sleep 0.2; done
worker=$(sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker'")

cp "$TOP/bench/apply_load.sql" "$DIR.load.sql"
chown "$PGUSER_OS" "$DIR.load.sql"
sql -c "SELECT ledger_pause(0)" >/dev/null
sql -v mix="$MIX" -v n="$EVENTS" -v naccounts="$ACCOUNTS" -f "$DIR.load.sql" >/dev/null

mkdir -p "$(dirname "$DATA")"
t0=$(date +%s.%N)
sql -c "SELECT ledger_resume(0)" >/dev/null
perf record -q -g -o "$DATA" -p "$worker" -- sleep "$SECONDS_PERF" >/dev/null 2>&1 &
PERF=$!
until [ "$(pending)" = 0 ]; do sleep 0.2; done
t1=$(date +%s.%N)
wait "$PERF"

echo "profile: $EVENTS pending events, mix $MIX, one bucket; $(nproc) cores," \
	"PostgreSQL $(pg_config --version | awk '{ print $2 }'); perf for $SECONDS_PERF s"
echo "drain: $(awk -v n="$EVENTS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }') events/s with perf attached"
echo
# head ends the pipes early: not a failure
perf report -i "$DATA" --no-children --sort symbol -g none 2>/dev/null |
	grep -v '^#' | grep -v '^$' | head -25 || true
echo
perf report -i "$DATA" --no-children --sort symbol -g caller,0.5,callee --percent-limit 4 2>/dev/null |
	grep -v '^#' | grep -v '^$' | head -80 || true
