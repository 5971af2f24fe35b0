#!/usr/bin/env bash
# The ledger's benchmark runner: installs what it needs, builds and installs
# the extension, starts a throwaway PostgreSQL with a durable configuration,
# runs each workload of issue 4 beside its baseline, prints one table, writes
# it as CSV and as a PNG plot, and stops the server.  Run as root on Debian 12.
#
#   bench/run.sh            full mode: the README's figures (median of 3 runs)
#   bench/run.sh --quick    small sizes, short runs, one run each (CI)
#
# Options: --no-build (use the installed extension), --statements (load
# pg_stat_statements and print the costliest statements of each phase; it
# slows everything a little), --only LIST (some of the workloads; e2e needs
# enqueue's figures).  Environment: LEDGER_BENCH_DIR (default
# /tmp/ledger-bench), LEDGER_BENCH_PORT (55620), LEDGER_BENCH_HTTP_PORT (55621).
#
# Progress goes to stderr; the report (machine, settings, table) to stdout
# and to bench/results/report.txt; the table to bench/results/results.csv and
# bench/results/results.png.
source "$(dirname "$0")/../scripts/common.sh"
shopt -s inherit_errexit

MODE=full
BUILD=1
STATEMENTS=0
ONLY=enqueue,batch,apply,e2e,balance,contrast,http
usage() {
	echo "usage: $0 [--quick] [--no-build] [--statements] [--only enqueue,batch,apply,e2e,balance,contrast,http]" >&2
	exit 2
}
while [ $# -gt 0 ]; do
	case $1 in
		--quick) MODE=quick ;;
		--no-build) BUILD=0 ;;
		--statements) STATEMENTS=1 ;;
		--only) [ $# -ge 2 ] || usage; ONLY=$2; shift ;;
		*) usage ;;
	esac
	shift
done
# want WORKLOAD: was it asked for?
want() { [[ ",$ONLY," == *",$1,"* ]]; }

DIR=${LEDGER_BENCH_DIR:-/tmp/ledger-bench}
PORT=${LEDGER_BENCH_PORT:-55620}
HTTP_PORT=${LEDGER_BENCH_HTTP_PORT:-55621}
BENCH=$TOP/bench
WL=$BENCH/workloads
RESULTS=$BENCH/results
WORK=$DIR/work				# pgbench output and logs, COPY files
RAW=$RESULTS/raw.tsv		# every measurement: key, value
CSV=$RESULTS/results.csv

ACCOUNTS=10000				# pre-opened, funded accounts
CLIENT_COUNTS="1 8 32"
BATCH=100					# transfers per ledger_transfer_many call
if [ "$MODE" = quick ]; then
	REPS=1
	DURATION=2				# seconds per pgbench run
	E2E_DURATION=3
	HTTP_DURATION=3s
	APPLY_EVENTS=30000
	DEEP_LEGS=30000
	DRAIN_TIMEOUT_MS=120000	# a queue that does not drain fails the run
else
	REPS=3
	DURATION=10
	E2E_DURATION=10
	HTTP_DURATION=10s
	APPLY_EVENTS=1000000
	DEEP_LEGS=1000000
	DRAIN_TIMEOUT_MS=600000
fi
# Disbursements write 11 legs each: a tenth as many events keeps the legs
# written (1.1x) comparable to the transfer mixes (2x).
DISBURSE_EVENTS=${LEDGER_BENCH_DISBURSE_EVENTS:-$((APPLY_EVENTS / 10))}
MIXES="uniform hot cross25 disburse"

# The durable configuration: every commit is flushed to disk.
SETTINGS=(
	"fsync = on"
	"synchronous_commit = on"
	"full_page_writes = on"
	"shared_buffers = 1GB"
	"wal_buffers = 32MB"
	"max_wal_size = 4GB"
	"min_wal_size = 1GB"
	"checkpoint_timeout = 15min"
	"max_connections = 200"
)

progress() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- server

psql_() {
	as_pg psql -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q \
		-v ON_ERROR_STOP=1 "$@"
}
# sql QUERY: the result, unaligned, fields separated by |
sql() { psql_ -At -F '|' -c "$1"; }

HTTP_PID=
STARTED=0
REPORTED=0
MACHINE=
SETTINGS_REPORT=
STATEMENTS_1=
STATEMENTS_2=
cleanup() {
	if [ -n "$HTTP_PID" ]; then
		kill "$HTTP_PID" 2>/dev/null || true
		wait "$HTTP_PID" 2>/dev/null || true
	fi
	# a failed run still reports what it measured
	if [ "$REPORTED" = 0 ] && [ -s "$RAW" ]; then
		[ "$STARTED" = 1 ] && SETTINGS_REPORT=$(settings_report 2>/dev/null || true)
		report "INCOMPLETE: the run failed (see above); these are the figures measured before it stopped" || true
	fi
	[ "$STARTED" = 1 ] && stop_server "$DIR"
	return 0
}

