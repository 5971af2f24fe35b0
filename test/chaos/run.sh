#!/usr/bin/env bash
# A chaos run: faults picked at random from a seed, under a load of every
# kind of event, for a given time; then the audit.
#
#   test/chaos/run.sh [--seed S] [--seconds T]
#
# One server (two buckets), under checkpoint pressure all along
# (max_wal_size 64MB, checkpoint_timeout 30s).  pgbench (test/lib/load.sql,
# shared with TAP 001) enqueues deposits,
# withdrawals, transfers within and across buckets (some with idempotency
# keys), disbursements, transfer_many pairs, holds posted or voided and
# two-event transactions; after a call's commit it appends the ids it got to
# a file: those are acknowledged.  A pgbench that loses its server is
# started again until the time is up.  Every 1 to 5 s (drawn from the seed)
# one fault:
#   kill9-postmaster   kill -9 of the postmaster, then start it again
#   kill9-worker       kill -9 of a bucket worker (the server reinitializes)
#   term-worker        SIGTERM of a bucket worker
#   immediate          an immediate shutdown, then start
#   hostile-settings   ALTER DATABASE SET default_transaction_read_only,
#                      lock_timeout and statement_timeout, the workers
#                      restarted into them; reset at the next fault
#   lock-legs          a session holds ledger.transactions in SHARE mode 1-3 s
#   pause              a bucket paused 1-3 s
#   checkpoint         CHECKPOINT
#   reload             ledger.batch_size and ledger.poll_interval changed and
#                      reloaded
#   long-snapshot      a REPEATABLE READ transaction held open 5-20 s
#   data-full          the data directory (a tmpfs; pg_wal is on disk) filled
#                      for 2-5 s: enqueues fail with 53100, batches fail and
#                      back off; then the filler is removed
# Then: the load stops, the settings are reset, and with no other step the
# queue must drain and the audit hold: every acknowledged event exists once,
# applied or rejected; events nobody acknowledged are at most two per client
# at each fault that cuts calls off; no account has two legs of one event and each
# applied event has the legs its kind needs; ledger_verify() finds nothing;
# the balances sum to zero; no account that may not go negative did.
#
# The faults and their times come from the seed (bash's RANDOM): a failing
# seed replays the same faults in the same order.  Prints the faults, the
# figures and "chaos: N passed, M failed"; exits non-zero on any failure.
# scripts/test.sh runs --seed 347 --seconds 60; a longer run is e.g.
# --seed $RANDOM --seconds 1800.  Run as root with the extension installed
# (it mounts a tmpfs for the data directory).
#
# LEDGER_CHAOS_DIR (default /tmp/ledger-chaos), LEDGER_CHAOS_PORT (55745).
source "$(dirname "$0")/../../scripts/common.sh"
LIB=$TOP/test/lib       # the load and the audit, shared with TAP 001
set +e

SEED=1
SECONDS_TOTAL=60
while [ $# -gt 0 ]; do
	case $1 in
	--seed) SEED=$2; shift 2 ;;
	--seconds) SECONDS_TOTAL=$2; shift 2 ;;
	*) echo "usage: $0 [--seed S] [--seconds T]" >&2; exit 2 ;;
	esac
done
DIR=${LEDGER_CHAOS_DIR:-/tmp/ledger-chaos}
PORT=${LEDGER_CHAOS_PORT:-55745}
NACCOUNTS=20        # accounts 1 .. 20, both buckets; 20 may go negative
NCLIENTS=4
FAULTS=(kill9-postmaster kill9-worker term-worker immediate hostile-settings
	lock-legs pause checkpoint reload long-snapshot data-full)
DATA_TMPFS_MB=2048  # the data directory's tmpfs, for data-full

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
expect() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1 (got '$2', wanted '$3')"; fi; }
say() { printf '[chaos %s] %s\n' "$(date +%T)" "$*"; }

# the harness's own sessions are spared the hostile settings it puts on the
# database
sql() {
	PGOPTIONS="-c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0" \
		as_pg psql -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -At "$@" 2>/dev/null
}
up() { [ "$(sql -c 'SELECT 1')" = 1 ]; }
server_ctl() { as_pg pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w -t 120 "$@" >/dev/null 2>&1; }
postmaster_pid() { head -1 "$DIR/data/postmaster.pid" 2>/dev/null; }
worker_pid() {
	sql -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker'
			 ORDER BY application_name LIMIT 1 OFFSET $1"
}

cleanup() {
	[ -n "${LOADER:-}" ] && kill "$LOADER" 2>/dev/null
	pkill -f "pgbench.*-p $PORT " 2>/dev/null
	stop_server "$DIR"
	if mountpoint -q "$DIR/data"; then
		umount "$DIR/data" 2>/dev/null || { sleep 1; umount -l "$DIR/data"; }
	fi
	return 0
}
trap cleanup EXIT

