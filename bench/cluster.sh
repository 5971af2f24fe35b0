#!/usr/bin/env bash
# The cluster on this machine, and what it would do on more machines.
#
# 1. Throughput: pgbench enqueueing ledger_transfer from 32 clients
#      a. straight to a ledger on its own (the baseline),
#      b. through the proxy to one node owning every bucket,
#      c. through the proxy to two nodes (CROSS of the payees on the other
#         node).
#    Each figure is the median of REPS runs; after each run the backlog is
#    applied and, in c, every credit confirmed before the next.  On one
#    machine the nodes share its cores, so c measures the machinery, not
#    scaling.
# 2. Costs: the CPU time each server's processes spend on a fixed load of
#    transfers (COST_TX per client), by process role, per transfer: with two
#    nodes and every payer on node 1, for transfers local to node 1 and for
#    transfers to node 2; in full mode also on a's and b's servers (to check
#    the method against their runs), and with a third node that only looks
#    on, to measure what every extra node costs the others.
# 3. A model: from those costs, the transfers/s of N nodes on machines of
#    this size, for a range of cross-node fractions; and the same model's
#    prediction for a, b and c on this machine beside what they measured.
#    Full mode also plots the projection (bench/results/cluster-scaling.png).
#
# Run as root on Debian 12, with the extension installed (scripts/test.sh or
# make install).  Writes bench/results/cluster.txt.  Fails when
# ledger_verify_cluster() finds a problem after c.
#
#   bench/cluster.sh [--quick]
source "$(dirname "$0")/../scripts/common.sh"
shopt -s inherit_errexit

MODE=full
[ "${1:-}" = --quick ] && MODE=quick
if [ "$MODE" = quick ]; then
	REPS=1
	DURATION=3
	COST_TX=25				# transfers per client in a cost run
	COST_CLIENTS=8			# fewer sessions to start: 200 transfers a run
	ACCOUNTS=200			# fewer to open and fund through the proxy
else
	REPS=3
	DURATION=10
	COST_TX=500				# 16,000 in all, about 10 s through the proxy
	COST_CLIENTS=32			# as many as the throughput runs
	ACCOUNTS=1000
fi
# ACCOUNTS is a multiple of every map's bucket count (see write_script)
CLIENTS=32
CROSS=${LEDGER_CLUSTER_CROSS:-0.5}
F_VALUES="0 0.1 0.25 0.5"	# cross-node fractions of the projection
N_VALUES="1 2 4 8"			# node counts of the projection
CORES=$(nproc)
HZ=$(getconf CLK_TCK)
DIR=${LEDGER_CLUSTER_DIR:-/tmp/ledger-cluster}
BASE_PORT=${LEDGER_CLUSTER_PORT:-55670}
RESULTS=$TOP/bench/results
OUT=$RESULTS/cluster.txt

need_packages postgresql-15-plproxy
[ "$MODE" = full ] && need_packages gnuplot-nox
progress() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }

psql_at() { as_pg psql -h "$DIR/$1" -p "$2" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "${@:3}"; }

SERVERS=()	# names of the running servers, each in $DIR/NAME
NODES=()	# NAME:PORT of the running ledgers, for quiet()
cleanup() {
	[ -n "${SAMPLER:-}" ] && { kill "$SAMPLER" 2>/dev/null || true; }
	for s in "${SERVERS[@]}"; do stop_server "$DIR/$s"; done
	SERVERS=()
	NODES=()
	return 0
}
trap cleanup EXIT

# server NAME PORT [conf lines...]
server() {
	local name=$1 port=$2
	shift 2
	mkdir -p "$DIR"
	start_server "$DIR/$name" "$port" "max_connections = 200" "shared_buffers = 512MB" "$@"
	SERVERS+=("$name")
}

conninfo() { echo "host=$DIR/$1 port=$2 dbname=postgres"; }

# node NAME PORT ID: a node of the cluster, set up with the map in MAP_*
node() {
	server "$1" "$2" "ledger.node_id = $3" "wal_level = logical" \
		"max_worker_processes = 16" "ledger.poll_interval = 100ms"
	psql_at "$1" "$2" -c "CREATE EXTENSION ledger" \
		-c "INSERT INTO ledger.cluster_nodes $MAP_NODES" \
		-c "INSERT INTO ledger.cluster_buckets $MAP_BUCKETS" \
		-c "SELECT ledger_cluster_init()" >/dev/null
	# LEDGER_CLUSTER_NODE_SQL: SQL for every node once set up, to measure a
	# variant (a setting, a function's plan settings) against the same load
	[ -z "${LEDGER_CLUSTER_NODE_SQL:-}" ] || psql_at "$1" "$2" -c "$LEDGER_CLUSTER_NODE_SQL" >/dev/null
	NODES+=("$1:$2")
}

proxy() {
	server proxy "$BASE_PORT"
	psql_at proxy "$BASE_PORT" -c "CREATE EXTENSION ledger_proxy CASCADE" \
		-c "INSERT INTO ledger_proxy.nodes $MAP_NODES" \
		-c "INSERT INTO ledger_proxy.buckets $MAP_BUCKETS" >/dev/null 2>&1
}

# fund HOST PORT: open and fund the accounts through HOST
fund() {
	psql_at "$1" "$2" -c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $ACCOUNTS) a" \
		-c "SELECT count(ledger_deposit(a, 1000000000)) FROM generate_series(1, $ACCOUNTS) a" >/dev/null
}