# One run at a time per directory: a second one (another engineer's, or the
# test suite's) waits rather than stopping and deleting this one's server.
take_lock() {
	exec 9>"$DIR.lock"
	if ! flock -n 9; then
		progress "another bench/run.sh is using $DIR; waiting for it to finish"
		flock 9
	fi
}

# start_phase BUCKETS: a fresh server with ledger.buckets = BUCKETS, set up.
start_phase() {
	BUCKETS=$1
	[ "$STARTED" = 1 ] && stop_server "$DIR"
	local extra=("${SETTINGS[@]}" "ledger.buckets = $BUCKETS")
	if [ "$STATEMENTS" = 1 ]; then
		extra+=("shared_preload_libraries = 'ledger,pg_stat_statements'"
			"pg_stat_statements.track = all" "pg_stat_statements.track_planning = on"
			"track_io_timing = on")
	fi
	progress "starting PostgreSQL on port $PORT with ledger.buckets = $BUCKETS (data in $DIR)"
	STARTED=1
	start_server "$DIR" "$PORT" "${extra[@]}"
	mkdir -p "$WORK"
	chown "$PGUSER_OS" "$WORK"
	HISTORY_BLOCK=0
	progress "opening and funding $ACCOUNTS accounts"
	psql_ -v naccounts="$ACCOUNTS" -f "$BENCH/setup.sql"
	[ "$STATEMENTS" = 1 ] && sql "CREATE EXTENSION pg_stat_statements" >/dev/null
	return 0
}

# drain [LASTS]: waits until the queue is empty; prints when it was.  Fails
# the run, showing what is left, if it is not empty in DRAIN_TIMEOUT_MS.
drain() {
	local out lasts=NULL
	[ -n "${1:-}" ] && lasts="'$1'"
	if ! out=$(sql "CALL bench.wait_drained($lasts, NULL, $DRAIN_TIMEOUT_MS)"); then
		progress "ledger.queue did not drain in $DRAIN_TIMEOUT_MS ms; its oldest entries:"
		psql_ -c "SELECT q.bucket, q.seq, q.id, q.kind, q.account_id, q.enqueued_at,
						 ledger_event_status(q.id) AS status
					FROM ledger.queue q ORDER BY q.seq LIMIT 20" >&2
		exit 1
	fi
	echo "$out"
}

# Seconds from now until the queue is empty (the backlog a run left).
wait_drained() {
	local started drained
	started=$(sql "SELECT clock_timestamp()")
	drained=$(drain)
	sql "SELECT round(extract(epoch FROM '$drained'::timestamptz - '$started'::timestamptz)::numeric, 2)"
}

