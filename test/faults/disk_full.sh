#!/usr/bin/env bash
# Faults beyond kill -9: a full disk, under a load of every kind of event.
#
# A. pg_wal full.  The server's WAL is on a small tmpfs this script mounts,
#    with a filler file taking all of it but a few segments (of 1 MB, so it
#    fills in seconds) and max_wal_size far above it, so no checkpoint
#    recycles a segment in time.  pgbench enqueues deposits,
#    withdrawals, transfers, disbursements, transfer_many pairs, holds with
#    their posts and voids, each with an idempotency key of its own, until
#    PostgreSQL PANICs on a WAL segment it cannot create.  Then the filler
#    is removed, PostgreSQL started again (the one manual step), and the
#    ledger must carry on by itself: the queue drains, and the audit holds.
#
# B. The data directory full.  The data directory is on a tmpfs, the WAL on
#    the ordinary disk, so relation files cannot extend.  Both buckets are
#    paused for two seconds under load, so that a backlog is queued when the
#    disk fills (a filler file takes all that is left) and they are resumed.
#    Then, for 30 s of full disk under load: enqueues fail with a clear error
#    (SQLSTATE 53100, "could not extend file ... No space left on device"),
#    the server stays up, each worker's batch fails and is retried with
#    backoff (ledger_stats: failures, last_error, 'retrying after an error'),
#    and the workers write few lines to the log.  The filler is removed and,
#    with no other step, everything drains within a bounded time; the audit
#    holds.
#
# The audit, after each: every acknowledged event (a call that returned an
# id) exists once, applied or rejected, and its idempotency key names it;
# nothing else was enqueued but the commits in flight at the PANIC (none in
# B); no account has two legs of one event and each event has the legs its
# kind needs; ledger_verify() finds nothing; the balances sum to zero and
# ledger_node_money() has external + customers + in_flight = 0 with nothing
# in flight; nothing is pending; both workers run with no failure counted.
#
# Run as root on Debian 12 with the extension installed (it mounts tmpfs).
# Prints PASS/FAIL per check, figures as "info" lines, and a summary line
# "disk full: N passed, M failed"; exits non-zero on any failure.  About a
# minute and a half (at most about four, if the workers' backoff is at its
# longest when space comes back).  LEDGER_DISK_FULL_KEEP=1 keeps the logs
# (they are kept anyway after a failure); LEDGER_DISK_FULL_PHASES="A" or "B"
# runs one phase.
#
#   test/faults/disk_full.sh
#
# LEDGER_DISK_FULL_DIR (default /tmp/ledger-faults/disk_full) and
# LEDGER_DISK_FULL_PORT (default 55731: A; B on the next port).
source "$(dirname "$0")/../../scripts/common.sh"
set +e

