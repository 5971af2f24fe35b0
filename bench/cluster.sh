#!/usr/bin/env bash
# The cost of the proxy, and one node against two behind it, on this
# machine: pgbench enqueueing ledger_transfer from 32 clients
#   a. straight to a ledger on its own (the baseline),
#   b. through the proxy to one node owning every bucket,
#   c. through the proxy to two nodes (half the transfers cross nodes).
# Each figure is the median of REPS runs; after each run the backlog is
# applied and, in c, every credit confirmed before the next.  On one machine
# the nodes share its cores, so c measures the machinery, not scaling.
# Run as root on Debian 12, with the extension installed
# (scripts/test.sh or make install).  Writes bench/results/cluster.txt.
#
#   bench/cluster.sh [--quick]
source "$(dirname "$0")/../scripts/common.sh"

REPS=3
DURATION=10
[ "${1:-}" = --quick ] && { REPS=1; DURATION=3; }
CLIENTS=32
ACCOUNTS=1000
DIR=${LEDGER_CLUSTER_DIR:-/tmp/ledger-cluster}
BASE_PORT=${LEDGER_CLUSTER_PORT:-55670}
OUT=$TOP/bench/results/cluster.txt

need_packages postgresql-15-plproxy
progress() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }

psql_at() { as_pg psql -h "$DIR/$1" -p "$2" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "${@:3}"; }

SERVERS=()
cleanup() {
	for s in "${SERVERS[@]}"; do stop_server "$DIR/$s"; done
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
}

proxy() {
	server proxy "$BASE_PORT"
	psql_at proxy "$BASE_PORT" -c "CREATE EXTENSION ledger_proxy CASCADE" \
		-c "INSERT INTO ledger_proxy.nodes $MAP_NODES" \
		-c "INSERT INTO ledger_proxy.buckets $MAP_BUCKETS" >/dev/null
}

# fund HOST PORT: open and fund the accounts through HOST
fund() {
	psql_at "$1" "$2" -c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $ACCOUNTS) a" \
		-c "SELECT count(ledger_deposit(a, 1000000000)) FROM generate_series(1, $ACCOUNTS) a" >/dev/null
}