# Quick mode audits the ledger after each drain: ledger_verify() must find
# nothing, and the balances must sum to zero but for the credits still on
# their way.  Either failing fails the run, after the report.
verify_ledger() {
	local problems books
	problems=$(sql "SELECT count(*) FROM ledger_verify()")
	if [ "$problems" != 0 ]; then
		progress "ledger_verify() reports $problems problems:"
		sql "SELECT * FROM ledger_verify() LIMIT 20" >&2
		AUDIT_FAILED=1
	fi
	record "verify/$BUCKETS" "$problems"
	books=$(sql "SELECT (SELECT COALESCE(sum(ledger_balance(a.id)), 0) FROM ledger.accounts a)
						+ (SELECT COALESCE(sum(q.amount), 0) FROM ledger.queue q WHERE q.kind = 'c')")
	if [ "$books" != 0 ]; then
		progress "the balances and the credits in flight sum to $books, not 0"
		AUDIT_FAILED=1
	fi
	record "books/$BUCKETS" "${books#-}"
}

# ---------------------------------------------------------------- numbers

record() { printf '%s\t%s\n' "$1" "$2" >>"$RAW"; }

# median KEY: the median of the values recorded under KEY, or nothing
median() {
	awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$RAW" | sort -g |
		awk '{ v[NR] = $1 }
			 END { if (NR == 0) exit
				   if (NR % 2) print v[(NR + 1) / 2]
				   else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# max KEY
maximum() {
	awk -F'\t' -v k="$1" '$1 == k { print $2 }' "$RAW" | sort -g | tail -1
}

# pgbench_run CLIENTS SECONDS [pgbench args...]: runs pgbench; prints its tps
pgbench_run() {
	local clients=$1 seconds=$2 out=$WORK/pgbench.out
	shift 2
	local jobs=$((clients < 2 ? 1 : 2))
	if ! as_pg pgbench -h "$DIR" -p "$PORT" -U postgres -n -M prepared \
		-c "$clients" -j "$jobs" -T "$seconds" \
		-D naccounts="$ACCOUNTS" -D buckets="$BUCKETS" "$@" postgres >"$out" 2>&1; then
		progress "pgbench failed: $*"
		tail -20 "$out" >&2
		return 1
	fi
	local failed
	failed=$(awk '/^number of failed transactions:/ { print $5 }' "$out")
	[ -n "$failed" ] && [ "$failed" != 0 ] && progress "  ($failed failed transactions in this run)"
	awk '/^tps = / { print $3; exit }' "$out"
}

# ---------------------------------------------------------------- workloads

# 1. Enqueue: single calls at 1, 8 and 32 clients, with the workers running
# (as users would run them); the baseline is a single-row INSERT.  After each
# ledger run, the backlog the workers still had to apply is drained (and
# timed) before the next run, so that runs do not overlap.
workload_enqueue() {
	local rep c w tps backlog
	for rep in $(seq 1 "$REPS"); do
		for c in $CLIENT_COUNTS; do
			for w in insert transfer deposit disburse; do
				[ "$w" = insert ] && sql "TRUNCATE bench.queue" >/dev/null
				tps=$(pgbench_run "$c" "$DURATION" -f "$WL/$w.sql")
				record "enqueue/$w/$c" "$tps"
				backlog=
				if [ "$w" != insert ]; then
					backlog=$(wait_drained)
					record "backlog/$w/$c" "$backlog"
				fi
				progress "1 enqueue  $w, $c clients, run $rep/$REPS: $tps tps${backlog:+ (backlog applied in ${backlog} s)}"
			done
		done
	done
}

# 2. Batch enqueue: BATCH transfers per call from 8 clients; the baseline is
# a BATCH-row INSERT per statement.
workload_batch() {
	local rep w tps
	for rep in $(seq 1 "$REPS"); do
		for w in insert_many transfer_many; do
			[ "$w" = insert_many ] && sql "TRUNCATE bench.queue" >/dev/null
			tps=$(pgbench_run 8 "$DURATION" -D batch="$BATCH" -f "$WL/$w.sql")
			record "batch/$w" "$(awk -v t="$tps" -v b="$BATCH" 'BEGIN { printf "%.0f", t * b }')"
			[ "$w" = transfer_many ] && wait_drained >/dev/null
			progress "2 batch    $w, 8 clients, run $rep/$REPS: $tps calls/s (x$BATCH rows)"
		done
	done
}

# load_queue MIX N: loads N pending events; sets FIRST, LAST, LASTS.  The
# workers are not woken by rows inserted so (only the API's commits wake
# them): ledger_wake_buckets() wakes them rather than their next poll.
load_queue() {
	local out
	out=$(psql_ -At -F '|' -v mix="$1" -v n="$2" -v naccounts="$ACCOUNTS" -f "$BENCH/apply_load.sql")
	IFS='|' read -r FIRST LAST LASTS <<<"$out"
	sql "SELECT ledger_wake_buckets(array(SELECT generate_series(0, $BUCKETS - 1)))" >/dev/null
}

# sync_history: bench.history gets the legs of ledger.transactions it does
# not have yet.  The legs' heap is only ever appended to, so the scan starts
# at HISTORY_BLOCK, the last block bench.history was known to hold in full
# (the last block, not the next: it may have been only partly filled).
HISTORY_BLOCK=0
last_legs_block() {
	sql "SELECT greatest(pg_relation_size('ledger.transactions')
						  / current_setting('block_size')::int - 1, 0)"
}
sync_history() {
	local block
	block=$(last_legs_block)
	sql "INSERT INTO bench.history SELECT * FROM ledger.transactions t
		  WHERE t.ctid >= '($HISTORY_BLOCK,0)'::tid ON CONFLICT DO NOTHING" >/dev/null
	HISTORY_BLOCK=$block
}

# copy_legs TABLE: milliseconds to COPY the drained legs into TABLE
copy_legs() {
	psql_ -c '\timing on' -c "COPY $1 FROM '$WORK/legs.copy'" | awk '/^Time: / { print $2 }'
}

# 3. Apply: pre-load pending events straight into the log in one
# transaction (the workers see them all at its commit), then time the drain:
# from the start of the first batch after the load (the first to apply any
# of them) until the queue was seen empty.  Two baselines COPY the very legs
# the drain wrote, into tables with ledger.transactions' columns and primary
# key: bench.history, which holds the same history as ledger.transactions
# had before the drain, and bench.legs, emptied first.  The first is the
# fair one: a leg's cost is mostly its primary-key insert, and a btree of
# tens of millions of entries takes longer per insert than one of a single
# drain's (1.4x, bench/reports/apply-1.7.txt).  Quick mode runs
# ledger_verify() after each drain; full mode does not, as it reads the
# whole ledger (tens of millions of legs by then).
workload_apply() {
	local rep mix n out start_end seconds events legs rejected copy_ms batch0
	for rep in $(seq 1 "$REPS"); do
		for mix in $MIXES; do
			n=$APPLY_EVENTS
			[ "$mix" = disburse ] && n=$DISBURSE_EVENTS
			sync_history
			sql "CHECKPOINT" >/dev/null
			batch0=$(sql "SELECT COALESCE(max(b.id), 0) FROM ledger.batches b")
			load_queue "$mix" "$n"
			out=$(drain "$LASTS")
			# the first batch after the load is the first to apply its events
			seconds=$(sql "SELECT extract(epoch FROM '$out'::timestamptz - min(b.decided_at))
							 FROM ledger.batches b WHERE b.id > $batch0")
			IFS='|' read -r events rejected <<<"$(sql "SELECT count(*),
				(SELECT count(*) FROM ledger.outcomes o
				  WHERE o.event_id BETWEEN $FIRST AND $LAST AND o.status = 'r')
				FROM ledger.event_log e WHERE e.id BETWEEN $FIRST AND $LAST AND e.credit_of IS NULL")"
			rm -f "$WORK/legs.copy"
			legs=$(sql "COPY (SELECT * FROM ledger.transactions t
							   WHERE t.event_id BETWEEN $FIRST AND $LAST) TO '$WORK/legs.copy'" >/dev/null
				   wc -l <"$WORK/legs.copy")
			[ "$rejected" != 0 ] && progress "  ($rejected of the $events events were rejected)"
			record "apply/$BUCKETS/$mix/rejected" "$rejected"
			record "apply/$BUCKETS/$mix/events" "$(awk -v e="$events" -v s="$seconds" 'BEGIN { printf "%.0f", e / s }')"
			record "apply/$BUCKETS/$mix/legs" "$(awk -v l="$legs" -v s="$seconds" 'BEGIN { printf "%.0f", l / s }')"
			record "apply/$BUCKETS/$mix/n" "$events"
			record "apply/$BUCKETS/$mix/nlegs" "$legs"

			sql "CHECKPOINT" >/dev/null
			copy_ms=$(copy_legs bench.history)
			# it holds the drain's legs now: the next sync need not read them
			HISTORY_BLOCK=$(last_legs_block)
			record "apply/$BUCKETS/$mix/copyhist" "$(awk -v l="$legs" -v ms="$copy_ms" 'BEGIN { printf "%.0f", l / (ms / 1000) }')"
			progress "3 apply    $mix, $BUCKETS bucket(s), run $rep/$REPS: $events events, $legs legs in $(printf '%.2f' "$seconds") s; COPY of the legs beside the same history: $(printf '%.2f' "$(awk -v ms="$copy_ms" 'BEGIN { print ms / 1000 }')") s"
			sql "TRUNCATE bench.legs" >/dev/null
			sql "CHECKPOINT" >/dev/null
			copy_ms=$(copy_legs bench.legs)
			record "apply/$BUCKETS/$mix/copy" "$(awk -v l="$legs" -v ms="$copy_ms" 'BEGIN { printf "%.0f", l / (ms / 1000) }')"
			progress "3 apply    $mix, $BUCKETS bucket(s), run $rep/$REPS: COPY of the legs into an empty table: $(printf '%.2f' "$(awk -v ms="$copy_ms" 'BEGIN { print ms / 1000 }')") s"
			if [ "$MODE" = quick ]; then
				verify_ledger
			fi
		done
	done
	sql "TRUNCATE bench.legs" >/dev/null
	rm -f "$WORK/legs.copy"
}

# 4. End to end: ledger_transfer at half the best enqueue rate of workload 1,
# paced by pgbench -R.  Latency per event from the tables: enqueued_at (the
# enqueue's statement start) to the applied_at of the event, and to the
# created_at of its last leg (a cross-bucket credit lands in a later batch).
# Both are batch transaction start times: the batch's own work and commit
# are not in them.  One transaction in 20 is a probe that waits with
# ledger_wait() for its transfer: its latency, seen by the client, includes
# everything.
workload_e2e() {
	local best rate rep before out p50 p99 lp50 lp99 probe
	best=0
	for c in $CLIENT_COUNTS; do
		best=$(awk -v a="$best" -v b="$(median "enqueue/transfer/$c")" 'BEGIN { print (b > a ? b : a) }')
	done
	rate=$(awk -v b="$best" 'BEGIN { printf "%d", b / 2 }')
	if [ "$rate" -lt 1 ]; then
		rate=1000
		progress "4 e2e      no enqueue figures to take half of: $rate/s"
	fi
	record "e2e/rate" "$rate"
	for rep in $(seq 1 "$REPS"); do
		before=$(sql "SELECT last_value FROM ledger.event_id_seq")
		rm -f "$WORK"/e2e.*
		pgbench_run 32 "$E2E_DURATION" -R "$rate" -l --log-prefix="$WORK/e2e" \
			-f "$WL/transfer.sql@19" -f "$WL/transfer_wait.sql@1" >/dev/null
		wait_drained >/dev/null
		out=$(sql "SELECT round(1000 * extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY e.applied_at - e.enqueued_at))::numeric, 2),
						  round(1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY e.applied_at - e.enqueued_at))::numeric, 2),
						  round(1000 * extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY l.last_leg - e.enqueued_at))::numeric, 2),
						  round(1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY l.last_leg - e.enqueued_at))::numeric, 2)
					 FROM ledger.events e
					 JOIN (SELECT t.event_id, max(t.created_at) AS last_leg FROM ledger.transactions t
							WHERE t.event_id > $before GROUP BY t.event_id) l ON l.event_id = e.id
					WHERE e.id > $before AND e.kind = 't'")
		IFS='|' read -r p50 p99 lp50 lp99 <<<"$out"
		# pgbench log: client tx latency_us script epoch epoch_us lag_us
		probe=$(cat "$WORK"/e2e.* | awk '$4 == 1 { print ($3 - $7) / 1000 }' | sort -g |
			awk '{ v[NR] = $1 } END { if (NR) printf "%.2f|%.2f|%d", v[int((NR - 1) * 0.5) + 1], v[int((NR - 1) * 0.99) + 1], NR }')
		record "e2e/applied/p50" "$p50"
		record "e2e/applied/p99" "$p99"
		record "e2e/lastleg/p50" "$lp50"
		record "e2e/lastleg/p99" "$lp99"
		IFS='|' read -r p50 p99 n <<<"$probe"
		record "e2e/probe/p50" "$p50"
		record "e2e/probe/p99" "$p99"
		progress "4 e2e      $rate/s for ${E2E_DURATION} s, run $rep/$REPS: enqueue to last leg p50 $lp50 p99 $lp99 ms; probes ($n) p50 $p50 p99 $p99 ms"
	done
}