ROOT=${LEDGER_DISK_FULL_DIR:-/tmp/ledger-faults/disk_full}
PORT_A=${LEDGER_DISK_FULL_PORT:-55731}
PORT_B=$((PORT_A + 1))
NACCOUNTS=20        # accounts 1 .. 20, both buckets; 20 may go negative
NCLIENTS=4
WAL_FS_MB=64        # A: the tmpfs of pg_wal
WAL_SEG_MB=1        # A: WAL segments of 1 MB, so that filling takes seconds
WAL_FREE_MB=4       # A: what the filler leaves of the tmpfs: 4 more segments
DATA_FS_MB=256      # B: the tmpfs of the data directory
FULL_SECONDS=30     # B: how long the data directory stays full
DRAIN_SECONDS=120   # B: how long the drain may take once space is back
MAX_WORKER_ERRORS=4 # B: most errors per worker in FULL_SECONDS (3 with the backoff, 6 without)

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$1"; }
fail() {
	failed=$((failed + 1))
	printf 'FAIL %s\n' "$1"
	[ -n "${2-}" ] && printf '     %s\n' "$2"
	return 0
}
info() { printf 'info %s\n' "$*"; }
# check DESCRIPTION WANT GOT
check() { [ "$3" = "$2" ] && pass "$1" || fail "$1" "expected '$2', got '$3'"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# State of the phase being run, for the helpers and the cleanup.
DIR=
DATA=
PORT=
MOUNTS=()
SERVERS=()
LOAD_PID=

cleanup() {
	[ -n "$LOAD_PID" ] && kill -- -"$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null
	local d m
	for d in "${SERVERS[@]}"; do
		[ -f "$d/postmaster.pid" ] && as_pg pg_ctl -D "$d" -m immediate -w -t 30 stop >/dev/null 2>&1
	done
	for m in "${MOUNTS[@]}"; do
		mountpoint -q "$m" || continue
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			umount "$m" 2>/dev/null && break
			sleep 0.5
		done
		mountpoint -q "$m" && umount -l "$m"
	done
	# keep the logs of a failed run
	[ "$failed" -eq 0 ] && [ -z "${LEDGER_DISK_FULL_KEEP-}" ] && rm -rf "$ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

summary() {
	echo
	echo "disk full: $passed passed, $failed failed"
	[ "$failed" -eq 0 ]
}

# What an earlier run that was killed may have left.
for d in "$ROOT"/A/data "$ROOT"/B/datafs/data; do
	[ -f "$d/postmaster.pid" ] && as_pg pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1
done
for old in "$ROOT"/A/walfs "$ROOT"/B/datafs; do
	mountpoint -q "$old" && umount "$old"
done
rm -rf "$ROOT"
mkdir -p "$ROOT"
chown "$PGUSER_OS" "$ROOT"

sql() { as_pg psql -h "$DIR" -p "$PORT" -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@" 2>&1; }
running() { as_pg pg_ctl -D "$DATA" status >/dev/null 2>&1; }
start_pg() { as_pg pg_ctl -D "$DATA" -l "$DIR/server.log" -w -t 60 start >/dev/null; }
log_size() { stat -c %s "$DIR/server.log"; }
# log_since OFFSET [END]: the server log from byte OFFSET on (to END)
log_since() {
	if [ -n "${2-}" ]; then
		tail -c +"$(($1 + 1))" "$DIR/server.log" | head -c "$(($2 - $1))"
	else
		tail -c +"$(($1 + 1))" "$DIR/server.log"
	fi
}

# mount_tmpfs PATH MB
mount_tmpfs() {
	mkdir -p "$1"
	mount -t tmpfs -o "size=${2}m,mode=0700" tmpfs "$1" || return 1
	MOUNTS+=("$1")
	chown "$PGUSER_OS" "$1"
}

# init_server [initdb options...]: a cluster in $DATA, configured for $PORT.
init_server() {
	as_pg initdb -D "$DATA" -A trust -U postgres "$@" >"$DIR/initdb.log" 2>&1 || {
		cat "$DIR/initdb.log"
		return 1
	}
	SERVERS+=("$DATA")
	cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
log_line_prefix = '%m [%p] %b '
EOF
}

# The load: each pgbench transaction is one call (two for a hold and its
# post or void), each with a key of its own: k<run>-<client>-<n>, n counting
# the client's transactions.  After a call returns, its event ids are
# appended to the ack file as "run client n kind ids...".
LOAD_SQL=$ROOT/load.sql
cat >"$LOAD_SQL" <<'EOS'
\set n :n + 1
\set p random(1, :accounts)
\set k random(0, :accounts - 3)
\set q 1 + (:p + :k) % :accounts
\set r 1 + (:p + :k + 1) % :accounts
\set a random(1, 300)
\set b random(1, 300)
\set op random(1, 16)
\if :op <= 3
SELECT ledger_deposit(:p, :a + 200, 'k' || :run || '-' || :client_id || '-' || :n) AS id \gset
\shell echo :run :client_id :n d :id >> :ackfile
\elif :op <= 4
SELECT ledger_withdraw(:p, 20 * :a, 'k' || :run || '-' || :client_id || '-' || :n) AS id \gset
\shell echo :run :client_id :n w :id >> :ackfile
\elif :op <= 8
SELECT ledger_transfer(:p, :q, :a, 'k' || :run || '-' || :client_id || '-' || :n) AS id \gset
\shell echo :run :client_id :n t :id >> :ackfile
\elif :op <= 11
SELECT ledger_disburse(:p, ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[], 'k' || :run || '-' || :client_id || '-' || :n, jsonb_build_object('client', :client_id, 'n', :n)) AS id \gset
\shell echo :run :client_id :n s :id >> :ackfile
\elif :op <= 13
SELECT array_to_string(ledger_transfer_many(ARRAY[:p, :q]::bigint[], ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[], ARRAY['k' || :run || '-' || :client_id || '-' || :n || '-1', 'k' || :run || '-' || :client_id || '-' || :n || '-2']), ' ') AS ids \gset
\shell echo :run :client_id :n m :ids >> :ackfile
\elif :op <= 15
SELECT ledger_hold(:p, :q, 10 * :a, NULL, 'k' || :run || '-' || :client_id || '-' || :n || '-h') AS id \gset
\shell echo :run :client_id :n h :id >> :ackfile
SELECT ledger_post(:id, NULL, 'k' || :run || '-' || :client_id || '-' || :n || '-p') AS id2 \gset
\shell echo :run :client_id :n p :id2 >> :ackfile
\else
SELECT ledger_hold(:p, :q, 10 * :a, NULL, 'k' || :run || '-' || :client_id || '-' || :n || '-h') AS id \gset
\shell echo :run :client_id :n h :id >> :ackfile
SELECT ledger_void(:id, 'k' || :run || '-' || :client_id || '-' || :n || '-v') AS id2 \gset
\shell echo :run :client_id :n v :id2 >> :ackfile
\endif
EOS

# pgbench_run RUN SECONDS ACKFILE LOGFILE: one pgbench run, in the foreground
pgbench_run() {
	as_pg pgbench -n -h "$DIR" -p "$PORT" -c "$NCLIENTS" -j 2 -T "$2" -f "$LOAD_SQL" \
		-D accounts="$NACCOUNTS" -D run="$1" -D n=0 -D ackfile="$3" postgres >>"$4" 2>&1
}

# start_load_loop FIRST-RUN: pgbench runs of 5 s one after the other, until
# $DIR/stop-load exists, in a process group of their own: a run whose
# clients all failed is followed by the next.  Acks in $DIR/acks.
start_load_loop() {
	rm -f "$DIR/stop-load"
	cat >"$DIR/load-loop.sh" <<EOF
source "$TOP/scripts/common.sh"
set +e
run=$1
while [ ! -e "$DIR/stop-load" ]; do
	as_pg pgbench -n -h "$DIR" -p "$PORT" -c "$NCLIENTS" -j 2 -T 5 -f "$LOAD_SQL" \\
		-D accounts="$NACCOUNTS" -D run=\$run -D n=0 -D ackfile="$DIR/acks" postgres \\
		>>"$DIR/pgbench.log" 2>&1
	run=\$((run + 1))
	sleep 0.5
done
EOF
	setsid bash "$DIR/load-loop.sh" &
	LOAD_PID=$!
}

stop_load_loop() {
	touch "$DIR/stop-load"
	for _ in $(seq 1 150); do
		kill -0 "$LOAD_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -- -"$LOAD_PID" 2>/dev/null
	wait "$LOAD_PID" 2>/dev/null
	LOAD_PID=
}

# acks_count: the calls acknowledged so far
acks_count() { [ -f "$DIR/acks" ] && wc -l <"$DIR/acks" || echo 0; }

# wait_for_acks COUNT SECONDS
wait_for_acks() {
	local end=$((SECONDS + $2))
	while [ "$SECONDS" -lt "$end" ]; do
		[ "$(acks_count)" -ge "$1" ] && return 0
		sleep 0.2
	done
	return 1
}

# The ledger of the phase: the extension, accounts 1 .. NACCOUNTS, each
# funded by a deposit with a key (acknowledged in $DIR/acked.tsv as "key id").
setup_ledger() {
	local out
	out=$(sql -c "CREATE EXTENSION ledger" \
		-c "SELECT count(ledger_open_account(a, a = $NACCOUNTS)) FROM generate_series(1, $NACCOUNTS) a" \
		-c "SELECT 'setup-' || a, ledger_deposit(a, 5000, 'setup-' || a) FROM generate_series(1, $NACCOUNTS) a" \
		-F ' ')
	if [ "$(printf '%s\n' "$out" | grep -c '^setup-[0-9]* [0-9][0-9]*$')" -ne "$NACCOUNTS" ]; then
		fail "$PHASE: the ledger is set up" "$out"
		return 1
	fi
	printf '%s\n' "$out" | grep '^setup-' >"$DIR/acked.tsv"
	pass "$PHASE: the ledger is set up ($NACCOUNTS accounts funded)"
}

workers_running() {
	sql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker'"
}

# wait_for_drain SECONDS: until nothing is queued; prints the seconds taken
wait_for_drain() {
	local start end
	start=$(now)
	end=$((SECONDS + $1))
	while [ "$SECONDS" -lt "$end" ]; do
		[ "$(sql -c 'SELECT count(*) FROM ledger.queue')" = 0 ] && { since "$start"; return 0; }
		sleep 0.2
	done
	return 1
}

# The acknowledged calls, from the ack file, as "key id" lines.
collect_acks() {
	local bad
	bad=$(awk 'NF < 5 || ($4 == "m" && NF != 6) { print }
			   { for (i = 5; i <= NF; i++) if ($i !~ /^[0-9]+$/) { print; break } }' "$DIR/acks")
	[ -z "$bad" ] && pass "$PHASE: every ack line names its event ids" ||
		fail "$PHASE: every ack line names its event ids" "$(printf '%s\n' "$bad" | head -5)"
	awk 'NF >= 5 {
			k = "k" $1 "-" $2 "-" $3
			if ($4 == "m") { for (i = 5; i <= NF; i++) print k "-" (i - 4), $i }
			else if ($4 == "h" || $4 == "p" || $4 == "v") print k "-" $4, $5
			else print k, $5
		 }' "$DIR/acks" | grep -E '^[^ ]+ [0-9]+$' >>"$DIR/acked.tsv"
	chown "$PGUSER_OS" "$DIR/acked.tsv"
}

# audit MAX-UNACKNOWLEDGED
audit() {
	local max_unacked=$1 result want n_acked
	n_acked=$(wc -l <"$DIR/acked.tsv")
	result=$(sql -F '|' <<EOF
CREATE TEMP TABLE acked (key text, id bigint);
\copy acked FROM '$DIR/acked.tsv' WITH (DELIMITER ' ')
ANALYZE acked;
CREATE TEMP TABLE legs AS
	SELECT event_id, account_id, count(*) AS n FROM ledger.transactions GROUP BY event_id, account_id;
CREATE TEMP TABLE ev AS SELECT id, kind, status, reason, to_accounts FROM ledger.events;
SELECT 'acknowledged events missing', count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM ev WHERE ev.id = a.id)
UNION ALL
SELECT 'events acknowledged twice', count(*) - count(DISTINCT id) FROM acked
UNION ALL
SELECT 'keys not naming their acknowledged event', count(*)
  FROM acked a LEFT JOIN ledger.idempotency i ON i.key = a.key AND i.role = 'postgres'::regrole
 WHERE i.event_id IS DISTINCT FROM a.id
UNION ALL
SELECT 'events recorded twice', count(*) - count(DISTINCT id) FROM ev
UNION ALL
SELECT 'events neither applied nor rejected', count(*) FROM ev WHERE status NOT IN ('a', 'r')
UNION ALL
SELECT 'rejections for no known reason', count(*)
  FROM ev WHERE status = 'r' AND reason NOT IN ('insufficient_funds', 'hold_rejected')
UNION ALL
SELECT 'accounts with two legs of one event', count(*) FROM legs WHERE n > 1
UNION ALL
SELECT 'events with the wrong number of legs', count(*)
  FROM ev LEFT JOIN (SELECT event_id, sum(n) AS n FROM legs GROUP BY event_id) l ON l.event_id = ev.id
 WHERE COALESCE(l.n, 0) <> CASE WHEN ev.status = 'r' OR ev.kind IN ('h', 'v') THEN 0
								WHEN ev.kind = 's' THEN 1 + cardinality(ev.to_accounts)
								ELSE 2 END
UNION ALL
SELECT 'legs of no event', count(*) FROM legs WHERE NOT EXISTS (SELECT 1 FROM ev WHERE ev.id = legs.event_id)
UNION ALL
SELECT 'ledger_verify() problems', count(*) FROM ledger_verify()
UNION ALL
SELECT 'sum of all balances', COALESCE(sum(ledger_balance(id)), 0) FROM ledger.accounts
UNION ALL
SELECT 'overdrawn legs', count(*)
  FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
 WHERE NOT a.allow_negative AND t.balance_after < 0
UNION ALL
SELECT 'currencies whose money does not sum to zero', count(*)
  FROM ledger_node_money() WHERE external + customers + in_flight <> 0
UNION ALL
SELECT 'money in flight', COALESCE(sum(abs(in_flight)), 0) FROM ledger_node_money()
UNION ALL
SELECT 'entries queued', count(*) FROM ledger.queue
UNION ALL
SELECT 'failures counted in ledger_stats', COALESCE(sum(failures), 0) FROM ledger_stats;
SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.id = ev.id)),
	   count(*) FILTER (WHERE status = 'r'), string_agg(DISTINCT kind::text, '' ORDER BY kind::text)
  FROM ev;
EOF
)
	want="acknowledged events missing|0
events acknowledged twice|0
keys not naming their acknowledged event|0
events recorded twice|0
events neither applied nor rejected|0
rejections for no known reason|0
accounts with two legs of one event|0
events with the wrong number of legs|0
legs of no event|0
ledger_verify() problems|0
sum of all balances|0
overdrawn legs|0
currencies whose money does not sum to zero|0
money in flight|0
entries queued|0
failures counted in ledger_stats|0"
	local got_checks
	got_checks=$(printf '%s\n' "$result" | head -16)
	if [ "$got_checks" = "$want" ]; then
		pass "$PHASE: every acknowledged event settled once, its key names it, the books balance, nothing pending"
	else
		fail "$PHASE: every acknowledged event settled once, its key names it, the books balance, nothing pending" \
			"$(diff <(printf '%s\n' "$want") <(printf '%s\n' "$got_checks") | grep '^[<>]' | tr '\n' ';')"
	fi
	local events unacked rejected kinds
	IFS='|' read -r events unacked rejected kinds <<<"$(printf '%s\n' "$result" | sed -n 17p)"
	info "$PHASE: $n_acked events acknowledged; $events events in the ledger ($rejected rejected," \
		"kinds $kinds); $unacked not acknowledged"
	check "$PHASE: every kind of event was enqueued (d p s t v w h)" "dhpstvw" "$kinds"
	if [[ "$unacked" =~ ^[0-9]+$ ]] && [ "$unacked" -le "$max_unacked" ]; then
		pass "$PHASE: events not acknowledged: $unacked (at most $max_unacked)"
	else
		fail "$PHASE: events not acknowledged: at most $max_unacked" "got '$unacked'"
	fi
}