# the server, as it should be; the hostile settings and reloads undone
start() {
	up && return 0
	server_ctl start
	for _ in $(seq 1 600); do up && return 0; sleep 0.1; done
	return 1
}

reset_settings() {
	sql -c "ALTER DATABASE postgres RESET ALL" \
		-c "ALTER SYSTEM RESET ledger.batch_size" \
		-c "ALTER SYSTEM RESET ledger.poll_interval" \
		-c "SELECT pg_reload_conf()" >/dev/null
}

# ------------------------------------------------------------------ load

# pgbench until END, started again whenever it loses the server
load() {
	local end=$1 left
	while :; do
		left=$((end - $(date +%s)))
		[ "$left" -le 0 ] && break
		if up; then
			as_pg pgbench -n -h "$DIR" -p "$PORT" -U postgres -c "$NCLIENTS" -j 2 -T "$left" \
				-f "$DIR.load.sql" -D accounts="$NACCOUNTS" -D ackfile="$DIR.acked" -D phase=0 \
				postgres >>"$DIR.pgbench.log" 2>&1 || sleep 0.5
		else
			sleep 0.2
		fi
	done
}

# ---------------------------------------------------------------- faults

crashes=0
hostile=0
fault() {
	local name=$1 pid
	case $name in
	kill9-postmaster)
		pid=$(postmaster_pid)
		if [ -n "$pid" ]; then
			children=$(pgrep -P "$pid")
			kill -9 "$pid"
			# the children leave one by one; a new postmaster needs them gone
			for child in $children; do
				for _ in $(seq 1 300); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
			done
			crashes=$((crashes + 1))
		fi
		hostile=0
		start ;;
	kill9-worker)
		pid=$(worker_pid $((RANDOM % 2)))
		[ -n "$pid" ] && kill -9 "$pid" && crashes=$((crashes + 1))
		sleep 1
		start ;;
	term-worker)
		pid=$(worker_pid $((RANDOM % 2)))
		[ -n "$pid" ] && kill -TERM "$pid" ;;
	immediate)
		server_ctl stop -m immediate
		crashes=$((crashes + 1))
		start ;;
	hostile-settings)
		sql -c "ALTER DATABASE postgres SET default_transaction_read_only = on" \
			-c "ALTER DATABASE postgres SET lock_timeout = '1ms'" \
			-c "ALTER DATABASE postgres SET statement_timeout = '5ms'" \
			-c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				 WHERE backend_type = 'ledger bucket worker'" >/dev/null
		hostile=1 ;;
	lock-legs)
		sql -c "BEGIN" -c "LOCK TABLE ledger.transactions IN SHARE MODE" \
			-c "SELECT pg_sleep($((RANDOM % 3 + 1)))" -c "COMMIT" >/dev/null ;;
	pause)
		pid=$((RANDOM % 2))
		sql -c "SELECT ledger_pause($pid)" >/dev/null
		sleep $((RANDOM % 3 + 1))
		sql -c "SELECT ledger_resume($pid)" >/dev/null ;;
	checkpoint)
		sql -c "CHECKPOINT" >/dev/null ;;
	reload)
		sql -c "ALTER SYSTEM SET ledger.batch_size = $((RANDOM % 1000 + 1))" \
			-c "ALTER SYSTEM SET ledger.poll_interval = '$((RANDOM % 500 + 5))ms'" \
			-c "SELECT pg_reload_conf()" >/dev/null ;;
	long-snapshot)
		sql -c "BEGIN ISOLATION LEVEL REPEATABLE READ" -c "SELECT count(*) FROM ledger.accounts" \
			-c "SELECT pg_sleep($((RANDOM % 16 + 5)))" -c "COMMIT" >/dev/null ;;
	data-full)
		# never the real disk: only the tmpfs the run mounted
		mountpoint -q "$DIR/data" || return 0
		fallocate -l "$(df -B1 --output=avail "$DIR/data" | tail -1)" "$DIR/data/filler" 2>/dev/null ||
			cat /dev/zero >"$DIR/data/filler" 2>/dev/null
		sleep $((RANDOM % 4 + 2))
		rm -f "$DIR/data/filler" ;;
	esac
}

# ----------------------------------------------------------------- audit

audit() {
	local ids
	tr -s ' ' '\n' <"$DIR.acked" | grep -E '^[0-9]+$' >"$DIR.ids"
	chown "$PGUSER_OS" "$DIR.ids"
	sql -c "CREATE TABLE acked (id bigint)" -c "\\copy acked FROM '$DIR.ids'" >/dev/null
	sql -v ON_ERROR_STOP=1 -f - <"$LIB/audit.sql"
	sql -c "SELECT 'workers with failures counted', count(*) FROM ledger_stats WHERE failures > 0"
}