# 5. Balance: ledger_balance() of an account with DEEP_LEGS legs against one
# with ten, beside a primary-key lookup on ledger.accounts; 8 clients.
workload_balance() {
	local deep=$((ACCOUNTS + 1)) shallow=$((ACCOUNTS + 2)) rep pk tps1 tps2 nlegs
	progress "5 balance  giving account $deep $DEEP_LEGS legs"
	load_queue deep "$DEEP_LEGS"
	drain "$LASTS" >/dev/null
	sql "VACUUM ANALYZE ledger.transactions" >/dev/null
	nlegs=$(sql "SELECT count(*) FROM ledger.transactions WHERE account_id = $deep")
	record "balance/deep/legs" "$nlegs"
	record "balance/shallow/legs" "$(sql "SELECT count(*) FROM ledger.transactions WHERE account_id = $shallow")"
	for rep in $(seq 1 "$REPS"); do
		pk=$(pgbench_run 8 "$DURATION" -D account="$shallow" -f "$WL/pk_lookup.sql")
		record "balance/pk" "$pk"
		tps1=$(pgbench_run 8 "$DURATION" -D account="$shallow" -f "$WL/balance.sql")
		record "balance/shallow" "$tps1"
		tps2=$(pgbench_run 8 "$DURATION" -D account="$deep" -f "$WL/balance.sql")
		record "balance/deep" "$tps2"
		progress "5 balance  run $rep/$REPS: primary-key lookup $pk, ledger_balance with 10 legs $tps1, with $nlegs legs $tps2 calls/s"
	done
}

