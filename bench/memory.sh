#!/usr/bin/env bash
# Memory and storage over a long drain: does a bucket worker's memory stay
# flat, and does the ledger's storage grow only by its permanent history?
#
# Two buckets, 10,000 accounts.  Two pgbench clients enqueue transfers with
# ledger_transfer_many (1,000 per call) while the workers apply them, in
# three steps up to EVENTS in all (a tenth, a half, all).  Every 2 s the
# workers' memory is read from /proc: RssAnon is the memory a worker holds
# for itself (a leak would grow it); RssShmem is the shared buffers it has
# touched, which grows up to shared_buffers and is not the worker's own.
# After each step the queue drains and a CHECKPOINT runs; then the size of
# every table of the ledger (with its indexes and TOAST), and bytes per
# event.  The log of events, the legs and the batches are the permanent
# history; what the queue adds beyond them (outcomes, deferred events) must
# not grow with the events already applied.
# Run as root on Debian 12, with the extension installed.  Writes
# bench/results/memory.txt.
#
#   bench/memory.sh [--quick | --events N]
source "$(dirname "$0")/../scripts/common.sh"

EVENTS=10000000
case ${1:-} in
--quick) EVENTS=200000 ;;
--events) EVENTS=$2 ;;
esac
CLIENTS=2
BATCH=1000
ACCOUNTS=10000
DIR=${LEDGER_BENCH_DIR:-/tmp/ledger-bench-memory}
PORT=${LEDGER_BENCH_PORT:-55761}
OUT=$TOP/bench/results/memory.txt

progress() { printf '[memory %s] %s\n' "$(date +%T)" "$*" >&2; }
sql() { as_pg psql -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
trap '[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null; stop_server "$DIR"' EXIT

applied() { sql -c "SELECT sum(events_applied + events_rejected) FROM ledger_stats"; }
drain() {
	for _ in $(seq 1 36000); do
		[ "$(sql -c 'SELECT count(*) FROM ledger.queue')" = 0 ] && return 0
		sleep 0.5
	done
	return 1
}
workers() {
	sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker' ORDER BY pid"
}
# kB of field F (RssAnon, RssShmem) of process P
# (nothing if P has gone)
rss() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# sample FILE: every 2 s, "pid anon_kB shmem_kB" of each worker, until killed
sample() {
	local pid
	while :; do
		for pid in $PIDS; do echo "$pid $(rss "$pid" RssAnon) $(rss "$pid" RssShmem)"; done >>"$1"
		sleep 2
	done
}

start_server "$DIR" "$PORT" "ledger.buckets = 2" "shared_buffers = 512MB" \
	"max_wal_size = 4GB" "checkpoint_timeout = 15min"
sql -c "CREATE EXTENSION ledger" \
	-c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $ACCOUNTS) a" \
	-c "SELECT count(ledger_deposit(a, 1000000000)) FROM generate_series(1, $ACCOUNTS) a" >/dev/null
drain
PIDS=$(workers)
base=$(applied)

cp "$TOP/bench/workloads/transfer_many.sql" "$DIR/load.sql"
chown "$PGUSER_OS" "$DIR/load.sql"

mkdir -p "$(dirname "$OUT")"
exec > >(tee "$OUT")
echo "memory benchmark: ledger_transfer_many ($BATCH per call) from $CLIENTS clients, $ACCOUNTS accounts,"
echo "2 buckets, shared_buffers 512MB; $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB,"
echo "PostgreSQL $(pg_config --version | awk '{ print $2 }'), fsync on; $EVENTS events in three steps"
echo
printf '%-12s %-10s %14s %14s %14s %10s\n' "events" "worker" "RssAnon kB" "(max)" "RssShmem kB" "failures"
done_events=0
maxima=()
for target in $((EVENTS / 10)) $((EVENTS / 2)) "$EVENTS"; do
	progress "enqueueing up to $target events"
	: >"$DIR/samples"
	sample "$DIR/samples" &
	SAMPLER=$!
	as_pg pgbench -h "$DIR" -p "$PORT" -U postgres -n -c "$CLIENTS" -j "$CLIENTS" \
		-t $(((target - done_events) / CLIENTS / BATCH)) -f "$DIR/load.sql" \
		-D naccounts="$ACCOUNTS" -D batch="$BATCH" postgres >/dev/null 2>&1
	drain
	kill "$SAMPLER"
	SAMPLER=
	done_events=$target
	sql -c "CHECKPOINT" >/dev/null
	for pid in $PIDS; do
		anon=$(rss "$pid" RssAnon)
		max=$(awk -v p="$pid" '$1 == p && $2 > m { m = $2 } END { print m + 0 }' "$DIR/samples")
		printf '%-12s %-10s %14s %14s %14s %10s\n' "$target" "$pid" "${anon:-gone}" "$max" \
			"$(rss "$pid" RssShmem)" "$(sql -c "SELECT failures FROM ledger_stats WHERE pid = $pid")"
	done
	maxima+=("$(awk '$2 > m { m = $2 } END { print m + 0 }' "$DIR/samples")")
	echo "  applied: $(($(applied) - base)) events; the workers now: $(workers | tr '\n' ' ')"
	sql -F ' ' -c "SELECT rpad(c.relname, 24), lpad(pg_size_pretty(pg_total_relation_size(c.oid)), 10),
							lpad(round(pg_total_relation_size(c.oid)::numeric / $target, 1)::text, 8) || ' B/event'
					  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
					 WHERE n.nspname = 'ledger' AND c.relkind = 'r'
					   AND pg_total_relation_size(c.oid) > 65536
					 ORDER BY pg_total_relation_size(c.oid) DESC" | sed 's/^/  /'
done
echo
echo "a worker's private memory (RssAnon), the most of either in each step: ${maxima[*]} kB"
echo "sum of all balances: $(sql -c 'SELECT sum(ledger_balance(id)) FROM ledger.accounts')"
echo "events applied, rejected: $(sql -c "SELECT sum(events_applied) || ', ' || sum(events_rejected) FROM ledger_stats")"