###########################################################################
# A. pg_wal full
###########################################################################
PHASE=A
DIR=$ROOT/A
DATA=$DIR/data
PORT=$PORT_A
WALFS=$DIR/walfs
mkdir -p "$DIR"
chown "$PGUSER_OS" "$DIR"
log "A: pg_wal on a ${WAL_FS_MB} MB tmpfs ($WALFS), port $PORT"

phase_a() {
	mount_tmpfs "$WALFS" "$WAL_FS_MB" || { fail "A: mount a tmpfs for pg_wal"; return 1; }
	init_server --waldir="$WALFS/pg_wal" --wal-segsize="$WAL_SEG_MB" || { fail "A: initdb with pg_wal on the tmpfs"; return 1; }
	cat >>"$DATA/postgresql.conf" <<EOF
# no checkpoint may recycle a segment before pg_wal is full
max_wal_size = '4GB'
min_wal_size = '32MB'
checkpoint_timeout = '30min'
wal_keep_size = 0
restart_after_crash = on
EOF
	start_pg || { fail "A: the server starts" "$(tail -5 "$DIR/server.log")"; return 1; }
	setup_ledger || return 1

	# initdb left recycled segments ahead of the insert position: use them
	# up (a logical message and a segment switch each), so that what the
	# filler leaves is all the WAL the load can still write
	local cur ahead
	for _ in $(seq 1 200); do
		cur=$(sql -c "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
		ahead=$(ls "$WALFS/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$cur" '$0 > c' | wc -l)
		[ "$ahead" = 0 ] && break
		sql -c "SELECT pg_logical_emit_message(false, 'pad', ''), pg_switch_wal()" >/dev/null
	done
	check "A: no WAL segment is ready ahead of the insert position" "0" "$ahead"
	# the filler leaves WAL_FREE_MB: as many segments more, then none
	local avail filler_mb
	avail=$(df -B1M --output=avail "$WALFS" | tail -1 | tr -d ' ')
	filler_mb=$((avail - WAL_FREE_MB))
	fallocate -l "${filler_mb}M" "$WALFS/filler" || head -c "${filler_mb}M" /dev/zero >"$WALFS/filler"
	info "A: pg_wal tmpfs: ${WAL_FS_MB} MB, filler ${filler_mb} MB, free $(df -B1M --output=avail "$WALFS" | tail -1 | tr -d ' ') MB"

	local log0 t0 t_panic
	log0=$(log_size)
	t0=$(now)
	# one pgbench run, until the PANIC ends it
	pgbench_run 1 150 "$DIR/acks" "$DIR/pgbench.log" &
	local bench=$!
	local end=$((SECONDS + 150))
	while [ "$SECONDS" -lt "$end" ] && [ "$(log_since "$log0" | grep -c 'PANIC:')" = 0 ]; do
		sleep 0.2
	done
	t_panic=$(since "$t0")
	wait "$bench"
	local panic
	panic=$(log_since "$log0" | grep -m1 'PANIC:')
	if [[ "$panic" == *"No space left on device"* ]]; then
		pass "A: PostgreSQL PANICs with pg_wal full, after ${t_panic} s of load"
		info "A: ${panic#* PANIC:  }"
	else
		fail "A: PostgreSQL PANICs with pg_wal full" "first PANIC: '${panic}'; log: $(log_since "$log0" | grep -E 'PANIC|FATAL|ERROR' | head -3)"
		return 1
	fi
	info "A: $(acks_count) calls acknowledged before the PANIC"
	grep -q 'server closed the connection unexpectedly\|terminating connection\|could not connect\|connection to server' "$DIR/pgbench.log" &&
		pass "A: the pgbench clients lost their connections" ||
		fail "A: the pgbench clients lost their connections" "$(tail -5 "$DIR/pgbench.log")"

	# What the server does by itself with pg_wal still full: crash recovery
	# may stop it (the end-of-recovery checkpoint needs WAL too).
	local settled=
	end=$((SECONDS + 30))
	while [ "$SECONDS" -lt "$end" ]; do
		if ! running; then
			settled=stopped
			break
		fi
		if as_pg pg_isready -q -h "$DIR" -p "$PORT"; then
			settled=running
			break
		fi
		sleep 0.5
	done
	info "A: with pg_wal full, after the PANIC the server is ${settled:-still starting after 30 s}"
	info "A: the log after the PANIC: $(log_since "$log0" | grep -E 'PANIC|terminated by signal|reinitializing|aborting startup|database system is|redo done|shut down' |
		sed -E 's/^[^]]*\] //' | uniq -c | sed -E 's/^ +//' | tr '\n' ';' | head -c 1500)"

	# free the space, and start PostgreSQL again
	local log1 t_free
	rm -f "$WALFS/filler"
	t_free=$(now)
	log1=$(log_size)
	if running; then
		as_pg pg_ctl -D "$DATA" -m fast -w -t 60 restart -l "$DIR/server.log" >/dev/null ||
			{ fail "A: PostgreSQL restarts once space is back" "$(tail -5 "$DIR/server.log")"; return 1; }
	else
		start_pg || { fail "A: PostgreSQL starts once space is back" "$(log_since "$log1" | tail -5)"; return 1; }
	fi
	pass "A: PostgreSQL starts again once the filler is removed"
	info "A: entries queued just after the start: $(sql -c 'SELECT count(*) FROM ledger.queue')"

	local ready=
	for _ in $(seq 1 100); do
		[ "$(workers_running)" = 2 ] && { ready=1; break; }
		sleep 0.2
	done
	[ -n "$ready" ] && pass "A: both bucket workers run" || fail "A: both bucket workers run" "$(workers_running)"
	local took
	if took=$(wait_for_drain 60); then
		pass "A: the queue drains by itself (${took} s after the restart)"
	else
		fail "A: the queue drains by itself within 60 s" \
			"queued: $(sql -c 'SELECT count(*) FROM ledger.queue'); $(sql -c 'SELECT * FROM ledger_health()' | head -3)"
	fi
	info "A: drained $(since "$t_free") s after the space came back"

	# and the load goes on
	local before
	before=$(acks_count)
	pgbench_run 2 3 "$DIR/acks" "$DIR/pgbench-after.log"
	check "A: after the restart pgbench runs without an error" "0" "$(grep -c 'ERROR\|aborted' "$DIR/pgbench-after.log")"
	info "A: $(($(acks_count) - before)) calls acknowledged after the restart"
	took=$(wait_for_drain 60) || fail "A: the load after the restart drains"

	collect_acks
	# a commit in flight at the PANIC may be on disk unacknowledged: one call
	# per client, two events for a transfer_many
	audit $((2 * NCLIENTS))
	check "A: no PANIC or crash since the restart" "0" \
		"$(log_since "$log1" | grep -c 'PANIC:\|terminated by signal')"
	as_pg pg_ctl -D "$DATA" -m fast -w stop >/dev/null
}
[[ " ${LEDGER_DISK_FULL_PHASES:-A B} " == *" A "* ]] && phase_a