# 6. Contrast: the conventional row-locking ledger (bench.accounts) against
# ledger_transfer, uniform and with one hot payer, 32 clients.  For the
# ledger, also enqueue + apply: the run's events over the time from the
# run's start until the workers had applied them all.
workload_contrast() {
	local rep kind rowlock tps t0 t1 events before
	for rep in $(seq 1 "$REPS"); do
		for kind in uniform hot; do
			rowlock=$(pgbench_run 32 "$DURATION" --max-tries=10 -f "$WL/rowlock_$kind.sql")
			record "contrast/rowlock/$kind" "$rowlock"
			local script=transfer.sql
			[ "$kind" = hot ] && script=transfer_hot.sql
			before=$(sql "SELECT last_value FROM ledger.event_id_seq")
			t0=$(date +%s.%N)
			tps=$(pgbench_run 32 "$DURATION" -f "$WL/$script")
			wait_drained >/dev/null
			t1=$(date +%s.%N)
			events=$(sql "SELECT count(*) FROM ledger.events e WHERE e.id > $before")
			record "contrast/ledger/$kind" "$tps"
			record "contrast/applied/$kind" "$(awk -v e="$events" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", e / (b - a) }')"
			progress "6 contrast $kind, 32 clients, run $rep/$REPS: row-locking $rowlock tps, ledger_transfer $tps tps, enqueue + apply $(tail -1 "$RAW" | cut -f2)/s"
		done
	done
}