# cluster N: the proxy and nodes 1..N (ports BASE_PORT+1..), each node
# subscribed to every other, with the map in MAP_BUCKETS; the accounts
# opened and funded, and the directory complete on every node
cluster() {
	local n=$1 i j
	MAP_NODES="VALUES (1, '$(conninfo node1 "$((BASE_PORT + 1))")')"
	for i in $(seq 2 "$n"); do
		MAP_NODES+=", ($i, '$(conninfo "node$i" "$((BASE_PORT + i))")')"
	done
	for i in $(seq 1 "$n"); do node "node$i" "$((BASE_PORT + i))" "$i"; done
	for i in $(seq 1 "$n"); do
		for j in $(seq 1 "$n"); do
			[ "$i" = "$j" ] && continue
			# a slot of its own per pair: node j serves a slot to each other node
			psql_at "node$i" "$((BASE_PORT + i))" -c "CREATE SUBSCRIPTION ledger_from_$j CONNECTION '$(conninfo "node$j" "$((BASE_PORT + j))")' PUBLICATION ledger_cluster WITH (slot_name = 'ledger_${j}_to_$i')" 2>/dev/null
		done
	done
	proxy
	fund proxy "$BASE_PORT"
	# the directory must reach every node before payees of the others are known
	for _ in $(seq 1 300); do
		for i in $(seq 1 "$n"); do
			[ "$(psql_at "node$i" "$((BASE_PORT + i))" -c "SELECT count(*) FROM ledger.directory")" = "$ACCOUNTS" ] || continue 2
		done
		return 0
	done
	progress "the directory did not reach every node"
	return 1
}

# quiet: wait until the ledgers' queues are empty and every credit they
# sent is confirmed.  A session costs a server tens of ms of CPU to start,
# which would weigh on the cost runs, so each node is asked once a round,
# by a session that waits on the server until it has nothing left (or a
# minute has passed).  Nothing left on every node in two rounds in a row is
# quiet: a node found empty may yet receive a credit another node sends
# later in the same round.
LEFT_SQL="SELECT (SELECT count(*) FROM ledger.queue)
			 + CASE WHEN ledger.node_id() = 0 THEN 0 ELSE
			   (SELECT count(*) FROM ledger.transit t
				 WHERE t.source_node = ledger.node_id()
				   AND NOT EXISTS (SELECT FROM ledger.transit_acks a
									WHERE a.source_node = t.source_node
									  AND a.id = t.id)) END"