# quiet NAME:PORT...: wait until the nodes' queues are empty and every
# credit they sent is confirmed
quiet() {
	local np left
	for _ in $(seq 1 600); do
		left=0
		for np in "$@"; do
			left=$((left + $(psql_at "${np%%:*}" "${np##*:}" -c "
				SELECT (SELECT count(*) FROM ledger.queue)
					   + CASE WHEN ledger.node_id() = 0 THEN 0 ELSE
						 (SELECT count(*) FROM ledger.transit t
						   WHERE t.source_node = ledger.node_id()
							 AND NOT EXISTS (SELECT FROM ledger.transit_acks a
											  WHERE a.source_node = t.source_node
												AND a.id = t.id)) END")))
		done
		[ "$left" = 0 ] && return 0
		sleep 0.1
	done
	progress "the nodes did not drain"
	return 1
}

SCRIPT=$DIR/transfer.sql
# run_pgbench NAME PORT: prints tps
run_pgbench() {
	as_pg pgbench -h "$DIR/$1" -p "$2" -U postgres -n -M prepared -c "$CLIENTS" -j 2 \
		-T "$DURATION" -D accounts="$ACCOUNTS" -f "$SCRIPT" postgres >"$DIR/pgbench.out" 2>&1 ||
		{ tail -5 "$DIR/pgbench.out" >&2; return 1; }
	awk '/^tps = / { printf "%.0f\n", $3 }' "$DIR/pgbench.out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# measure LABEL NAME PORT NODES...: REPS runs, median
measure() {
	local label=$1 name=$2 port=$3 r tps all=()
	shift 3
	for r in $(seq 1 "$REPS"); do
		tps=$(run_pgbench "$name" "$port")
		quiet "$@"
		progress "$label, run $r/$REPS: $tps transfers/s"
		all+=("$tps")
	done
	printf '%s\n' "${all[@]}" | median
}

rm -rf "$DIR"
mkdir -p "$DIR"
chown "$PGUSER_OS" "$DIR"
cat >"$SCRIPT" <<'EOS'
\set from random(1, :accounts)
\set to 1 + (:from + random(0, :accounts - 2)) % :accounts
\set amount random(1, 100)
SELECT ledger_transfer(:from, :to, :amount);
EOS
chown "$PGUSER_OS" "$SCRIPT"

P=$((BASE_PORT + 1))

progress "a. a ledger on its own"
server alone "$((BASE_PORT + 3))" "ledger.poll_interval = 100ms"
as_pg psql -h "$DIR/alone" -p "$((BASE_PORT + 3))" -U postgres -d postgres -X -q -c "CREATE EXTENSION ledger"
fund alone "$((BASE_PORT + 3))"
ALONE=$(measure "a. alone" alone "$((BASE_PORT + 3))" "alone:$((BASE_PORT + 3))")
cleanup
SERVERS=()

progress "b. the proxy and one node"
MAP_NODES="VALUES (1, '$(conninfo node1 "$P")')"
MAP_BUCKETS="VALUES (0, 1), (1, 1)"
node node1 "$P" 1
proxy
fund proxy "$BASE_PORT"
ONE=$(measure "b. proxy + 1 node" proxy "$BASE_PORT" "node1:$P")
cleanup
SERVERS=()

progress "c. the proxy and two nodes"
MAP_NODES="VALUES (1, '$(conninfo node1 "$P")'), (2, '$(conninfo node2 "$((P + 1))")')"
MAP_BUCKETS="VALUES (0, 1), (1, 1), (2, 2), (3, 2)"
node node1 "$P" 1
node node2 "$((P + 1))" 2
psql_at node1 "$P" -c "CREATE SUBSCRIPTION ledger_from_2 CONNECTION '$(conninfo node2 "$((P + 1))")' PUBLICATION ledger_cluster" 2>/dev/null
psql_at node2 "$((P + 1))" -c "CREATE SUBSCRIPTION ledger_from_1 CONNECTION '$(conninfo node1 "$P")' PUBLICATION ledger_cluster" 2>/dev/null
proxy
# the directory must reach both nodes before payees of the other are known
fund proxy "$BASE_PORT"
for _ in $(seq 1 300); do
	[ "$(psql_at node1 "$P" -c "SELECT count(*) FROM ledger.directory")" = "$ACCOUNTS" ] &&
		[ "$(psql_at node2 "$((P + 1))" -c "SELECT count(*) FROM ledger.directory")" = "$ACCOUNTS" ] && break
	sleep 0.1
done
TWO=$(measure "c. proxy + 2 nodes" proxy "$BASE_PORT" "node1:$P" "node2:$((P + 1))")
PROBLEMS=$(psql_at proxy "$BASE_PORT" -c "SELECT count(*) FROM ledger_verify_cluster()")
cleanup
SERVERS=()

mkdir -p "$(dirname "$OUT")"
{
	echo "cluster benchmark: ledger_transfer enqueue, $CLIENTS clients, ${DURATION} s runs, median of $REPS; $(nproc) cores, all servers on this machine"
	printf '%-44s %12s %8s\n' "setup" "transfers/s" "ratio"
	printf '%-44s %12s %8s\n' "a. a ledger on its own (baseline)" "$ALONE" "1.00"
	printf '%-44s %12s %8.2f\n' "b. through the proxy, one node" "$ONE" "$(awk -v a="$ONE" -v b="$ALONE" 'BEGIN { print a / b }')"
	printf '%-44s %12s %8.2f\n' "c. through the proxy, two nodes" "$TWO" "$(awk -v a="$TWO" -v b="$ALONE" 'BEGIN { print a / b }')"
	echo "ledger_verify_cluster() after c: $PROBLEMS problems"
} | tee "$OUT"
[ "$PROBLEMS" = 0 ]