# 7. HTTP: the endpoint of bench/http (another part of issue 4), if built.
# Debian's "bombardier" package is a game, not the HTTP load generator the
# issue names, so the same load (100 connections, POST /transfer/test) is
# driven with Debian's wrk.
workload_http() {
	local bin=$BENCH/http/ledger-http
	if [ ! -x "$bin" ] && [ -f "$BENCH/http/Makefile" ]; then
		progress "7 http     building bench/http"
		make -C "$BENCH/http" -s >/dev/null 2>&1 || true
	fi
	if [ ! -x "$bin" ]; then
		HTTP_NOTE="skipped: bench/http/ledger-http is not built"
		progress "7 http     $HTTP_NOTE"
		return 0
	fi
	"$bin" --port "$HTTP_PORT" --pool 4 --test-accounts "$ACCOUNTS" \
		--conninfo "host=$DIR port=$PORT user=postgres dbname=postgres" \
		>"$WORK/http.log" 2>&1 &
	HTTP_PID=$!
	local i
	for i in $(seq 1 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && break
		sleep 0.1
	done
	cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = ""
wrk.headers["Content-Type"] = "application/json"
LUA
	local rep out rps p50 p99 non2xx
	for rep in $(seq 1 "$REPS"); do
		out=$(wrk -t 2 -c 100 -d "$HTTP_DURATION" --latency -s "$WORK/post.lua" \
			"http://127.0.0.1:$HTTP_PORT/transfer/test" 2>&1) || true
		echo "$out" >"$WORK/wrk.out"
		rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
		p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
		p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
		non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
		record "http/rps" "${rps:-0}"
		record "http/p50" "$(to_ms "$p50")"
		record "http/p99" "$(to_ms "$p99")"
		[ -n "$non2xx" ] && HTTP_NOTE="$non2xx non-2xx responses"
		progress "7 http     run $rep/$REPS: ${rps:-?} requests/s, p50 $p50, p99 $p99${non2xx:+, $non2xx non-2xx}"
		wait_drained >/dev/null
	done
	kill "$HTTP_PID" 2>/dev/null || true
	wait "$HTTP_PID" 2>/dev/null || true
	HTTP_PID=
}

# wrk prints latencies as 1.23ms, 456.00us or 1.02s
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
		else if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
		else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 } }'
}

statements_report() {
	[ "$STATEMENTS" = 1 ] || return 0
	echo
	echo "pg_stat_statements, ledger.buckets = $BUCKETS: the costliest statements (nested included)"
	psql_ -c "SELECT round(total_exec_time::numeric) AS total_ms, calls, plans,
					 round(mean_exec_time::numeric, 3) AS mean_ms,
					 round(mean_plan_time::numeric, 3) AS plan_ms,
					 round(100 * total_exec_time / sum(total_exec_time) OVER ()) AS pct,
					 left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
				FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15"
}

# ---------------------------------------------------------------- report

machine_report() {
	local dev disk
	dev=$(df --output=source "$DIR" | tail -1)
	disk=$(lsblk -dno NAME,ROTA,TRAN,MODEL "$dev" 2>/dev/null |
		awk '{ printf "%s, rotational flag %s%s", $1, $2, (NF > 2 ? ", " substr($0, index($0, $3)) : "") }')
	echo "machine"
	echo "  cpus:        $(nproc) ($(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'))"
	echo "  memory:      $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "  disk:        $dev, $(findmnt -no FSTYPE -T "$DIR") (${disk:-type unknown}; virtual disks often claim to be rotational)"
	echo "  kernel:      $(uname -r)"
	echo "  load avg:    $(cut -d' ' -f1-3 /proc/loadavg) at start (shared machine: other work runs beside)"
	echo "  postgresql:  $(sql "SELECT version()")"
	echo "  mode:        $MODE ($REPS run(s) per figure, median; pgbench runs of ${DURATION} s; $ACCOUNTS accounts)"
}

settings_report() {
	echo
	echo "server settings not at their defaults (ledger.buckets = 1 for the 1-bucket apply runs)"
	sql "SELECT '  ' || rpad(name, 28) || current_setting(name)
		   FROM pg_settings
		  WHERE source NOT IN ('default', 'override', 'client', 'session')
		  ORDER BY name"
}

ROWS=()
# row WORKLOAD FIGURE METRIC VALUE BASELINE BASELINE_VALUE GOAL GOAL_TEST [NOTE]
# GOAL_TEST is an awk condition on v (value), b (baseline value), r (ratio).
row() {
	local workload=$1 figure=$2 metric=$3 value=$4 baseline=$5 bvalue=$6 goal=$7 test=$8 note=${9:-}
	local ratio met names=(- enqueue batch apply e2e balance contrast http)
	want "${names[${workload%% *}]}" || return 0
	ratio=$(awk -v v="$value" -v b="$bvalue" 'BEGIN { if (v != "" && b != "" && b + 0 > 0) printf "%.2f", v / b }')
	if [ -z "$test" ]; then
		met=-
	elif [ -z "$value" ]; then
		met=n/a
	else
		met=$(awk -v v="$value" -v b="$bvalue" -v r="$ratio" "BEGIN { print (($test) ? \"yes\" : \"NO\") }")
	fi
	ROWS+=("$workload|$figure|$metric|$value|$baseline|$bvalue|$ratio|$goal|$met|$note")
}

fmt() { awk -v v="$1" 'BEGIN { if (v == "") print ""; else if (v >= 100) printf "%.0f", v; else printf "%.2f", v }'; }