###########################################################################
# B. The data directory full
###########################################################################
PHASE=B
DIR=$ROOT/B
DATAFS=$DIR/datafs
DATA=$DATAFS/data
PORT=$PORT_B
mkdir -p "$DIR"
chown "$PGUSER_OS" "$DIR"
log "B: the data directory on a ${DATA_FS_MB} MB tmpfs ($DATAFS), pg_wal on disk, port $PORT"

phase_b() {
	mount_tmpfs "$DATAFS" "$DATA_FS_MB" || { fail "B: mount a tmpfs for the data directory"; return 1; }
	init_server --waldir="$DIR/pg_wal" || { fail "B: initdb with the data directory on the tmpfs"; return 1; }
	start_pg || { fail "B: the server starts" "$(tail -5 "$DIR/server.log")"; return 1; }
	setup_ledger || return 1

	start_load_loop 1
	wait_for_acks 1500 60 || { fail "B: the load runs" "$(tail -5 "$DIR/pgbench.log")"; return 1; }
	# a backlog when the disk fills: both buckets paused for two seconds
	sql -c "SELECT ledger_pause(0), ledger_pause(1)" >/dev/null
	sleep 2
	local log0 t_full
	log0=$(log_size)
	cat /dev/zero >"$DATAFS/filler" 2>/dev/null
	t_full=$(now)
	local acks_at_full
	acks_at_full=$(acks_count)
	sql -c "SELECT ledger_resume(0), ledger_resume(1)" >/dev/null
	info "B: the data directory is full ($(df -B1K --output=avail "$DATAFS" | tail -1 | tr -d ' ') kB free;" \
		"filler $(($(stat -c %s "$DATAFS/filler") / 1048576)) MB); $(acks_count) calls acknowledged;" \
		"$(sql -c 'SELECT count(*) FROM ledger.queue') entries queued"

	# An enqueue that must extend the log fails with a clear error.
	local probe
	probe=$(sql -v VERBOSITY=verbose -c "SELECT ledger_transfer_many(array_fill(1::bigint, ARRAY[2000]),
		array_fill(2::bigint, ARRAY[2000]), array_fill(1::bigint, ARRAY[2000]),
		array(SELECT 'probe-' || i FROM generate_series(1, 2000) i))")
	if [[ "$probe" == *"53100"*"could not extend file"*"No space left on device"* ]]; then
		pass "B: an enqueue fails with SQLSTATE 53100, could not extend file: No space left on device"
		info "B: $(printf '%s\n' "$probe" | head -1)"
	else
		fail "B: an enqueue fails with SQLSTATE 53100 (disk full)" "$(printf '%s\n' "$probe" | head -3)"
	fi

	# 30 s of full disk under load, looking every second
	local up=0 looks=0 max_failures=0 states="" last_error="" row f s e
	local end
	end=$(awk -v t="$t_full" -v d="$FULL_SECONDS" 'BEGIN { printf "%d", t + d }')
	while [ "$(date +%s)" -lt "$end" ]; do
		looks=$((looks + 1))
		row=$(sql -F '|' -c "SELECT max(failures), string_agg(DISTINCT state, ','),
				max(last_error) FILTER (WHERE last_error <> '') FROM ledger_stats")
		if [[ "$row" == *"|"* ]]; then
			up=$((up + 1))
			IFS='|' read -r f s e <<<"$row"
			[ -n "$f" ] && [ "$f" -gt "$max_failures" ] && max_failures=$f
			states="$states,$s"
			[ -n "$e" ] && last_error=$e
		fi
		sleep 1
	done
	local log1 t_free queued_at_free
	log1=$(log_size)
	queued_at_free=$(sql -c 'SELECT count(*) FROM ledger.queue')
	stop_load_loop
	check "B: the server stayed up (answered $looks of $looks looks)" "$looks" "$up"
	local client_errors
	client_errors=$(grep -c 'could not extend file.*No space left on device' "$DIR/pgbench.log")
	[ "$client_errors" -gt 0 ] && pass "B: pgbench clients saw enqueues fail ($client_errors errors: could not extend file)" ||
		fail "B: pgbench clients saw enqueues fail with could not extend file" "$(grep -m3 'ERROR' "$DIR/pgbench.log")"
	info "B: calls acknowledged while the disk was full: $(($(acks_count) - acks_at_full)); $queued_at_free entries queued when space came back"
	[ "$max_failures" -gt 0 ] && pass "B: ledger_stats counts failed batches (up to $max_failures in a row)" ||
		fail "B: ledger_stats counts failed batches" "max failures $max_failures; states $states"
	[[ "$last_error" == *"could not extend file"* ]] && pass "B: ledger_stats.last_error says why: $last_error" ||
		fail "B: ledger_stats.last_error says could not extend file" "'$last_error'"
	[[ "$states" == *"retrying after an error"* ]] && pass "B: ledger_stats shows 'retrying after an error'" ||
		fail "B: ledger_stats shows 'retrying after an error'" "states seen: $(printf '%s' "$states" | tr ',' '\n' | sort -u | tr '\n' ',')"

	# the workers' lines in the log while the disk was full
	local window worker_errors worker_lines exits other_errors
	window=$(log_since "$log0" "$log1")
	worker_errors=$(printf '%s\n' "$window" | grep -cE '\] ledger bucket worker (ERROR|FATAL|PANIC):')
	worker_lines=$(printf '%s\n' "$window" | grep -c '\] ledger bucket worker ')
	exits=$(printf '%s\n' "$window" | grep -c 'background worker "ledger bucket worker" (PID [0-9]*) exited')
	other_errors=$(printf '%s\n' "$window" | grep -E '(ERROR|FATAL|PANIC):' | grep -vE '\] (ledger bucket worker|client backend) ' |
		sed -E 's/^[^]]*\] //; s/"[^"]*"/"..."/g; s/[0-9]+/N/g' | sort | uniq -c | sed -E 's/^ +//' | tr '\n' ';')
	info "B: in ${FULL_SECONDS} s of full disk, the workers logged $worker_errors errors ($worker_lines lines in all);" \
		"the postmaster logged $exits worker exits; other processes: ${other_errors:-nothing}"
	if [ "$worker_errors" -ge 1 ] && [ "$worker_errors" -le $((2 * MAX_WORKER_ERRORS)) ] &&
		[ "$exits" -le $((2 * MAX_WORKER_ERRORS)) ]; then
		pass "B: the workers back off: $worker_errors errors and $exits restarts in ${FULL_SECONDS} s (at most $MAX_WORKER_ERRORS per worker)"
	else
		fail "B: the workers back off (1 to $((2 * MAX_WORKER_ERRORS)) errors in ${FULL_SECONDS} s)" \
			"$worker_errors errors, $exits exits: $(printf '%s\n' "$window" | grep '\] ledger bucket worker ' | head -5)"
	fi
	info "B: the workers' errors: $(printf '%s\n' "$window" | grep -E '\] ledger bucket worker (ERROR|FATAL):' |
		sed -E 's/^([^ ]+ [^ ]+) [^ ]+ \[([0-9]+)\] ledger bucket worker [A-Z]+: +(.*)/\1 [\2] \3/; s/"[^"]*"/"..."/' | tr '\n' ';')"

	# free the space: everything drains by itself
	rm -f "$DATAFS/filler"
	t_free=$(now)
	local took
	if took=$(wait_for_drain "$DRAIN_SECONDS"); then
		pass "B: once space is back the queue drains by itself, in ${took} s ($queued_at_free entries were queued)"
	else
		fail "B: once space is back the queue drains by itself within ${DRAIN_SECONDS} s" \
			"queued: $(sql -c 'SELECT count(*) FROM ledger.queue'); $(sql -F '|' -c 'SELECT worker, state, failures, last_error FROM ledger_stats' | tr '\n' ';')"
	fi
	local cleared=
	for _ in $(seq 1 50); do
		[ "$(sql -c 'SELECT max(failures) FROM ledger_stats')" = 0 ] && { cleared=1; break; }
		sleep 0.2
	done
	[ -n "$cleared" ] && pass "B: ledger_stats' failures go back to 0" ||
		fail "B: ledger_stats' failures go back to 0" "$(sql -F '|' -c 'SELECT worker, state, failures FROM ledger_stats' | tr '\n' ';')"
	check "B: both bucket workers run" "2" "$(workers_running)"

	# and the load goes on
	local before
	before=$(acks_count)
	pgbench_run 9999 3 "$DIR/acks" "$DIR/pgbench-after.log"
	check "B: with space back pgbench runs without an error" "0" "$(grep -c 'ERROR\|aborted' "$DIR/pgbench-after.log")"
	info "B: $(($(acks_count) - before)) calls acknowledged after the space came back"
	took=$(wait_for_drain 60) || fail "B: the load after the space came back drains"

	collect_acks
	# no crash: an enqueue that did not return an id left nothing
	audit 0
	check "B: no PANIC or crash" "0" "$(log_since 0 | grep -c 'PANIC:\|terminated by signal\|reinitializing')"
	as_pg pg_ctl -D "$DATA" -m fast -w stop >/dev/null
}
[[ " ${LEDGER_DISK_FULL_PHASES:-A B} " == *" B "* ]] && phase_b

summary