quiet() {
	local np left zeros=0
	for _ in $(seq 1 20); do
		left=0
		for np in "${NODES[@]}"; do
			left=$((left + $(psql_at "${np%%:*}" "${np##*:}" -c "
				DO \$\$ BEGIN
					FOR i IN 1 .. 1200 LOOP
						EXIT WHEN ($LEFT_SQL) = 0;
						PERFORM pg_sleep(0.05);
					END LOOP;
				END \$\$" -c "$LEFT_SQL")))
		done
		if [ "$left" = 0 ]; then
			zeros=$((zeros + 1))
			[ "$zeros" = 2 ] && return 0
		else
			zeros=0
		fi
	done
	progress "the nodes did not drain"
	return 1
}

# ---------------------------------------------------------------------------
# CPU accounting.  A server's CPU time over a window is read from /proc, in
# clock ticks (CLK_TCK), as utime + stime of its processes:
#  - a child of the postmaster alive at the end of the window: its ticks at
#    the end less its ticks at the start (none if it started in the window);
#  - children that exited in the window (pgbench's sessions, the proxy's
#    connections to the nodes, quiet()'s psql sessions, an autovacuum
#    worker): the kernel adds a child's whole utime + stime to its parent's
#    cutime + cstime when the parent reaps it, and the postmaster reaps
#    every child, so the growth of the postmaster's cutime + cstime, less
#    what those of them alive at the start had already used, is exactly
#    their CPU in the window.  Which role that was is known only from
#    samples taken during the window (sampler): an exited child seen as a
#    worker, walsender, ... keeps what the samples saw it use, and the rest
#    goes to the client backends (they are what exits at the end of a run);
#  - the postmaster's own utime + stime (it forks every session).
# The total per server is exact; the split by role is exact but for what a
# short-lived background process (an autovacuum worker) used between its
# last sample and its exit, counted as backends'.  Windows start and end
# when no session of the load is open, so nothing exits half-counted.
# ---------------------------------------------------------------------------

# cpu_snapshot SERVER...: lines "server pid role ticks": the postmaster's
# own ticks (role postmaster), its reaped children's (pid 0, role reaped),
# and each live child's, with its role from its process title.  The
# postmaster is read before its children: a child exiting in between is then
# counted in neither rather than in both.
cpu_snapshot() {
	local s pm
	for s in "$@"; do
		pm=$(head -1 "$DIR/$s/data/postmaster.pid")
		{ echo "$pm postmaster"; ps --ppid "$pm" -o pid=,args= || true; } | awk -v s="$s" -v pm="$pm" '
			function role(title) {
				if (title ~ /\] DO/) return "monitor"		# quiet(), not the load
				if (title ~ /ledger bucket worker/) return "workers"
				if (title ~ /walsender/) return "walsender"
				if (title ~ /logical replication worker/) return "apply"
				if (title ~ /checkpointer|background writer|walwriter|autovacuum|logical replication launcher|archiver|startup/)
					return "other"
				return "backend"
			}
			{
				pid = $1
				$1 = ""
				f = "/proc/" pid "/stat"
				if ((getline line < f) <= 0) { close(f); next }
				close(f)
				sub(/^.*\) /, "", line)		# past "pid (comm) "
				split(line, v, " ")			# v[12], v[13]: utime, stime; v[14], v[15]: cutime, cstime
				if (pid == pm) {
					print s, pid, "postmaster", v[12] + v[13]
					print s, 0, "reaped", v[14] + v[15]
				} else
					print s, pid, role($0), v[12] + v[13]
			}'
	done
}

# sampler FILE SERVER...: a snapshot a second into FILE, until killed
sampler() {
	local file=$1
	shift
	while :; do
		cpu_snapshot "$@" >>"$file"
		sleep 1
	done
}

# cpu_account BEFORE SAMPLES AFTER: "server role ms" over the window between
# the snapshots BEFORE and AFTER, as explained above; roles: backend,
# workers, walsender, apply, other.  quiet()'s sessions (role monitor, seen
# running its DO) are left out: they watch the load, and wait longer for a
# larger one.
cpu_account() {
	awk -v hz="$HZ" '
		# a session is a client backend until seen in another role
		function see(k, r) { if (!(k in role) || role[k] == "backend") role[k] = r }
		FILENAME == ARGV[1] { k = $1 " " $2; start[k] = $4; see(k, $3); next }
		FILENAME == ARGV[2] { k = $1 " " $2; if (!(k in seen) || $4 > seen[k]) seen[k] = $4
							   see(k, $3); next }
		{ k = $1 " " $2; end[k] = $4; see(k, $3) }
		END {
			for (k in role) {
				split(k, p, " ")
				s = p[1]
				servers[s] = 1
				r = role[k] == "postmaster" ? "other" : role[k]
				was = (k in start) ? start[k] : 0
				if (p[2] == 0)
					exited[s] += end[k] - was
				else if (k in end)
					cpu[s, r] += end[k] - was
				else {
					exited[s] -= was
					if (r != "backend" && (k in seen) && seen[k] > was) {
						cpu[s, r] += seen[k] - was
						exited[s] -= seen[k] - was
					}
				}
			}
			n = split("backend workers walsender apply other", roles, " ")
			for (s in servers) {
				cpu[s, "backend"] += exited[s]
				for (i = 1; i <= n; i++)
					printf "%s %s %.0f\n", s, roles[i], cpu[s, roles[i]] * 1000 / hz
			}
		}' "$1" "$2" "$3"
}

# vacuum: VACUUM ANALYZE every ledger, so that each cost window starts from
# the state autovacuum leaves, whatever the window before it left behind
# (the confirmations delete their outbox rows, and leave dead rows).
vacuum() {
	local np
	for np in "${NODES[@]}"; do psql_at "${np%%:*}" "${np##*:}" -c "VACUUM ANALYZE"; done
}

# settle: wait until no client session is left on any server (pgbench's and
# the proxy's have exited and been reaped)
settle() {
	for _ in $(seq 1 100); do
		cpu_snapshot "${SERVERS[@]}" | awk '$3 == "backend" { n++ } END { exit n > 0 }' && return 0
		sleep 0.1
	done
	progress "sessions linger; the CPU of the last window may be short"
}

# busy_ticks: ticks this machine's CPUs have been busy and in all (from
# /proc/stat), to tell how much of the machine others used during a run
busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# ---------------------------------------------------------------------------
# The load: pgbench transfers.  An account's node is the one owning bucket
# (id mod nb) of the cluster map; every map here gives node 1 buckets 0 and
# 1, node 2 buckets 2 and 3 (and node 3 the rest), so the accounts of node
# k (k = 0 for node 1, 1 for node 2) are the ids nb * (j / 2) + 2k + j mod 2,
# j = 0 .. n-1 (id 0, no account, stands for id ACCOUNTS, of the same
# buckets).  The payer's node is `home` (-1: either, at random); the payee
# is on the other node with probability `cross`, else another account of
# the payer's node.  Without a cluster the same script gives a payee
# uniform among the other accounts when cross = 0.5.
# ---------------------------------------------------------------------------
SCRIPT=$DIR/transfer.sql
write_script() {
	cat >"$SCRIPT" <<'EOS'
\set n 2 * :accounts / :nb
\set pk CASE WHEN :home < 0 THEN random(0, 1) ELSE :home END
\set jp random(0, :n - 1)
\set qk CASE WHEN random(0, 999999) < :cross * 1000000 THEN 1 - :pk ELSE :pk END
\set jq CASE WHEN :qk = :pk THEN (:jp + random(1, :n - 1)) % :n ELSE random(0, :n - 1) END
\set from :nb * (:jp / 2) + 2 * :pk + :jp % 2
\set to :nb * (:jq / 2) + 2 * :qk + :jq % 2
\set from CASE WHEN :from = 0 THEN :accounts ELSE :from END
\set to CASE WHEN :to = 0 THEN :accounts ELSE :to END
\set amount random(1, 100)
SELECT ledger_transfer(:from, :to, :amount);
EOS
	chown "$PGUSER_OS" "$SCRIPT"
}

# load NAME PORT CLIENTS PGBENCH_OPTIONS...: one pgbench run against server
# NAME; prints "transactions tps pgbench_cpu_ms", the last from bash's
# `times` in a subshell that waits for pgbench: its children's user +
# system time is pgbench's (and runuser's), the load generator's own cost.
load() {
	local name=$1 port=$2 clients=$3
	shift 3
	(
		as_pg pgbench -h "$DIR/$name" -p "$port" -U postgres -n -M prepared -c "$clients" -j 2 \
			-D accounts="$ACCOUNTS" "$@" -f "$SCRIPT" postgres >"$DIR/pgbench.out" 2>&1
		times >"$DIR/pgbench.times"
	) || { tail -5 "$DIR/pgbench.out" >&2; return 1; }
	awk '/^number of transactions actually processed:/ { n = $NF; sub(/\/.*/, "", n) }
		 /^tps = / { tps = $3 }
		 END { printf "%s %.0f ", n, tps }' "$DIR/pgbench.out"
	awk 'NR == 2 { split($1 "m" $2, t, "m"); sub(/s/, "", t[2]); sub(/s/, "", t[4])
				   printf "%.0f\n", (t[1] * 60 + t[2] + t[3] * 60 + t[4]) * 1000 }' "$DIR/pgbench.times"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# measure LABEL NAME PORT PGBENCH_OPTIONS...: REPS throughput runs through
# server NAME; prints the median transfers/s and, over all runs while
# pgbench ran, the cores this benchmark's processes (servers and pgbench)
# used, the cores the whole machine was busy, the CPU ms a transfer
# (sessions' start included: that is what the runs paid), and the CPU ms
# and the transfers in all
measure() {
	local label=$1 name=$2 port=$3 r res tps all=() cpu=0 n=0 secs=0 busy=0 b0 b1 t0 t1
	shift 3
	for r in $(seq 1 "$REPS"); do
		cpu_snapshot "${SERVERS[@]}" >"$DIR/before"
		b0=$(busy_ticks)
		t0=$(date +%s.%N)
		res=$(load "$name" "$port" "$CLIENTS" -T "$DURATION" "$@")
		settle
		cpu_snapshot "${SERVERS[@]}" >"$DIR/after"
		t1=$(date +%s.%N)
		b1=$(busy_ticks)
		: >"$DIR/samples"
		cpu=$((cpu + $(cpu_account "$DIR/before" "$DIR/samples" "$DIR/after" | awk '{ s += $3 } END { print s }') + ${res##* }))
		secs=$(awk -v a="$secs" -v t0="$t0" -v t1="$t1" 'BEGIN { print a + t1 - t0 }')
		busy=$(awk -v a="$busy" -v b0="$b0" -v b1="$b1" -v c="$CORES" \
			'BEGIN { split(b0, x, " "); split(b1, y, " "); print a + c * (y[1] - x[1]) / (y[2] - x[2]) }')
		quiet
		n=$((n + ${res%% *}))
		cp "$DIR/pgbench.out" "$DIR/pgbench-${label%%.*}-$r.out"
		tps=$(echo "$res" | cut -d' ' -f2)
		progress "$label, run $r/$REPS: $tps transfers/s"
		all+=("$tps")
	done
	echo "$(printf '%s\n' "${all[@]}" | median) $(awk -v c="$cpu" -v s="$secs" -v b="$busy" -v r="$REPS" -v n="$n" \
		'BEGIN { printf "%.2f %.2f %.3f %d %d", c / 1000 / s, b / r, n ? c / n : 0, c, n }')"
}

# cost_window TX NAME PORT PGBENCH_OPTIONS...: a fixed load of TX transfers
# per client through server NAME, from COST_CLIENTS clients, on ledgers
# drained (by the caller) and vacuumed, until it is drained and confirmed;
# prints the CPU ms by server and role ("server role ms") of that window,
# pgbench's ("pgbench pgbench ms") and the transfers ("transfers
# transfers n")
cost_window() {
	local tx=$1 name=$2 port=$3 res
	shift 3
	vacuum
	settle
	: >"$DIR/samples"
	cpu_snapshot "${SERVERS[@]}" >"$DIR/before"
	sampler "$DIR/samples" "${SERVERS[@]}" &
	SAMPLER=$!
	res=$(load "$name" "$port" "$COST_CLIENTS" -t "$tx" "$@")
	quiet
	settle
	kill "$SAMPLER"
	wait "$SAMPLER" 2>/dev/null || true
	SAMPLER=
	cpu_snapshot "${SERVERS[@]}" >"$DIR/after"
	cpu_account "$DIR/before" "$DIR/samples" "$DIR/after"
	echo "pgbench pgbench ${res##* }"
	echo "transfers transfers ${res%% *}"
}

# cost_run LABEL NAME PORT PGBENCH_OPTIONS...: what the transfers of a load
# cost, without what its sessions cost to start (a fresh session costs a
# server tens of ms of CPU, a hundred transfers' worth, and the proxy's
# sessions open their own to the nodes) or the waits for the drain: the
# difference between a window of COST_TX transfers a client and one of a
# single transfer a client, the same sessions opened in both.  Adds the
# large window to $DIR/cost-LABEL and the small one negated, so that sums
# over the file are the differences; the small ones also to
# $DIR/fixed-LABEL.  --quick, to be quick, has no small window: its costs
# include the sessions' start.
cost_run() {
	local label=$1 name=$2 port=$3
	shift 3
	quiet
	: >"$DIR/small"
	if [ "$MODE" = full ]; then
		cost_window 1 "$name" "$port" "$@" >"$DIR/small"
		cp "$DIR/small" "$DIR/small-$label-$(date +%H%M%S)"
		cat "$DIR/small" >>"$DIR/fixed-$label"
	fi
	cost_window "$COST_TX" "$name" "$port" "$@" >"$DIR/large"
	cp "$DIR/large" "$DIR/large-$label-$(date +%H%M%S)"
	{
		cat "$DIR/large"
		awk '{ print $1, $2, -$3 }' "$DIR/small"
	} >>"$DIR/cost-$label"
	progress "cost $label: $(awk 'FILENAME == ARGV[1] { s[$1] += $3; next } { s[$1] -= $3 }
		END { for (k in s) if (k != "transfers") printf "%s %.3f, ", k, s[k] / s["transfers"]; printf "CPU ms a transfer (%d)", s["transfers"] }' \
		"$DIR/large" "$DIR/small")"
}

# ms LABEL SERVER [ROLE]: CPU ms per transfer of SERVER (one ROLE, or all)
# in the cost runs LABEL; an empty value when they were not run
ms() {
	[ -f "$DIR/cost-$1" ] || { echo ""; return 0; }
	awk -v s="$2" -v r="${3:-}" '
		$1 == "transfers" { n += $3; next }
		$1 == s && (r == "" || $2 == r) { c += $3 }
		END { printf "%.4f\n", n ? c / n : 0 }' "$DIR/cost-$1"
}

rm -rf "$DIR"
mkdir -p "$DIR" "$RESULTS"
chown "$PGUSER_OS" "$DIR"
write_script
# pgbench options of the runs: throughput with either node paying
MIXED=(-D nb=4 -D home=-1 -D cross="$CROSS")

progress "a. a ledger on its own"
server alone "$((BASE_PORT + 3))" "ledger.poll_interval = 100ms"
NODES=("alone:$((BASE_PORT + 3))")
as_pg psql -h "$DIR/alone" -p "$((BASE_PORT + 3))" -U postgres -d postgres -X -q -c "CREATE EXTENSION ledger"
fund alone "$((BASE_PORT + 3))"
res=$(measure "a. alone" alone "$((BASE_PORT + 3))" "${MIXED[@]}")
read -r ALONE ALONE_CORES ALONE_BUSY ALONE_MS ALONE_CPU ALONE_N <<<"$res"
# the costs of a and b check the method against their own runs (a cluster
# node's are measured in c); --quick keeps to c's
if [ "$MODE" = full ]; then
	for r in $(seq 1 "$REPS"); do cost_run alone alone "$((BASE_PORT + 3))" "${MIXED[@]}"; done
fi
cleanup

progress "b. the proxy and one node"
MAP_BUCKETS="VALUES (0, 1), (1, 1)"
cluster 1
res=$(measure "b. proxy + 1 node" proxy "$BASE_PORT" "${MIXED[@]}")
read -r ONE ONE_CORES ONE_BUSY ONE_MS ONE_CPU ONE_N <<<"$res"
if [ "$MODE" = full ]; then
	for r in $(seq 1 "$REPS"); do cost_run local1 proxy "$BASE_PORT" "${MIXED[@]}"; done
fi
cleanup

# Two nodes.  Four cluster buckets, two a node: with two per cluster, node
# 1 would get only even ids, all of its local bucket 0, and its second
# worker would idle (1.7's ledger_cluster_init() refuses such a map).
progress "c. the proxy and two nodes"
MAP_BUCKETS="VALUES (0, 1), (1, 1), (2, 2), (3, 2)"
cluster 2
res=$(measure "c. proxy + 2 nodes" proxy "$BASE_PORT" "${MIXED[@]}")
read -r TWO TWO_CORES TWO_BUSY TWO_MS TWO_CPU TWO_N <<<"$res"
# every payer on node 1, the payees on node 1 (local) or on node 2 (cross);
# the runs alternate so that drifts of the machine touch both alike
for r in $(seq 1 "$REPS"); do
	cost_run local2 proxy "$BASE_PORT" -D nb=4 -D home=0 -D cross=0
	cost_run cross2 proxy "$BASE_PORT" -D nb=4 -D home=0 -D cross=1
done
PROBLEMS=$(psql_at proxy "$BASE_PORT" -c "SELECT count(*) FROM ledger_verify_cluster()")
# how node 1 read its outbox to take the confirmations: by key, one index
# scan each (before 1.7 a join read the whole outbox for each)
OUTBOX=$(psql_at node1 "$((BASE_PORT + 1))" -c "
	SELECT format('%s sequential scans of ledger.transit reading %s rows, %s index scans, for %s confirmations',
				  t.seq_scan, t.seq_tup_read, coalesce(t.idx_scan, 0), (SELECT count(*) FROM ledger.transit_acked))
	  FROM pg_stat_user_tables t WHERE t.relid = 'ledger.transit'::regclass")
cleanup

# Three nodes, node 3 with no load of its own: every node publishes its
# credits to all the others, and each of a node's walsenders decodes all of
# its WAL, so this measures what a node costs the others by being there.
if [ "$MODE" = full ]; then
	progress "d. the proxy and three nodes (costs only)"
	MAP_BUCKETS="VALUES (0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 3), (7, 3)"
	cluster 3
	for r in $(seq 1 "$REPS"); do
		cost_run local3 proxy "$BASE_PORT" -D nb=8 -D home=0 -D cross=0
		cost_run cross3 proxy "$BASE_PORT" -D nb=8 -D home=0 -D cross=1
	done
	PROBLEMS3=$(psql_at proxy "$BASE_PORT" -c "SELECT count(*) FROM ledger_verify_cluster()")
	cleanup
fi

# ---------------------------------------------------------------------------
# The model.  Per transfer, from the two-node cost runs (all payers on node
# 1), in CPU ms:
#   Lb  local transfer, paying node, all but its walsenders
#   Lw  local transfer, paying node, one walsender (it decodes all WAL)
#   Pb  cross transfer, paying node, all but its walsenders (enqueue, the
#       debit and the outbox row, the apply worker taking the confirmation)
#   Pw  cross transfer, paying node, one walsender (decoding, sending)
#   Rb  cross transfer, payee's node, all but its walsenders (apply worker,
#       the credit's batch)
#   Rw  cross transfer, payee's node, one walsender (decoding, sending the
#       confirmation back)
#   D   cross transfer, a third node, all (its apply workers receive the
#       credit from the payer's node and the confirmation from the payee's
#       node, and drop both) -- from the three-node runs; --quick has none
#       and takes the paying node's apply worker's cost instead, which also
#       stores the confirmation
#   Y   the proxy, G pgbench (the load generator)
# With N nodes each publishes to N-1 subscribers through N-1 walsenders,
# each decoding all of the node's WAL, and each credit and each
# confirmation reaches all N-1 others, N-2 of which drop it.  A node of N,
# for each transfer it pays (a fraction 1/N of all, the load spread evenly,
# cross-node payees evenly over the other nodes, so a node also receives
# the credits of a fraction f/N and looks on at f(N-2)/N), spends
#   node(N, f) = (1-f) (Lb + (N-1) Lw) + f (Pb + (N-1) Pw + Rb + (N-1) Rw + (N-2) D)
# (node(1) = Lb: b's own cost runs check b, but are made minutes apart from
# c's, and on this shared machine what others run moves a CPU cost by a
# third; every figure of the model comes from c's runs, made alternately).
# CPU-bound, on C cores a node: X = N C / node(N, f), the
# proxy and the clients on machines of their own; or X = N C / (node + Y)
# with a proxy beside each node.  On this one machine (a, b, c): everything
# shares its cores: X = C / (costs of every process on it, pgbench's too).
# ---------------------------------------------------------------------------
LB=$(awk -v a="$(ms local2 node1)" -v w="$(ms local2 node1 walsender)" 'BEGIN { print a - w }')
LW=$(ms local2 node1 walsender)
PB=$(awk -v a="$(ms cross2 node1)" -v w="$(ms cross2 node1 walsender)" 'BEGIN { print a - w }')
PW=$(ms cross2 node1 walsender)
RB=$(awk -v a="$(ms cross2 node2)" -v w="$(ms cross2 node2 walsender)" 'BEGIN { print a - w }')
RW=$(ms cross2 node2 walsender)
if [ "$MODE" = full ]; then
	D=$(ms cross3 node3)
	D_FROM="measured: node 3 of three, cross runs"
else
	D=$(ms cross2 node1 apply)
	D_FROM="not measured in --quick: the paying node's apply worker's cost"
fi
YL=$(ms local2 proxy)
YX=$(ms cross2 proxy)
GL=$(ms local2 pgbench)
GX=$(ms cross2 pgbench)

# node_ms N F: node(N, F) of the model above
node_ms() {
	awk -v n="$1" -v f="$2" -v lb="$LB" -v lw="$LW" -v pb="$PB" -v pw="$PW" -v rb="$RB" -v rw="$RW" -v d="$D" '
		BEGIN { if (n == 1) f = 0
				printf "%.4f\n", (1 - f) * (lb + (n - 1) * lw) + f * (pb + (n - 1) * pw + rb + (n - 1) * rw + (n - 2) * d) }'
}
# mix LOCAL CROSS F: a cost at cross-node fraction F
mix() { awk -v l="$1" -v x="$2" -v f="$3" 'BEGIN { printf "%.4f\n", (1 - f) * l + f * x }'; }
# rate CORES MS: transfers/s of CORES cores at MS CPU ms a transfer
rate() { awk -v c="$1" -v m="$2" 'BEGIN { printf "%.0f\n", c * 1000 / m }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "-" }'; }

# the predictions for this machine, CPU ms a transfer of everything on it
# (none where the cost runs were not made): a and b from their own cost
# runs, c from the model (both nodes of two at CROSS, the proxy, pgbench)
COST_A=-
[ -f "$DIR/cost-alone" ] && COST_A=$(awk -v a="$(ms alone alone)" -v g="$(ms alone pgbench)" 'BEGIN { printf "%.3f", a + g }')
COST_B=-
[ -f "$DIR/cost-local1" ] &&
	COST_B=$(awk -v n="$(ms local1 node1)" -v y="$(ms local1 proxy)" -v g="$(ms local1 pgbench)" 'BEGIN { printf "%.3f", n + y + g }')
COST_C=$(awk -v n="$(node_ms 2 "$CROSS")" -v y="$(mix "$YL" "$YX" "$CROSS")" \
	-v g="$(mix "$GL" "$GX" "$CROSS")" 'BEGIN { printf "%.3f", n + y + g }')

# startup LABEL [SERVER]: CPU ms that a client's sessions cost to open (and
# to close, and the drain's waits), all servers and pgbench or one server,
# from the small windows of the cost runs LABEL less what their transfers
# cost; - without such runs
startup() {
	[ -f "$DIR/fixed-$1" ] || { echo -; return 0; }
	awk -v s="${2:-}" '
		FILENAME == ARGV[1] { if ($1 == "transfers") n += $3; else if (s == "" || $1 == s) c += $3; next }
		{ if ($1 == "transfers") sn += $3; else if (s == "" || $1 == s) sc += $3 }
		END { printf "%.0f", (sc - sn * c / n) / sn }' "$DIR/cost-$1" "$DIR/fixed-$1"
}
# The runs of 1. open their sessions while they run: a client's sessions
# cost (S) as in the cost runs, a's as a's, b's as b's, c's as the two-node
# local runs' (a session to the proxy, one from it to node 1) and another
# to node 2, as long as the one to node 1.  The machine is shared with
# others, so the check takes the CPU the runs got as given: of CPU ms in
# all, the sessions took REPS x clients x S, and the model's transfers
# cost MS each.
START_A=$(startup alone)
START_B=$(startup local1)
START_C=-
[ "$(startup local2)" = - ] ||
	START_C=$(awk -v a="$(startup local2 proxy)" -v b="$(startup local2 node1)" -v g="$(startup local2 pgbench)" 'BEGIN { print a + 2 * b + g }')
# check_row LABEL MS S RUN_MS CORES TPS CPU N: a row of the check: the
# model's steady transfers/s on all the cores, its transfers/s for the CPU
# the runs got (their measured figure scaled by transfers predicted over
# transfers made), the measured figure and the ratio; - where the costs
# were not measured
check_row() {
	awk -v label="$1" -v m="$2" -v s="$3" -v rm="$4" -v u="$5" -v tps="$6" -v cpu="$7" -v n="$8" \
		-v c="$CORES" -v k="$CLIENTS" -v r="$REPS" '
		BEGIN { if (m == "-" || s == "-") { printf "%-40s %9s %7s %9.3f %10.2f %9s %10s %9.0f %9s\n", label, "-", "-", rm, u, "-", "-", tps, "-"; exit }
				pn = (cpu - r * k * s) / m
				if (n == 0 || pn <= 0) { printf "%-40s %9.3f %7.0f %9.3f %10.2f %9.0f %10s %9.0f %9s\n", label, m, s, rm, u, c * 1000 / m, "-", tps, "-"; exit }
				printf "%-40s %9.3f %7.0f %9.3f %10.2f %9.0f %10.0f %9.0f %9.2f\n",
					   label, m, s, rm, u, c * 1000 / m, tps * pn / n, tps, n / pn }'
}

# cost_rows LABEL SETUP SERVER:NAME...: the table's rows of cost runs LABEL
cost_rows() {
	local label=$1 setup=$2 sn r
	shift 2
	[ -f "$DIR/cost-$label" ] || return 0
	for sn in "$@"; do
		printf '%-7s %-30s' "$setup" "${sn#*:}"
		for r in backend workers walsender apply other ""; do printf ' %9.3f' "$(ms "$label" "${sn%%:*}" $r)"; done
		echo
	done
	printf '%-7s %-30s %59.3f\n' "$setup" "pgbench (load generator)" "$(ms "$label" pgbench)"
}

{
	echo "cluster benchmark: ledger_transfer enqueue, $CLIENTS clients, $MODE mode; $CORES cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), all servers on this machine"
	echo
	echo "1. throughput, ${DURATION} s runs, median of $REPS; cores used: CPU of the servers and pgbench over the runs / their duration; machine busy: by everything on it"
	printf '%-52s %12s %7s %11s %13s\n' "setup" "transfers/s" "ratio" "cores used" "machine busy"
	printf '%-52s %12s %7s %11s %13s\n' "a. a ledger on its own (baseline)" "$ALONE" "1.00" "$ALONE_CORES" "$ALONE_BUSY"
	printf '%-52s %12s %7s %11s %13s\n' "b. through the proxy, one node" "$ONE" "$(ratio "$ONE" "$ALONE")" "$ONE_CORES" "$ONE_BUSY"
	printf '%-52s %12s %7s %11s %13s\n' "c. through the proxy, two nodes ($CROSS cross-node)" "$TWO" "$(ratio "$TWO" "$ALONE")" "$TWO_CORES" "$TWO_BUSY"
	echo "ledger_verify_cluster() after c: $PROBLEMS problems${PROBLEMS3:+; after d: $PROBLEMS3}"
	echo
	echo "2. CPU ms per transfer, by server and process role (/proc: utime + stime; sessions that ended through the postmaster's cutime + cstime):"
	if [ "$MODE" = full ]; then
		echo "   windows from before a fixed load until every transfer is applied and every credit confirmed, one of $COST_TX transfers a client less one of 1,"
		echo "   $COST_CLIENTS clients, $REPS times: $(( (COST_TX - 1) * COST_CLIENTS * REPS)) transfers, the sessions' start left out"
	else
		echo "   windows from before a fixed load until every transfer is applied and every credit confirmed, $COST_TX transfers a client, $COST_CLIENTS clients,"
		echo "   the sessions' start included (--quick: not the figures to quote)"
	fi
	echo "   local: payer and payee on node 1; cross: payer on node 1, payee on node 2; a and 1 (= b): as their runs in 1."
	printf '%-7s %-30s %9s %9s %9s %9s %9s %9s\n' "setup" "server" "backend" "workers" "walsender" "apply" "other" "total"
	cost_rows alone a alone:"ledger alone"
	cost_rows local1 "1 local" proxy:proxy node1:"node 1 (alone behind the proxy)"
	cost_rows local2 "2 local" proxy:proxy node1:"node 1 (payer, payee)" node2:"node 2 (idle)"
	cost_rows cross2 "2 cross" proxy:proxy node1:"node 1 (payer)" node2:"node 2 (payee)"
	cost_rows local3 "3 local" proxy:proxy node1:"node 1 (payer, payee)" node2:"node 2 (idle)" node3:"node 3 (idle)"
	cost_rows cross3 "3 cross" proxy:proxy node1:"node 1 (payer)" node2:"node 2 (payee)" node3:"node 3 (looks on)"
	echo "   node 1 of two, all of c: $OUTBOX"
	if [ "$MODE" = full ]; then
		echo "   S, the start of a client's sessions (and the drain's waits), left out above, all servers and pgbench: a $(startup alone) ms, 1 local $(startup local1) ms, 2 local $(startup local2) ms, 2 cross $(startup cross2) ms"
		echo "   walsenders per transfer and subscriber, 1 subscriber (two nodes) / 2 (three nodes): local $(printf '%.3f / %.3f' "$LW" "$(awk -v w="$(ms local3 node1 walsender)" 'BEGIN { print w / 2 }')"), cross at the payer $(printf '%.3f / %.3f' "$PW" "$(awk -v w="$(ms cross3 node1 walsender)" 'BEGIN { print w / 2 }')"), at the payee $(printf '%.3f / %.3f' "$RW" "$(awk -v w="$(ms cross3 node2 walsender)" 'BEGIN { print w / 2 }')")"
	fi
	echo
	echo "3. model (CPU ms per transfer): Lb $LB, Lw $LW, Pb $PB, Pw $PW, Rb $RB, Rw $RW, D $D ($D_FROM), proxy Y $YL local / $YX cross"
	echo "   node(N, f) = (1-f) (Lb + (N-1) Lw) + f (Pb + (N-1) Pw + Rb + (N-1) Rw + (N-2) D); X = N C / node(N, f), C = $CORES cores a node,"
	echo "   CPU-bound; clients and proxies on machines of their own (proxy cores: what they need), or a proxy beside each node (X = N C / (node + Y))"
	printf '%6s %4s %14s %14s %12s %20s\n' "f" "N" "node ms/xfer" "transfers/s" "proxy cores" "proxy on the nodes"
	for f in $F_VALUES; do
		for n in $N_VALUES; do
			nm=$(node_ms "$n" "$f")
			x=$(rate "$((n * CORES))" "$nm")
			y=$(mix "$YL" "$YX" "$f")
			printf '%6s %4s %14.3f %14s %12.1f %20s\n' "$f" "$n" "$nm" "$x" \
				"$(awk -v x="$x" -v y="$y" 'BEGIN { print x * y / 1000 }')" \
				"$(rate "$((n * CORES))" "$(awk -v a="$nm" -v y="$y" 'BEGIN { print a + y }')")"
		done
	done
	echo
	echo "4. the model on this machine against the throughput measured in 1.: steady, $CORES cores / model CPU ms a transfer (pgbench's cost included);"
	echo "   predicted, for the CPU the runs got (shared machine): (CPU ms of the runs - sessions' start, $CLIENTS x S a run) / model ms transfers"
	echo "   runs' ms: the CPU ms a transfer the runs of 1. used, their sessions' start included"
	printf '%-40s %9s %7s %9s %10s %9s %10s %9s %9s\n' "setup" "model ms" "S ms" "runs' ms" "cores used" "steady" "predicted" "measured" "meas/pred"
	check_row "a. a ledger on its own (a's cost runs)" "$COST_A" "$START_A" "$ALONE_MS" "$ALONE_CORES" "$ALONE" "$ALONE_CPU" "$ALONE_N"
	check_row "b. proxy, one node (b's cost runs)" "$COST_B" "$START_B" "$ONE_MS" "$ONE_CORES" "$ONE" "$ONE_CPU" "$ONE_N"
	check_row "c. proxy, two nodes (model N=2, f=$CROSS)" "$COST_C" "$START_C" "$TWO_MS" "$TWO_CORES" "$TWO" "$TWO_CPU" "$TWO_N"
} | tee "$OUT"

# the projection for the plot: nodes, then transfers/s for each f
if [ "$MODE" = full ]; then
	for n in $N_VALUES; do
		printf '%s' "$n"
		for f in $F_VALUES; do printf '\t%s' "$(rate "$((n * CORES))" "$(node_ms "$n" "$f")")"; done
		echo
	done >"$RESULTS/cluster-scaling.dat"
	gnuplot -e "datafile='$RESULTS/cluster-scaling.dat'; outfile='$RESULTS/cluster-scaling.png'; fvalues='$F_VALUES'; subtitle='$CORES cores a node, costs measured $(date +%F)'" \
		"$TOP/bench/cluster-scaling.gp"
fi

[ "$PROBLEMS" = 0 ] && [ "${PROBLEMS3:-0}" = 0 ]