build_rows() {
	local c w kind mix b label
	for w in transfer deposit disburse; do
		for c in $CLIENT_COUNTS; do
			local goal="" test=""
			[ "$c" = 32 ] && { goal=">= 0.90x baseline"; test="r >= 0.90"; }
			row "1 enqueue" "ledger_$w, $c clients" "calls/s" "$(fmt "$(median "enqueue/$w/$c")")" \
				"single-row INSERT, $c clients" "$(fmt "$(median "enqueue/insert/$c")")" "$goal" "$test" \
				"backlog applied $(median "backlog/$w/$c") s after the run"
		done
	done
	row "2 batch" "ledger_transfer_many, $BATCH per call, 8 clients" "transfers/s" "$(fmt "$(median batch/transfer_many)")" \
		"$BATCH-row INSERT ... SELECT, 8 clients" "$(fmt "$(median batch/insert_many)")" \
		">= 100000/s and >= 0.50x baseline" "v >= 100000 && r >= 0.5"
	for b in 1 2; do
		for mix in $MIXES; do
			case $mix in
				uniform) label="uniform transfers" ;;
				hot) label="hot payer (half from one account)" ;;
				cross25) label="25% of payees in another bucket" ;;
				disburse) label="10-payee disbursements" ;;
			esac
			[ "$b" = 1 ] && [ "$mix" = cross25 ] && label="$label (none with 1 bucket)"
			local goal="" test=""
			if [ "$b" = 2 ] && [ "$mix" != disburse ]; then
				goal=">= 200000 transfers/s"
				test="v >= 200000"
			fi
			row "3 apply" "$label, $b bucket(s), $(median "apply/$b/$mix/n") events" "events/s" \
				"$(fmt "$(median "apply/$b/$mix/events")")" "" "" "$goal" "$test" \
				"rejected: $(maximum "apply/$b/$mix/rejected") (most in one run)"
			row "3 apply" "$label, $b bucket(s), $(median "apply/$b/$mix/nlegs") legs" "legs/s" \
				"$(fmt "$(median "apply/$b/$mix/legs")")" "COPY of the same legs beside the same history" \
				"$(fmt "$(median "apply/$b/$mix/copyhist")")" ">= 1.0x baseline" "r >= 1.0"
			row "3 apply" "$label, $b bucket(s), $(median "apply/$b/$mix/nlegs") legs" "legs/s" \
				"$(fmt "$(median "apply/$b/$mix/legs")")" "COPY of the same legs into an empty table" \
				"$(fmt "$(median "apply/$b/$mix/copy")")" "" ""
		done
		if [ "$MODE" = quick ]; then
			row "3 apply" "ledger_verify() after each drain, $b bucket(s)" "problems" "$(maximum "verify/$b")" "" "" "0" "v == 0"
			row "3 apply" "balances + credits in flight after each drain, $b bucket(s)" "|sum|" "$(maximum "books/$b")" "" "" "0" "v == 0"
		else
			row "3 apply" "ledger_verify(), $b bucket(s)" "problems" "" "" "" "" "" "run in --quick mode only: it reads the whole ledger"
		fi
	done
	local rate
	rate=$(median e2e/rate)
	row "4 end to end" "ledger_transfer at $rate/s, 32 clients: enqueue to last leg, p50" "ms" "$(median e2e/lastleg/p50)" "" "" "" "" \
		"from tables; excludes the applying batch's own work and commit"
	row "4 end to end" "ledger_transfer at $rate/s, 32 clients: enqueue to last leg, p99" "ms" "$(median e2e/lastleg/p99)" "" "" "<= 20 ms" "v <= 20" \
		"applied_at (payer's batch) p99: $(median e2e/applied/p99) ms"
	row "4 end to end" "probe: transfer then ledger_wait, seen by the client, p50" "ms" "$(median e2e/probe/p50)" "" "" "" "" \
		"1 transaction in 20; includes everything"
	row "4 end to end" "probe: transfer then ledger_wait, seen by the client, p99" "ms" "$(median e2e/probe/p99)" "" "" "<= 20 ms" "v <= 20"
	row "5 balance" "ledger_balance, $(median balance/shallow/legs) legs, 8 clients" "calls/s" "$(fmt "$(median balance/shallow)")" \
		"primary-key lookup, 8 clients" "$(fmt "$(median balance/pk)")" "" ""
	row "5 balance" "ledger_balance, $(median balance/deep/legs) legs, 8 clients" "calls/s" "$(fmt "$(median balance/deep)")" \
		"ledger_balance, $(median balance/shallow/legs) legs" "$(fmt "$(median balance/shallow)")" \
		"cost <= 1.5x (ratio >= 0.67)" "r >= 1 / 1.5"
	for kind in uniform hot; do
		label="uniform"
		[ "$kind" = hot ] && label="one hot payer"
		row "6 contrast" "ledger_transfer enqueue, $label, 32 clients" "transfers/s" "$(fmt "$(median "contrast/ledger/$kind")")" \
			"row-locking UPDATEs, $label" "$(fmt "$(median "contrast/rowlock/$kind")")" "> 1x" "r > 1"
		row "6 contrast" "ledger_transfer enqueue + apply, $label, 32 clients" "transfers/s" "$(fmt "$(median "contrast/applied/$kind")")" \
			"row-locking UPDATEs, $label" "$(fmt "$(median "contrast/rowlock/$kind")")" "> 1x" "r > 1" \
			"events / (run + time to apply the backlog)"
	done
	if [ -n "$(median http/rps)" ]; then
		row "7 http" "POST /transfer/test, 100 connections (wrk)" "requests/s" "$(fmt "$(median http/rps)")" \
			"pgbench ledger_transfer, 32 clients" "$(fmt "$(median enqueue/transfer/32)")" ">= 20000/s" "v >= 20000" "$HTTP_NOTE"
		row "7 http" "POST /transfer/test latency p50" "ms" "$(median http/p50)" "" "" "" ""
		row "7 http" "POST /transfer/test latency p99" "ms" "$(median http/p99)" "" "" "<= 20 ms" "v <= 20"
	else
		row "7 http" "POST /transfer/test" "requests/s" "" "" "" ">= 20000/s" "v >= 20000" "$HTTP_NOTE"
	fi
}