# ------------------------------------------------------------------- run

RANDOM=$SEED
say "seed $SEED, $SECONDS_TOTAL s"
stop_server "$DIR"
rm -f "$DIR.acked" "$DIR.ids" "$DIR.pgbench.log"
DATA_TMPFS_MB=$DATA_TMPFS_MB start_server "$DIR" "$PORT" "ledger.buckets = 2" "ledger.poll_interval = '100ms'" \
	"restart_after_crash = on" "max_connections = 40" \
	"max_wal_size = '64MB'" "checkpoint_timeout = '30s'" || { fail "server start"; exit 1; }
cp "$LIB/load.sql" "$DIR.load.sql"
chown "$PGUSER_OS" "$DIR.load.sql"
: >"$DIR.acked"
chown "$PGUSER_OS" "$DIR.acked"
sql -c "CREATE EXTENSION ledger" \
	-c "SELECT count(ledger_open_account(a, a = $NACCOUNTS)) FROM generate_series(1, $NACCOUNTS) a" >/dev/null
sql -c "SELECT string_agg(ledger_deposit(a, 2000)::text, ' ') FROM generate_series(1, $NACCOUNTS) a" \
	>>"$DIR.acked"

END=$(($(date +%s) + SECONDS_TOTAL))
load "$END" &
LOADER=$!
declare -A injected
while [ "$(date +%s)" -lt "$END" ]; do
	sleep $((RANDOM % 5 + 1))
	[ "$(date +%s)" -ge "$END" ] && break
	if [ "$hostile" = 1 ]; then
		reset_settings
		hostile=0
	fi
	name=${FAULTS[$((RANDOM % ${#FAULTS[@]}))]}
	say "fault: $name"
	fault "$name"
	injected[$name]=$((${injected[$name]:-0} + 1))
done
wait "$LOADER"
LOADER=
start
reset_settings
# the workers started under hostile settings keep their own; restart them so
# the run ends as it began
sql -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker'" >/dev/null

for _ in $(seq 1 1200); do
	[ "$(sql -c 'SELECT count(*) FROM ledger.queue')" = 0 ] && break
	sleep 0.1
done
expect "the queue drains, with no step taken" "$(sql -c 'SELECT count(*) FROM ledger.queue')" "0"
# a worker that failed under the faults counts again from its first pass
for _ in $(seq 1 600); do
	[ "$(sql -c 'SELECT count(*) FROM ledger_stats WHERE failures > 0 OR pid IS NULL')" = 0 ] && break
	sleep 0.1
done

result=$(audit)
want=$(printf '%s\n' 'acknowledged events missing|0' 'events recorded twice|0' \
	'events neither applied nor rejected|0' 'rejections for no known reason|0' \
	'accounts with two legs of one event|0' 'events with the wrong number of legs|0' \
	'ledger_verify() problems|0' 'sum of all balances|0' 'overdrawn legs|0' \
	'workers with failures counted|0')
expect "every acknowledged event settled once, the books balance" "$result" "$want"

acked=$(sql -c "SELECT count(DISTINCT id) FROM acked")
events=$(sql -c "SELECT count(*) FROM ledger.events")
unacked=$(sql -c "SELECT count(*) FROM ledger.events e WHERE NOT EXISTS (SELECT FROM acked a WHERE a.id = e.id)")
# A call is cut off after its commit by a crash (the server's own PANICs
# count too), or between the two calls of a hold and its post by a full
# disk or hostile settings: at most two events per client each time.
panics=$(grep -c "PANIC" "$DIR/server.log")
cuts=$((crashes + panics + ${injected[data-full]:-0} + ${injected[hostile-settings]:-0}))
bound=$((cuts * NCLIENTS * 2))
[ "$unacked" -le "$bound" ] && pass "events nobody acknowledged ($unacked) are at most two per client at the $cuts faults that cut calls off ($bound)" ||
	fail "$unacked events nobody acknowledged, more than two per client at the $cuts faults that cut calls off ($bound)"
[ "$acked" -gt 1000 ] && pass "the load was acknowledged $acked events" ||
	fail "the load was acknowledged only $acked events"

faults=""
for name in "${FAULTS[@]}"; do faults+="$name ${injected[$name]:-0}, "; done
say "faults injected: ${faults%, }"
say "events: $events, acknowledged $acked, lost 0 (checked), doubled 0 (checked)"
echo "chaos: $passed passed, $failed failed (seed $SEED)"
[ "$failed" -eq 0 ]