print_table() {
	echo
	echo "results ($MODE mode; ratio = figure / baseline)"
	{
		echo "workload|figure|metric|value|baseline|baseline value|ratio|goal|met|note"
		printf '%s\n' "${ROWS[@]}"
	} | awk -F'|' 'BEGIN { OFS = "|" } { for (i = 1; i <= NF; i++) if ($i == "") $i = "-"; print }' |
		column -t -s '|' -o '  '
}

write_csv() {
	{
		echo "workload|figure|metric|value|baseline|baseline_value|ratio|goal|met|note"
		printf '%s\n' "${ROWS[@]}"
	} | awk -F'|' '{ line = ""
					  for (i = 1; i <= NF; i++) {
						  f = $i; gsub(/"/, "\"\"", f)
						  line = line (i > 1 ? "," : "") (f ~ /[",]/ ? "\"" f "\"" : f) }
					  print line }' >"$CSV"
}

plot() {
	# the rows with a baseline: figure and baseline (log scale), and the ratio
	printf '%s\n' "${ROWS[@]}" |
		awk -F'|' '$4 != "" && $6 != "" {
			label = substr($1, 1, 1) ": " $2
			gsub(/ clients/, "c", label); gsub(/"/, "", label)
			if (length(label) > 60) label = substr(label, 1, 58) ".."
			printf "\"%s\"\t%s\t%s\t%s\n", label, $4, $6, $7 }' >"$RESULTS/plot.dat"
	gnuplot -e "datafile='$RESULTS/plot.dat'; outfile='$RESULTS/results.png'; subtitle='$MODE mode, $(nproc) cpus, $(date +%F)'" \
		"$BENCH/plot.gp"
}

# report [NOTE]: the table as CSV and plot, and the whole report
report() {
	REPORTED=1
	build_rows
	write_csv
	plot
	{
		[ -n "${1:-}" ] && printf '\n%s\n\n' "$1"
		[ -n "$MACHINE" ] && echo "$MACHINE"
		[ -n "$SETTINGS_REPORT" ] && echo "$SETTINGS_REPORT"
		print_table
		[ -n "$STATEMENTS_1$STATEMENTS_2" ] && printf '%s\n%s\n' "$STATEMENTS_1" "$STATEMENTS_2"
		echo
		echo "command: bench/run.sh$([ "$MODE" = quick ] && echo " --quick") (took ${SECONDS} s); CSV: bench/results/results.csv, plot: bench/results/results.png"
	} | tee "$RESULTS/report.txt"
}

# ---------------------------------------------------------------- main

take_lock
need_packages gnuplot-nox wrk postgresql-15 postgresql-client-15
if [ "$BUILD" = 1 ]; then
	build_dependencies
	build_and_install
	give_tree_to_postgres
fi
mkdir -p "$RESULTS"
: >"$RAW"
HTTP_NOTE=
AUDIT_FAILED=0
trap cleanup EXIT
SECONDS=0

# Phase 1: one bucket, for the apply workload only.
if want apply; then
	start_phase 1
	workload_apply
	STATEMENTS_1=$(statements_report)
fi

# Phase 2: two buckets (the default), every workload.
start_phase 2
MACHINE=$(machine_report)
want apply && workload_apply
want enqueue && workload_enqueue
want batch && workload_batch
want e2e && workload_e2e
want balance && workload_balance
want contrast && workload_contrast
want http && workload_http
SETTINGS_REPORT=$(settings_report)
STATEMENTS_2=$(statements_report)
stop_server "$DIR"
STARTED=0
report
if [ "$AUDIT_FAILED" = 1 ]; then
	echo "the ledger failed its audit after a drain (see above): the run fails" >&2
	exit 1
fi
